"""Data-parallel training of a ResNet: create_train_state, train_step, eval_step, train_and_evaluate.

One mesh over every device with a single 'data' axis: the train state is replicated, batches are
sharded over 'data', and `jax.jit` partitions the step (BatchNorm statistics cover the global batch
without an axis name). The host dispatches at most `max_steps_ahead` steps ahead of the device and
reads values back every `log_every_steps`.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.preprocess import normalize, resize_images
from train import input_pipeline, optim, programs
from train.configuration import build_model, check_workdir, validate_config
from train.run_state import RunState

if TYPE_CHECKING:  # annotations only (strings); lets the GPU image without ml_collections import this
    import ml_collections


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the BatchNorm running statistics."""

    batch_stats: Any


def create_train_state(
    rng: jax.Array, model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...]
) -> TrainState:
    """Initialises the model's variables for images of `image_shape` (H, W, C) and the optimiser state."""
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats=variables.get("batch_stats", {})
    )


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy on float32 logits, with optional label smoothing."""
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    mean: jax.Array,
    std: jax.Array,
    pad: int = 4,
    flip: bool = True,
    label_smoothing: float = 0.0,
    image_size: int = 0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a batch of uint8 images: augment, normalise, forward, backward, update.

    Args:
      state: the train state (params, batch_stats, opt_state, step).
      batch: {'image': uint8 [B, H, W, C], 'label': int [B]}.
      rng: this step's key: augmentation, and dropout for models that have it.
      mean, std: normalisation, broadcastable to [H, W, C], in [0, 1] units.
      pad, flip: on-device augmentation (see input_pipeline.augment); 0 and False when the host
        pipeline augments.
      label_smoothing: applied to the training loss.
      image_size: >0: resize the augmented batch to this side (resnet_jax.preprocess.resize_images)
        before normalising; the pad/crop augmentation works at the stored size.

    Returns:
      (new state, {'loss': mean loss, 'accuracy': mean accuracy}) for this batch.
    """
    x = input_pipeline.augment(batch["image"], rng, pad, flip)
    x = normalize(resize_images(x, image_size) if image_size else x, mean, std)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.fold_in(rng, 1)},  # used only by models with dropout_rate > 0
        )
        loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return state, {"loss": loss, "accuracy": accuracy}


def eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    mean: jax.Array,
    std: jax.Array,
    hflip: bool = False,
    image_size: int | tuple[int, int] = 0,
) -> dict[str, jax.Array]:
    """Sums of loss, correct predictions and examples over the unmasked part of a batch.

    Args:
      batch: {'image': uint8 [B, H, W, C], 'label': int [B], 'mask': float [B] (0 on padding)}.
      hflip: also count 'correct_hflip': predictions from the mean of the softmax of each image and of
        its mirror image (test-time augmentation; 'correct' stays the single-view count).
      image_size: >0: resize the batch to this side first, as train_step does.
    """
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    images = resize_images(batch["image"], image_size) if image_size else batch["image"]
    logits = state.apply_fn(variables, normalize(images, mean, std), train=False)
    mirrored = None
    if hflip:  # mirror before normalising: a per-pixel mean image is not mirror-symmetric
        mirrored = state.apply_fn(variables, normalize(images[:, :, ::-1], mean, std), train=False)
    return eval_sums(logits, batch["label"], batch["mask"], mirrored)


def eval_sums(
    logits: jax.Array, labels: jax.Array, mask: jax.Array, mirrored: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Masked sums of loss, correct and count; with the mirror images' logits also 'correct_hflip'
    (the prediction from the sum of both views' softmax)."""
    sums = {
        "loss": jnp.sum(cross_entropy(logits, labels) * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
        "count": jnp.sum(mask),
    }
    if mirrored is not None:
        probs = jax.nn.softmax(logits) + jax.nn.softmax(mirrored)
        sums["correct_hflip"] = jnp.sum((jnp.argmax(probs, -1) == labels) * mask)
    return sums


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh with axis 'data' over `devices` (default: every device of every process)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def make_eval_fn(
    mesh: Mesh, mean: jax.Array, std: jax.Array, *, hflip: bool = False, image_size: int | tuple = 0
):
    """programs.make_eval_fn over this module's eval_step: eval_fn(state, stack) -> sums."""
    keys = programs.SUM_KEYS + (("correct_hflip",) if hflip else ())
    step = functools.partial(eval_step, mean=mean, std=std, hflip=hflip, image_size=image_size)
    return programs.make_eval_fn(step, mesh, keys=keys)


def _programs(config, model, run, mesh, mean, std, aug_key, *, fine_tune: bool):
    """The compiled train and eval programs: over cached features where a fine-tune's frozen backbone
    allows it (`features.should_cache`, which says in one line why not), else over images."""
    pipeline = run.pipeline
    if fine_tune:
        from train import features

        cached, notice = features.should_cache(config, pipeline, features.pooled_width(run.state.params))
        if notice:
            run.say(notice)
        if cached:  # the frozen backbone runs once here; the steps apply only the head
            return _cached_programs(config, model, run, mesh, mean, std, aug_key)
    step_fn = functools.partial(
        train_step,
        mean=mean,
        std=std,
        # A streaming pipeline augments on the host: the step must not crop or flip again.
        pad=config.pad if pipeline.device_augment else 0,
        flip=config.flip and pipeline.device_augment,
        label_smoothing=config.label_smoothing,
        image_size=pipeline.resize_to,
    )
    run_train = programs.make_train_fn(step_fn, mesh, pipeline.device_batch, aug_key)
    return run_train, make_eval_fn(mesh, mean, std, hflip=config.eval_hflip, image_size=pipeline.resize_to)


def _cached_programs(config, model, run, mesh, mean, std, aug_key):
    """The train and eval programs over cached features; `run.pipeline` becomes the FeaturePipeline."""
    from train import features

    pipeline = run.pipeline
    progress = config.progress_bar and run.is_main
    flip = config.flip and pipeline.device_augment  # a streaming pipeline never flips on the device
    if pipeline.device_augment:
        run.pipeline = features.FeaturePipeline.build(
            pipeline, model, run.state, mean=mean, std=std, mesh=mesh, batch_size=config.eval_batch_size,
            flip=flip, eval_hflip=config.eval_hflip, progress=progress,
        )  # fmt: skip
    else:
        from train.streaming_features import StreamingFeaturePipeline

        run.pipeline = StreamingFeaturePipeline.build(
            pipeline, model, run.state, mean=mean, std=std, eval_hflip=config.eval_hflip, progress=progress
        )
    head = model.head_module()
    step_fn = functools.partial(
        features.head_train_step, head=head, flip=flip, label_smoothing=config.label_smoothing
    )
    run_train = programs.make_train_fn(step_fn, mesh, run.pipeline.device_batch, aug_key)
    return run_train, features.make_eval_fn(mesh, head, hflip=config.eval_hflip)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates as `config` says, writing everything to `workdir`; resumes if it holds a run.

    Every check (config, workdir, data, the init checkpoint, compatibility with the workdir's own
    checkpoints) runs before anything is written.

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
    init = None
    if config.init_checkpoint:
        from train import finetune

        config, init = finetune.resolve_config(config)
    mesh = make_mesh()
    validate_config(config, mesh.size)
    init_key, data_key, aug_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    pipeline = input_pipeline.create(config, mesh, data_key)
    try:  # closes grain's workers and threads however the run ends
        if not config.num_classes:  # 0: the data's own class count, which config.json then records
            config = copy.deepcopy(config)
            config.num_classes = pipeline.num_classes
        mean, std = (jnp.asarray(pipeline.preprocess[k], jnp.float32) for k in ("mean", "std"))
        num_steps = config.num_train_steps
        if num_steps <= 0:
            num_steps = math.ceil(config.num_epochs * pipeline.steps_per_epoch)
        model = build_model(config)
        tx = optim.create_optimizer(config, num_steps)
        if init is not None:
            tx = finetune.create_optimizer(config, tx)
        state = jax.jit(
            functools.partial(create_train_state, model=model, tx=tx, image_shape=pipeline.image_shape),
            out_shardings=NamedSharding(mesh, P()),
            compiler_options=programs.init_compiler_options(),
        )(init_key)
        run = RunState.open(config, workdir, model, pipeline, state, num_steps)  # resumes; writes nothing
        if run.step == 0 and init is not None:
            run.state = finetune.initialize(config, run.state, init)
        fine_tune = init is not None
        run_train, eval_fn = _programs(config, model, run, mesh, mean, std, aug_key, fine_tune=fine_tune)
        run.start()  # every check passed: config.json, metrics and checkpoints may be written from here
        result = run.loop(
            run_train, lambda state: programs.evaluate(eval_fn, state, run.pipeline.eval_inputs())
        )
    finally:
        pipeline.close()
    return {**result, "wall_time_s": time.perf_counter() - start_time}
