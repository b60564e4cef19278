"""A training run's checkpoints: WORKDIR/checkpoints/<step>, kept, verified and restored for resuming.

Retention keeps the latest `keep` checkpoints and the best one by test accuracy. Each checkpoint's
evaluation is saved with it (orbax's metrics item), so "best" survives any number of restarts. Every
save carries checksums of its arrays in its meta; a resume verifies them and skips (and moves aside)
a corrupt checkpoint rather than continuing from it silently.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

from resnet_jax.checkpoint.errors import CheckpointError
from resnet_jax.checkpoint.io import brief
from resnet_jax.checkpoint.trees import checksums, corrupted_keys

ITEMS = ("state", "meta")
QUARANTINE = "corrupt_checkpoints"


def _accuracy(metrics: dict[str, Any]) -> float:
    # Saves without an evaluation carry {} and rank below every evaluated one.
    value = metrics.get("accuracy")
    return -math.inf if value is None or not math.isfinite(value) else value


class RunCheckpoints:
    """The checkpoints of one training run.

    Args:
      workdir: the run directory; checkpoints go to `workdir`/checkpoints.
      keep: how many of the most recent checkpoints to keep (the best one is kept as well).
      is_async: write in a background thread while the step loop continues.
      log: where one-line notices go (a corrupt checkpoint skipped); default print.
    """

    def __init__(self, workdir: str, keep: int, *, is_async: bool = True, log: Callable[[str], None] = print):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self._log = log
        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [
                ocp.checkpoint_managers.LatestN(n=keep),
                ocp.checkpoint_managers.BestN(get_metric_fn=_accuracy, n=1),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            # best_fn makes orbax write each save's metrics next to it and read them back on restart.
            best_fn=_accuracy,
            best_mode="max",
            enable_async_checkpointing=is_async,
            cleanup_tmp_directories=True,
            # Opening a run must not write: bad input is rejected with the workdir untouched.
            create=False,
        )
        self._manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)

    def create_directory(self) -> None:
        """Makes the checkpoints directory (process 0): call it before the first save."""
        if jax.process_index() == 0:
            os.makedirs(self.directory, exist_ok=True)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the highest saved test accuracy (None before any evaluated save)."""
        accuracy = {s: _accuracy(self._manager.metrics(s) or {}) for s in self.all_steps()}
        evaluated = {s: a for s, a in accuracy.items() if a > -math.inf}
        return max(evaluated, key=evaluated.get) if evaluated else None

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any], eval_metrics: dict | None = None):
        """Starts saving `state` (a pytree of arrays) and `meta` (JSON, given checksums) as `step`.

        Args:
          eval_metrics: the test metrics at this step ({'accuracy': ...}); they rank "best".
        """
        meta = {**meta, "step": int(step), "checksums": checksums(state)}
        if eval_metrics:
            meta["eval"] = dict(eval_metrics)
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics=dict(eval_metrics or {}),
            force=True,
        )

    def read_meta(self, step: int) -> dict[str, Any]:
        """The meta item of checkpoint `step`."""
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore_latest(
        self, target: dict[str, Any], check: Callable[[dict[str, Any]], None]
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Restores the newest intact checkpoint onto the structure, shapes and shardings of `target`.

        Args:
          target: a state pytree like the one saved.
          check: called with a checkpoint's meta before its arrays are read; raises CheckpointError
            when the checkpoint belongs to a different configuration (nothing is moved then).

        Returns:
          (state, meta), or None when the run has no checkpoint.

        Raises:
          CheckpointError: from `check`, or when every checkpoint is corrupt.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        for step in reversed(self.all_steps()):
            try:
                meta = self.read_meta(step)
            except Exception as e:  # orbax and JSON raise many types
                self._set_aside(step, f"cannot read its meta ({brief(e)})")
                continue
            check(meta)
            try:
                state = self._manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                )["state"]
                bad = corrupted_keys(state, meta.get("checksums", {}))
                why = f"its content does not match its checksums ({', '.join(bad[:3])})" if bad else None
            except Exception as e:
                state, why = None, f"cannot read its state ({brief(e)})"
            if why is None:
                return state, meta
            self._set_aside(step, why)
        if os.path.isdir(os.path.join(self.workdir, QUARANTINE)) and not self.all_steps():
            raise CheckpointError(
                f"every checkpoint of {self.workdir} is corrupt (moved to {QUARANTINE}/); "
                "start the run again in a new --workdir"
            )
        return None

    def _set_aside(self, step: int, why: str) -> None:
        # Moved, never deleted: nothing saved is lost, and the step can be saved again.
        self.wait_until_finished()
        destination = os.path.join(self.workdir, QUARANTINE, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            shutil.move(self.step_dir(step), destination)
        self._log(
            f"checkpoint step {step} is corrupt: {why}; moved it to {destination}, trying the one before"
        )
        self._manager.reload()

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
