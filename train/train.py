"""Data-parallel training of a ResNet: create_train_state, train_step, eval_step, train_and_evaluate.

One mesh over every device with a single 'data' axis: the train state is replicated, batches are
sharded over 'data', and `jax.jit` partitions the step (BatchNorm statistics cover the global batch
without an axis name). The host only dispatches steps; it reads values back every `log_every_steps`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import resnet_jax
from train import checkpointing, input_pipeline, optim
from train import metrics as metrics_lib

if TYPE_CHECKING:  # annotations only (strings); lets the GPU image without ml_collections import this
    import ml_collections

NORMALIZATIONS = ("mean_std", "per_pixel")


class ConfigError(ValueError):
    """The config has unknown or invalid values; the message lists every problem."""


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the BatchNorm running statistics."""

    batch_stats: Any


# ---------------------------------------------------------------------------------------------------
# Config and model


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """create_model overrides as JSON (dtypes as strings), including num_classes: the checkpoint meta."""
    kwargs = dict(config.model_kwargs.to_dict())
    kwargs["num_classes"] = config.num_classes
    if config.half_precision:
        kwargs["dtype"] = "bfloat16"
    return kwargs


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The ResNet named by `config.model` with `config.model_kwargs`, num_classes and dtype applied."""
    kwargs = model_kwargs(config)
    for k in ("dtype", "param_dtype"):
        if k in kwargs:
            kwargs[k] = jnp.dtype(kwargs[k])
    return resnet_jax.create_model(config.model, **kwargs)


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Checks every field once, before any work.

    Args:
      config: the training config.
      num_devices: global device count; batch sizes must be multiples of it.

    Raises:
      ConfigError: listing every invalid field with what it must be.
    """
    errors = []

    def check(ok: bool, msg: str) -> None:
        if not ok:
            errors.append(msg)

    def one_of(field: str, choices: tuple[str, ...]) -> None:
        check(config[field] in choices, f"{field}={config[field]!r} must be one of {', '.join(choices)}")

    if config.model not in resnet_jax.available_models():
        errors.append(f"model={config.model!r} must be one of {', '.join(resnet_jax.available_models())}")
    else:
        try:
            create_model(config)
        except (ValueError, TypeError) as e:
            errors.append(f"model_kwargs: {e}")
    one_of("schedule", optim.SCHEDULES)
    one_of("warmup", optim.WARMUPS)
    one_of("weight_decay_on", optim.WEIGHT_DECAY_ON)
    one_of("normalization", NORMALIZATIONS)
    for field in ("batch_size", "eval_batch_size"):
        n = config[field]
        check(
            n > 0 and n % num_devices == 0,
            f"{field}={n} must be a positive multiple of the {num_devices} devices",
        )
    check(
        config.num_train_steps > 0 or config.num_epochs > 0,
        f"set num_train_steps>0 or num_epochs>0 (got {config.num_train_steps}, {config.num_epochs})",
    )
    check(config.num_classes > 1, f"num_classes={config.num_classes} must be > 1")
    check(config.learning_rate > 0, f"learning_rate={config.learning_rate} must be > 0")
    check(0 <= config.momentum < 1, f"momentum={config.momentum} must be in [0, 1)")
    check(config.weight_decay >= 0, f"weight_decay={config.weight_decay} must be >= 0")
    check(0 <= config.label_smoothing < 1, f"label_smoothing={config.label_smoothing} must be in [0, 1)")
    check(config.pad >= 0, f"pad={config.pad} must be >= 0")
    check(config.warmup_steps >= 0, f"warmup_steps={config.warmup_steps} must be >= 0")
    check(
        0 < config.onecycle_pct_start < 1, f"onecycle_pct_start={config.onecycle_pct_start} must be in (0, 1)"
    )
    check(
        list(config.lr_boundaries) == sorted(config.lr_boundaries)
        and all(b > 0 for b in config.lr_boundaries),
        f"lr_boundaries={config.lr_boundaries} must be increasing positive steps",
    )
    check(
        config.schedule != "piecewise" or all(b > config.warmup_steps for b in config.lr_boundaries),
        f"lr_boundaries={config.lr_boundaries} must lie after warmup_steps={config.warmup_steps}",
    )
    check(len(config.mean) == 3 and len(config.std) == 3, "mean and std must have 3 values (RGB)")
    check(all(s > 0 for s in config.std), f"std={config.std} must be > 0")
    check(config.log_every_steps > 0, f"log_every_steps={config.log_every_steps} must be > 0")
    check(
        config.checkpoint_every_steps > 0,
        f"checkpoint_every_steps={config.checkpoint_every_steps} must be > 0",
    )
    check(
        config.eval_every_steps == -1 or config.eval_every_steps > 0,
        f"eval_every_steps={config.eval_every_steps} must be > 0 or -1",
    )
    check(config.keep_checkpoints >= 1, f"keep_checkpoints={config.keep_checkpoints} must be >= 1")
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


# ---------------------------------------------------------------------------------------------------
# State and steps


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
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a batch of uint8 images: augment, normalise, forward, backward, update.

    Args:
      state: the train state (params, batch_stats, opt_state, step).
      batch: {'image': uint8 [B, H, W, C], 'label': int [B]}.
      rng: this step's augmentation key.
      mean, std: normalisation, broadcastable to [H, W, C], in [0, 1] units.
      pad, flip: augmentation (see input_pipeline.augment).
      label_smoothing: applied to the training loss.

    Returns:
      (new state, {'loss': mean loss, 'accuracy': mean accuracy}) for this batch.
    """
    images = input_pipeline.augment(batch["image"], rng, pad, flip)
    x = input_pipeline.normalize(images, mean, std)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
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
) -> dict[str, jax.Array]:
    """Sums of loss, correct predictions and examples over the unmasked part of a batch.

    Args:
      batch: {'image': uint8 [B, H, W, C], 'label': int [B], 'mask': float [B] (0 on padding)}.
      hflip: also count 'correct_hflip': predictions from the mean of the softmax of each image and of
        its mirror image (test-time augmentation; 'correct' stays the single-view count).
    """
    x = input_pipeline.normalize(batch["image"], mean, std)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = state.apply_fn(variables, x, train=False)
    mask = batch["mask"]
    sums = {
        "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
        "count": jnp.sum(mask),
    }
    if hflip:
        # Mirror before normalising: a per-pixel mean image is not mirror-symmetric.
        x_mirror = input_pipeline.normalize(batch["image"][:, :, ::-1, :], mean, std)
        mirrored = state.apply_fn(variables, x_mirror, train=False)
        probs = jax.nn.softmax(logits) + jax.nn.softmax(mirrored)
        sums["correct_hflip"] = jnp.sum((jnp.argmax(probs, -1) == batch["label"]) * mask)
    return sums


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh with axis 'data' over `devices` (default: every device of every process)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def jit_train_step(step_fn: Callable, mesh: Mesh) -> Callable:
    """`step_fn(state, batch, rng)` compiled for `mesh`: state replicated and donated, batch on 'data'."""
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        step_fn,
        in_shardings=(replicated, NamedSharding(mesh, P("data")), replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def make_eval_fn(
    mesh: Mesh, mean: jax.Array, std: jax.Array, *, hflip: bool = False
) -> Callable[..., dict[str, jax.Array]]:
    """A jitted `eval_fn(state, data)` summing `eval_step` over every batch of a padded eval split.

    Args:
      mesh: the device mesh; each batch is sharded over its 'data' axis.
      mean, std: the normalisation `eval_step` applies.
      hflip: also sum 'correct_hflip' (see eval_step).

    Returns:
      eval_fn(state, data: input_pipeline.InMemorySplit from put_eval) -> {'loss', 'correct', 'count'}
      (and 'correct_hflip') sums, replicated (readable on every process).
    """
    sharded = NamedSharding(mesh, P("data"))

    @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
    def sums(state, images, labels, mask):
        def body(k, totals):
            batch = {"image": images[k], "label": labels[k], "mask": mask[k]}
            batch = jax.lax.with_sharding_constraint(batch, sharded)
            return jax.tree.map(jnp.add, totals, eval_step(state, batch, mean=mean, std=std, hflip=hflip))

        keys = ("loss", "correct", "count") + (("correct_hflip",) if hflip else ())
        zeros = {k: jnp.float32(0) for k in keys}
        return jax.lax.fori_loop(0, images.shape[0], body, zeros)

    return lambda state, data: sums(state, data.images, data.labels, data.mask)


def eval_summary(sums: dict[str, jax.Array]) -> dict[str, Any]:
    """{'loss', 'accuracy', 'examples'} (and 'accuracy_hflip') as Python numbers from make_eval_fn's sums.

    A host sync.
    """
    totals = jax.device_get(sums)
    n = float(totals["count"])
    summary = {
        "loss": float(totals["loss"]) / n,
        "accuracy": float(totals["correct"]) / n,
        "examples": int(n),
    }
    if "correct_hflip" in totals:
        summary["accuracy_hflip"] = float(totals["correct_hflip"]) / n
    return summary


def _zero_sums() -> dict[str, jax.Array]:
    return {"loss": jnp.float32(0), "accuracy": jnp.float32(0), "steps": jnp.float32(0)}


def make_loop_fns(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    train_data: input_pipeline.InMemorySplit,
    eval_data: input_pipeline.InMemorySplit,
    keys: tuple[jax.Array, jax.Array],
    mean: jax.Array,
    std: jax.Array,
) -> tuple[Callable, Callable]:
    """The two compiled programs of the loop: one training step with its batch, and a whole evaluation.

    Args:
      config: uses batch_size, pad, flip, label_smoothing, eval_hflip.
      mesh: the device mesh.
      train_data, eval_data: splits from input_pipeline.put_train / put_eval.
      keys: (data-order key, augmentation key).
      mean, std: the normalisation.

    Returns:
      run_train(state, sums) -> (state, sums) (one step; both donated) and
      run_eval(state) -> eval_summary's dict.
    """
    replicated = NamedSharding(mesh, P())
    sharded = NamedSharding(mesh, P("data"))
    data_key, aug_key = keys
    step_fn = functools.partial(
        train_step,
        mean=mean,
        std=std,
        pad=config.pad,
        flip=config.flip,
        label_smoothing=config.label_smoothing,
    )

    def train_fn(state, sums, images, labels):
        data = input_pipeline.InMemorySplit(images, labels, None, train_data.num_examples)
        batch = input_pipeline.train_batch(data, data_key, state.step, config.batch_size)
        batch = jax.lax.with_sharding_constraint(batch, sharded)
        state, m = step_fn(state, batch, jax.random.fold_in(aug_key, state.step))
        sums = {
            "loss": sums["loss"] + m["loss"],
            "accuracy": sums["accuracy"] + m["accuracy"],
            "steps": sums["steps"] + 1,
        }
        return state, sums

    train_jit = jax.jit(train_fn, out_shardings=(replicated, replicated), donate_argnums=(0, 1))
    eval_fn = make_eval_fn(mesh, mean, std, hflip=config.eval_hflip)

    def run_train(state, sums):
        return train_jit(state, sums, train_data.images, train_data.labels)

    def run_eval(state):
        return eval_summary(eval_fn(state, eval_data))

    return run_train, run_eval


# ---------------------------------------------------------------------------------------------------
# The program


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks at each step boundary."""

    def __init__(self):
        self.signal: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Outside the main thread signals cannot be caught; leave them alone there.
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _checkpoint_state(state: TrainState, sums: dict) -> dict[str, Any]:
    return {
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "step": state.step,
        "train_sums": sums,
    }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates as `config` says, writing everything to `workdir`; resumes if it holds a run.

    Args:
      config: a config from configs/ (see configs/default.py for every field).
      workdir: run directory: checkpoints/, config.json, metrics.jsonl, tensorboard/, curves.png.

    Returns:
      {'step', 'test_accuracy', 'test_loss', 'wall_time_s', 'stopped_by'} (stopped_by is None when the
      run finished, else the signal name or 'stop_after_steps'; then test_* are None), plus
      'test_accuracy_hflip' when config.eval_hflip.
    """
    start_time = time.perf_counter()
    workdir = os.path.abspath(workdir)
    fine_tuning = "init_checkpoint" in config  # a configs/finetune_*.py config
    if fine_tuning:
        from train import finetune  # it imports this module

        config = finetune.resolve_config(config)
    mesh = make_mesh()
    validate_config(config, mesh.size)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))

    builder = input_pipeline.get_builder(config.dataset, config.data_dir)
    train_images, train_labels = input_pipeline.load_split(builder, config.train_split)
    eval_images, eval_labels = input_pipeline.load_split(builder, config.eval_split)
    if len(train_labels) < config.batch_size:
        raise ConfigError(f"batch_size={config.batch_size} exceeds the {len(train_labels)} training examples")
    preprocess = input_pipeline.preprocess_spec(config.normalization, config.mean, config.std, train_images)
    mean, std = (jnp.asarray(preprocess[k], jnp.float32) for k in ("mean", "std"))
    train_data = input_pipeline.put_train(train_images, train_labels, mesh)
    eval_data = input_pipeline.put_eval(eval_images, eval_labels, config.eval_batch_size, mesh)

    steps_per_epoch = len(train_labels) // config.batch_size
    num_steps = config.num_train_steps
    if num_steps <= 0:
        num_steps = math.ceil(config.num_epochs * steps_per_epoch)
    model = create_model(config)
    tx = optim.create_optimizer(config, num_steps)
    if fine_tuning:
        model, tx = finetune.adapt(config, model, tx)
    schedule = optim.learning_rate_schedule(config, num_steps)
    init_key, data_key, aug_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    replicated = NamedSharding(mesh, P())
    state = jax.jit(
        functools.partial(create_train_state, model=model, tx=tx, image_shape=train_images.shape[1:]),
        out_shardings=replicated,
    )(init_key)
    sums = jax.device_put(_zero_sums(), replicated)
    meta = {
        "model": config.model,
        "model_kwargs": model_kwargs(config),
        "preprocess": preprocess,
        "origin": "resnet-jax",
        "dataset": config.dataset,
        "image_shape": list(train_images.shape[1:]),
    }

    manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
    step = 0
    latest = manager.latest_step()
    if latest is None and fine_tuning:
        state = finetune.restore_backbone(config, state)
    if latest is not None:
        restored, _ = checkpointing.restore(manager, latest, _checkpoint_state(state, sums))
        sums = restored.pop("train_sums")
        state = state.replace(**restored)
        step = latest
        if is_main:
            print(f"resuming from {manager.directory}/{latest} (step {latest} of {num_steps})", flush=True)

    def save(at_step, eval_metrics=None):
        checkpointing.save(
            manager, at_step, _checkpoint_state(state, sums), {**meta, "step": at_step}, eval_metrics
        )

    writer = metrics_lib.MetricsWriter(workdir, step, enabled=is_main)
    run_train, run_eval = make_loop_fns(config, mesh, train_data, eval_data, (data_key, aug_key), mean, std)
    if is_main:
        print(
            f"{config.model} on {config.dataset}: {num_steps} steps of {config.batch_size} "
            f"({num_steps / steps_per_epoch:.2f} epochs) on {mesh.size} "
            f"{mesh.devices.flat[0].platform} device(s)",
            flush=True,
        )
    from tqdm import tqdm

    bar = tqdm(total=num_steps, initial=step, disable=not (config.progress_bar and is_main), unit="step")
    stopped_by = None
    eval_metrics = None
    window_start, window_step = time.perf_counter(), step
    with _StopRequest() as stop:
        while step < num_steps:
            state, sums = run_train(state, sums)
            step += 1
            bar.update(1)
            if step % config.log_every_steps == 0 or step == num_steps:
                host = jax.device_get(sums)  # the loop's only sync between evaluations
                elapsed = time.perf_counter() - window_start
                record = {
                    "loss": float(host["loss"] / host["steps"]),
                    "accuracy": float(host["accuracy"] / host["steps"]),
                    "lr": optim.lr_at(schedule, step - 1),
                    "epoch": step / steps_per_epoch,
                    "img_per_sec": (step - window_step) * config.batch_size / elapsed,
                }
                writer.write(step, "train", record)
                bar.set_postfix(
                    loss=f"{record['loss']:.3f}",
                    acc=f"{record['accuracy']:.3f}",
                    lr=f"{record['lr']:.4f}",
                    img_s=f"{record['img_per_sec']:.0f}",
                )
                sums = jax.device_put(_zero_sums(), replicated)
                window_start, window_step = time.perf_counter(), step
            eval_metrics = None
            if step == num_steps or (config.eval_every_steps > 0 and step % config.eval_every_steps == 0):
                # Wait for the queued training steps first: their time must not count as evaluation.
                jax.block_until_ready(state)
                eval_start = time.perf_counter()
                eval_metrics = run_eval(state)
                writer.write(step, "test", eval_metrics)
                if is_main:
                    bar.write(f"step {step}: {_describe(eval_metrics)}")
                window_start += time.perf_counter() - eval_start  # img/s counts training time only
            stop_now = stop.signal is not None or step == config.stop_after_steps
            if (
                eval_metrics is not None
                or step % config.checkpoint_every_steps == 0
                or stop_now
                or step == num_steps
            ):
                save(step, {"accuracy": eval_metrics["accuracy"]} if eval_metrics else None)
            if stop_now:
                stopped_by = stop.signal or "stop_after_steps"
                break
    bar.close()
    manager.wait_until_finished()
    manager.close()

    writer.close()
    wall = time.perf_counter() - start_time
    result = {
        "step": step,
        "stopped_by": stopped_by,
        "wall_time_s": wall,
        "test_accuracy": None,
        "test_loss": None,
    }
    if stopped_by is not None:
        if is_main:
            print(
                f"stopped by {stopped_by} at step {step}; checkpoint saved. Rerun the same command to resume."
            )
        return result
    # The loop evaluates at the last step. A finished run rerun on its workdir trains no step and
    # evaluates again rather than reading metrics.jsonl: only process 0 has that file, and every
    # process must take part in the (collective) evaluation.
    test = eval_metrics if eval_metrics is not None else run_eval(state)
    result.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
    if "accuracy_hflip" in test:
        result["test_accuracy_hflip"] = test["accuracy_hflip"]
    if is_main:
        metrics_lib.plot_curves(writer.path, os.path.join(workdir, "curves.png"))
        print(f"final: {_describe(test)} at step {step}, wall time {wall:.1f} s", flush=True)
    return result


def _describe(test: dict[str, Any]) -> str:
    text = f"test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f})"
    if "accuracy_hflip" in test:
        text += f", with flip test-time augmentation {test['accuracy_hflip']:.4f}"
    return text
