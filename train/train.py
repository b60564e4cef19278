"""`train_and_evaluate(config, workdir)`: one training run, from the config to the final evaluation.

Orchestration only. The steps and the state are train/steps.py's, their compiled programs
train/programs.py's, the data train/data/'s, the feature caches train/cache/'s, fine-tuning
train/finetune.py's with its policy in train/policy.py, and the loop with its checkpoints
train/run_state.py's.

One mesh over every device with a single 'data' axis: the train state is replicated, batches are
sharded over 'data', and `jax.jit` partitions the step (BatchNorm statistics cover the global batch
without an axis name).
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from train import finetune, optim, programs, steps
from train.cache.memory import FeaturePipeline
from train.cache.streaming import StreamingFeaturePipeline
from train.configuration import build_model, check_workdir, validate_config
from train.data import create as data_create
from train.data.memory import InMemoryPipeline
from train.run_state import RunState

if TYPE_CHECKING:  # annotations only (strings); lets the GPU image without ml_collections import this
    import ml_collections

    from train.policy import FineTune


def build_programs(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    run: RunState,
    mesh: Mesh,
    aug_key: jax.Array,
    policy: FineTune | None,
) -> tuple[Callable, Callable]:
    """The compiled train and eval programs: over cached features where the fine-tune policy allows it
    (then `run.pipeline` becomes the feature pipeline), else over images.

    Args:
      config: the resolved config.
      model: the run's model.
      run: the run (its pipeline and state).
      mesh: the device mesh.
      aug_key: the augmentation key (step s draws from fold_in(aug_key, s)).
      policy: the fine-tune policy, None for a run from scratch.
    """
    pipeline = run.pipeline
    mean, std = (jnp.asarray(pipeline.preprocess[k], jnp.float32) for k in ("mean", "std"))
    cached = False
    if policy is not None:
        cached, notice = policy.cache(config, pipeline, run.state.params)
        if notice:
            run.say(notice)
    # A streaming pipeline augments on the host: the step must not crop or flip again.
    flip = config.flip and pipeline.device_augment
    if not cached:
        step_fn = functools.partial(
            steps.train_step,
            mean=mean,
            std=std,
            pad=config.pad if pipeline.device_augment else 0,
            flip=flip,
            label_smoothing=config.label_smoothing,
            image_size=pipeline.resize_to,
        )
        run_train = programs.make_train_fn(step_fn, mesh, pipeline.device_batch, aug_key)
        eval_fn = programs.image_eval(mesh, mean, std, hflip=config.eval_hflip, image_size=pipeline.resize_to)
        return run_train, eval_fn
    # The frozen backbone runs once here; the steps apply only the head.
    run.head_steps = True
    features = dict(
        mean=mean, std=std, eval_hflip=config.eval_hflip, progress=config.progress_bar and run.is_main
    )
    if isinstance(pipeline, InMemoryPipeline):
        run.pipeline = FeaturePipeline.build(
            pipeline, model, run.state, mesh=mesh, batch_size=config.eval_batch_size, flip=flip, **features
        )
    else:
        run.pipeline = StreamingFeaturePipeline.build(pipeline, model, run.state, **features)
    head = model.head_module()
    step_fn = functools.partial(
        steps.head_train_step, head=head, flip=flip, label_smoothing=config.label_smoothing
    )
    run_train = programs.make_train_fn(step_fn, mesh, run.pipeline.device_batch, aug_key)
    return run_train, programs.head_eval(mesh, head, hflip=config.eval_hflip)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates as `config` says, writing everything to `workdir`; resumes if it holds a run.

    Every check (config, workdir, data, the init checkpoint, compatibility with the workdir's own
    checkpoints) runs before anything is written. Initialisation order (as big_vision): the workdir's
    own checkpoint if it has one, else `config.init_checkpoint`, else a fresh model.

    Args:
      config: a config from configs/ (see configs/default.py for every field).
      workdir: run directory: checkpoints/, config.json, metrics.jsonl, tensorboard/, curves.png.

    Returns:
      {'step', 'test_accuracy', 'test_loss', 'wall_time_s', 'stopped_by'} (stopped_by is None when the
      run finished, else the signal name or 'stop_after_steps'; then test_* are None), plus
      'test_accuracy_hflip' when config.eval_hflip.

    Raises:
      ConfigError, DatasetUnavailableError, CheckpointError: bad input; the workdir is unchanged.
      TrainingDiverged: a non-finite loss or parameters; no non-finite state was saved.
    """
    start_time = time.perf_counter()
    workdir = check_workdir(workdir)
    init = policy = None
    if config.init_checkpoint:
        config, init, policy = finetune.resolve_config(config)
    mesh = steps.make_mesh()
    validate_config(config, mesh.size)
    init_key, data_key, aug_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    pipeline = data_create.create(config, mesh, data_key)
    try:  # closes grain's workers and threads however the run ends
        if not config.num_classes:  # 0: the data's own class count, which config.json then records
            config = copy.deepcopy(config)
            config.num_classes = pipeline.num_classes
        num_steps = config.num_train_steps
        if num_steps <= 0:
            num_steps = math.ceil(config.num_epochs * pipeline.steps_per_epoch)
        model = build_model(config)
        tx = optim.create_optimizer(config, num_steps)
        if policy is not None:
            tx = finetune.wrap_optimizer(config, policy, tx)
        state = jax.jit(
            functools.partial(steps.create_train_state, model=model, tx=tx, image_shape=pipeline.image_shape),
            out_shardings=NamedSharding(mesh, P()),
            compiler_options=programs.init_compiler_options(),
        )(init_key)
        run = RunState.open(config, workdir, model, pipeline, state, num_steps)  # resumes; writes nothing
        if run.step == 0 and init is not None:
            run.state = finetune.initialize(policy, run.state, init)
        run.announce()  # before feature extraction, which can take minutes
        run_train, eval_fn = build_programs(config, model, run, mesh, aug_key, policy)
        run.start()  # every check passed: config.json, metrics and checkpoints may be written from here
        result = run.loop(
            run_train, lambda state: programs.evaluate(eval_fn, state, run.pipeline.eval_inputs())
        )
    finally:
        pipeline.close()
    return {**result, "wall_time_s": time.perf_counter() - start_time}
