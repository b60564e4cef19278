"""The optimiser and learning-rate schedules, built from the config with optax."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import optax
from flax import traverse_util

if TYPE_CHECKING:  # annotations only (strings); lets the GPU image without ml_collections import this
    import ml_collections

SCHEDULES = ("piecewise", "cosine", "onecycle", "constant")
WARMUPS = ("linear", "constant")
WEIGHT_DECAY_ON = ("kernels", "all")


def _main_schedule(config: ml_collections.ConfigDict, num_steps: int, offset: int) -> optax.Schedule:
    """The schedule after `offset` warm-up steps (optax.join_schedules restarts its count at 0)."""
    lr = config.learning_rate
    if config.schedule == "piecewise":
        return optax.piecewise_constant_schedule(
            lr, {int(b) - offset: config.lr_decay_factor for b in config.lr_boundaries}
        )
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, max(num_steps - offset, 1))
    if config.schedule == "constant":
        return optax.constant_schedule(lr)
    raise ValueError(f"unknown schedule {config.schedule!r}; choose one of {', '.join(SCHEDULES)}")


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """The learning rate per step.

    Args:
      config: uses schedule, learning_rate, lr_boundaries, lr_decay_factor, warmup, warmup_steps,
        warmup_lr and the onecycle_* fields.
      num_steps: total training steps (cosine and one-cycle anneal over them).
    """
    if config.schedule == "onecycle":
        return optax.cosine_onecycle_schedule(
            transition_steps=num_steps,
            peak_value=config.learning_rate,
            pct_start=config.onecycle_pct_start,
            div_factor=config.onecycle_div_factor,
            final_div_factor=config.onecycle_final_div_factor,
        )
    w = config.warmup_steps
    main = _main_schedule(config, num_steps, w)
    if w <= 0:
        return main
    if config.warmup == "constant":
        warm = optax.constant_schedule(config.warmup_lr)
    else:
        warm = optax.linear_schedule(0.0, config.learning_rate, w)
    return optax.join_schedules([warm, main], [w])


def weight_decay_mask(params) -> dict:
    """True for conv and dense kernels (decayed), False for BN scales/biases and dense/conv biases."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: k[-1] == "kernel" for k in flat})


def create_optimizer(config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """SGD with momentum and (PyTorch-style, added to the gradient) weight decay.

    Args:
      config: momentum, nesterov, weight_decay, weight_decay_on ('kernels' or 'all') and the schedule.
      num_steps: total training steps.
    """
    mask = weight_decay_mask if config.weight_decay_on == "kernels" else None
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=mask),
        optax.sgd(
            learning_rate_schedule(config, num_steps), momentum=config.momentum, nesterov=config.nesterov
        ),
    )


def lr_at(schedule: optax.Schedule, step: int) -> float:
    """The learning rate at `step`, as a Python float (for logging)."""
    return float(jax.device_get(schedule(step)))
