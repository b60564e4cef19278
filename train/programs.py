"""The two compiled programs of the training loop: one training step with its batch, and an evaluation.

Both take the pipeline's inputs as arguments (never closures), so a streaming pipeline's fresh batch
and the in-memory pipeline's resident split go through the same code. The steps they run are
train/steps.py's: over images, or over cached features (the head_* steps).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from train import steps

SUM_KEYS = ("loss", "correct", "correct_top5", "count")


def init_compiler_options() -> dict[str, Any]:
    """XLA options for the one-off initialisation program (`jax.jit(..., compiler_options=...)`).

    On a CPU, XLA's optimising backend spends seconds on the initialisers' many threefry calls for a
    program that runs once: at optimisation level 0 ResNet-20's init compiles in 2.4 s instead of 10 s,
    ResNet-50's in 12 s instead of 23 s (BENCHMARKS.md, start-up). Other backends: no options.
    """
    return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}


def zero_sums() -> dict[str, jax.Array]:
    """The running sums of a logging window (kept on the device and in checkpoints, for exact resume).

    nonfinite counts steps whose loss or updated parameters were not finite; first_nonfinite is the
    first such step (2**31 - 1 while there is none); param_norm is the parameters' global norm after the
    window's last step (train/health.py).
    """
    return {
        "loss": jnp.float32(0),
        "accuracy": jnp.float32(0),
        "steps": jnp.float32(0),
        "nonfinite": jnp.int32(0),
        "first_nonfinite": jnp.int32(2**31 - 1),
        "param_norm": jnp.float32(0),
    }


def make_train_fn(
    step_fn: Callable, mesh: Mesh, device_batch: Callable, aug_key: jax.Array
) -> Callable[..., tuple[Any, dict[str, jax.Array], jax.Array]]:
    """`run(state, sums, inputs) -> (state, sums, step)`: one training step, jitted, state and sums donated.

    Args:
      step_fn: `step_fn(state, batch, rng) -> (state, {'loss', 'accuracy'})` (train_step with its
        options bound).
      mesh: the device mesh; the batch is sharded over 'data'.
      device_batch: `device_batch(inputs, step) -> batch`, the pipeline's selection inside the jit.
      aug_key: the augmentation key; step s uses fold_in(aug_key, s).

    The returned `step` is a fresh (not donated) scalar: waiting on it waits for that step alone.
    """
    replicated = NamedSharding(mesh, P())
    sharded = NamedSharding(mesh, P("data"))

    def run(state, sums, inputs):
        step = state.step
        batch = jax.lax.with_sharding_constraint(device_batch(inputs, step), sharded)
        state, m = step_fn(state, batch, jax.random.fold_in(aug_key, step))
        # One reduction over the new parameters: a divergence is seen at the next host read-back.
        param_norm = optax.tree.norm(state.params)
        finite = jnp.isfinite(m["loss"]) & jnp.isfinite(param_norm)
        sums = {
            "loss": sums["loss"] + m["loss"],
            "accuracy": sums["accuracy"] + m["accuracy"],
            "steps": sums["steps"] + 1,
            "nonfinite": sums["nonfinite"] + (~finite).astype(jnp.int32),
            "first_nonfinite": jnp.where(
                finite, sums["first_nonfinite"], jnp.minimum(sums["first_nonfinite"], step + 1)
            ),
            "param_norm": param_norm.astype(jnp.float32),
        }
        return state, sums, step + 1

    return jax.jit(run, out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 1))


def compile_eval(
    eval_step: Callable, mesh: Mesh, *, keys: tuple[str, ...] = SUM_KEYS
) -> Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]:
    """A jitted `eval_fn(state, stack)` summing `eval_step` over a stack of padded eval batches.

    Args:
      eval_step: `eval_step(state, batch) -> sums` with its options bound (see steps.eval_step).
      mesh: the device mesh; each batch is sharded over its 'data' axis.
      keys: the sums eval_step returns.

    Returns:
      eval_fn(state, {'image': [K, B, ...], 'label': [K, B], 'mask': [K, B]}) -> sums, replicated.
    """
    sharded = NamedSharding(mesh, P("data"))

    @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
    def eval_fn(state, stack):
        def body(k, totals):
            batch = jax.lax.with_sharding_constraint(jax.tree.map(lambda a: a[k], stack), sharded)
            return jax.tree.map(jnp.add, totals, eval_step(state, batch))

        zeros = {k: jnp.float32(0) for k in keys}
        return jax.lax.fori_loop(0, stack["label"].shape[0], body, zeros)

    return eval_fn


def image_eval(
    mesh: Mesh, mean: jax.Array, std: jax.Array, *, hflip: bool = False, image_size: int | tuple = 0
) -> Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]:
    """compile_eval over steps.eval_step (uint8 image stacks): eval_fn(state, stack) -> sums."""
    keys = SUM_KEYS + (("correct_hflip",) if hflip else ())
    step = functools.partial(steps.eval_step, mean=mean, std=std, hflip=hflip, image_size=image_size)
    return compile_eval(step, mesh, keys=keys)


def head_eval(
    mesh: Mesh, head: nn.Module, *, hflip: bool = False
) -> Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]:
    """compile_eval over steps.head_eval_step (cached-feature stacks): eval_fn(state, stack) -> sums."""
    keys = SUM_KEYS + (("correct_hflip",) if hflip else ())
    return compile_eval(functools.partial(steps.head_eval_step, head=head, hflip=hflip), mesh, keys=keys)


def evaluate(eval_fn: Callable, state: Any, stacks: Any) -> dict[str, Any]:
    """eval_summary of `eval_fn` summed over every stack the pipeline's eval_inputs() yields."""
    totals = None
    for stack in stacks:
        sums = eval_fn(state, stack)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return eval_summary(totals)


def eval_summary(sums: dict[str, jax.Array]) -> dict[str, Any]:
    """{'loss', 'accuracy', 'accuracy_top5', 'examples'} (and 'accuracy_hflip') as Python numbers from
    summed eval sums.

    A host sync.
    """
    totals = jax.device_get(sums)
    n = float(totals["count"])
    summary = {
        "loss": float(totals["loss"]) / n,
        "accuracy": float(totals["correct"]) / n,
        "accuracy_top5": float(totals["correct_top5"]) / n,
        "examples": int(n),
    }
    if "correct_hflip" in totals:
        summary["accuracy_hflip"] = float(totals["correct_hflip"]) / n
    return summary
