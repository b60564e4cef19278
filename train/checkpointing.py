"""Checkpoints of a training run: orbax CheckpointManager in WORKDIR/checkpoints, items `state` and `meta`.

`state` holds everything the run needs to continue bit for bit (params, batch_stats, opt_state, step
and the on-device sums of the current logging window); batches and augmentation are functions of
(seed, step), so nothing else is needed. `meta` says how to use the weights (the checkpoint contract).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "meta")


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored; the message names it and the way out."""


def make_manager(workdir: str, keep: int, is_async: bool = True) -> ocp.CheckpointManager:
    """A CheckpointManager on `workdir`/checkpoints keeping the latest `keep` and the best by test accuracy.

    Orbax writes each step to a temporary directory and renames it when complete, and only renamed
    steps count as checkpoints, so a save cut short by a kill is never taken as the latest.

    Args:
      workdir: the run directory (made absolute; orbax requires it).
      keep: how many of the most recent checkpoints to keep.
      is_async: write in a background thread (the step loop continues meanwhile).
    """
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [
            ocp.checkpoint_managers.LatestN(n=keep),
            # Only checkpoints saved with a test accuracy compete for "best"; n=1 keeps the best one.
            ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m["accuracy"], n=1, keep_checkpoints_without_metrics=False
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        enable_async_checkpointing=is_async,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(directory, item_names=ITEMS, options=options)


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: dict[str, Any],
    meta: dict[str, Any],
    eval_metrics: dict[str, float] | None = None,
) -> None:
    """Starts saving `state` (a pytree of arrays) and `meta` (JSON) as checkpoint `step`.

    Args:
      eval_metrics: the test metrics at this step ({'accuracy': ...}), used to keep the best one.
    """
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics=eval_metrics,
        force=True,
    )


def restore(manager: ocp.CheckpointManager, step: int, target: dict[str, Any]) -> tuple[dict, dict]:
    """Restores checkpoint `step` onto the structure, shapes and shardings of `target`.

    Returns:
      (state, meta).

    Raises:
      CheckpointError: the checkpoint is unreadable or does not match `target`; names its path, its
        step and the older checkpoints that remain.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
    except Exception as e:  # orbax raises many types (ValueError, FileNotFoundError, tensorstore errors)
        path = os.path.join(str(manager.directory), str(step))
        older = [s for s in manager.all_steps() if s < step]
        hint = (
            f"move or delete {path} to resume from step {max(older)} (older checkpoints: {older})"
            if older
            else "no older checkpoint exists; delete it to start over"
        )
        raise CheckpointError(
            f"checkpoint at {path} (step {step}) is corrupted or incompatible with this config: "
            f"{type(e).__name__}: {e}. {hint}."
        ) from e
    return restored["state"], restored["meta"]
