"""A training run's checkpoints: WORKDIR/checkpoints/<step>, kept, verified and restored for resuming.

Retention keeps the latest `keep` checkpoints and the best one by test accuracy. Each checkpoint's
evaluation is saved with it (orbax's metrics item), so "best" survives any number of restarts. Every
save carries checksums of its arrays in its meta; a resume verifies them and skips (and moves aside)
a corrupt checkpoint rather than continuing from it silently. Nothing is ever deleted but by retention:
a corrupt, unhealthy or superseded checkpoint is moved to a folder beside checkpoints/. A save that would
not fit on the disk is refused before it starts.
"""

from __future__ import annotations

import errno
import glob
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
QUARANTINE = "corrupt_checkpoints"  # unreadable, or not matching its checksums
UNHEALTHY = "unhealthy_checkpoints"  # a state the caller's health check rejects (e.g. a NaN evaluation)
SUPERSEDED = "superseded_checkpoints"  # newer than the step a run was told to resume from
# Slack over the arrays' own bytes: orbax's metadata, the meta item, and the filesystem's blocks.
_SPACE_MARGIN = 1.1
_SPACE_EXTRA = 2**20


class NoSpaceError(CheckpointError):
    """The disk cannot hold the next checkpoint; the message says how much is needed and free."""


def no_space(directory: str, needed: int | None = None) -> NoSpaceError:
    """The one-line error for a full disk under `directory`."""
    free = shutil.disk_usage(_existing(directory)).free
    need = f"{needed / 2**20:.1f} MB needed, " if needed is not None else ""
    return NoSpaceError(
        f"no space left on {directory}: {need}{free / 2**20:.1f} MB free. Free some space (or pass a "
        "--workdir on a larger disk) and rerun the same command to resume; the checkpoints already "
        "written are intact"
    )


def is_no_space(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is the operating system's 'no space left on device'."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):  # orbax and tensorstore wrap the OSError's text
            return True
        error = error.__cause__ or error.__context__
    return False


def _existing(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


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

        Raises:
          NoSpaceError: the disk cannot hold it (nothing is written), or an earlier save ran out of space.
        """
        self.wait_until_finished()  # one save at a time: a failure of the last one surfaces here
        needed = int(sum(x.nbytes for x in jax.tree.leaves(state)) * _SPACE_MARGIN) + _SPACE_EXTRA
        if shutil.disk_usage(_existing(self.directory)).free < needed:
            raise no_space(self.directory, needed)
        meta = {**meta, "step": int(step), "checksums": checksums(state)}
        if eval_metrics:
            meta["eval"] = dict(eval_metrics)
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                metrics=dict(eval_metrics or {}),
                force=True,
            )
        except Exception as e:
            raise self._failed(e) from e

    def read_meta(self, step: int) -> dict[str, Any]:
        """The meta item of checkpoint `step`."""
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore_latest(
        self,
        target: dict[str, Any],
        check: Callable[[dict[str, Any]], None],
        *,
        unhealthy: Callable[[dict[str, Any]], str | None] = lambda meta: None,
        step: int | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Restores the newest intact, healthy checkpoint onto the structure, shapes, shardings of `target`.

        Args:
          target: a state pytree like the one saved.
          check: called with a checkpoint's meta before its arrays are read; raises CheckpointError
            when the checkpoint belongs to a different configuration (nothing is moved then).
          unhealthy: called with a checkpoint's meta; a reason when its state must not be resumed from
            (it is moved to UNHEALTHY/ and the one before is tried), else None.
          step: restore exactly this step (newer ones are left for `supersede_after`).

        Returns:
          (state, meta), or None when the run has no checkpoint.

        Raises:
          CheckpointError: from `check`; when `step` is not a checkpoint of the run; when every
            checkpoint is corrupt.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        steps = self.all_steps()
        if step is not None:
            if step not in steps:
                raise CheckpointError(
                    f"resume_step={step} is not a checkpoint of {self.workdir} (it has steps "
                    f"{steps or 'none'}): pass one of them, or -1 for the latest"
                )
            steps = [s for s in steps if s <= step]
        for step in reversed(steps):
            try:
                meta = self.read_meta(step)
            except Exception as e:  # orbax and JSON raise many types
                self._set_aside(step, f"cannot read its meta ({brief(e)})")
                continue
            check(meta)
            reason = unhealthy(meta)
            if reason:
                self._set_aside(step, reason, folder=UNHEALTHY)
                continue
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

    def supersede_after(self, step: int) -> None:
        """Moves every checkpoint newer than `step` to SUPERSEDED/ (a run resumed from an earlier step
        saves those steps again)."""
        for newer in [s for s in self.all_steps() if s > step]:
            self._set_aside(newer, f"the run resumes from step {step}", folder=SUPERSEDED)

    def _set_aside(self, step: int, why: str, folder: str = QUARANTINE) -> None:
        # Moved, never deleted: nothing saved is lost, and the step can be saved again.
        self.wait_until_finished()
        destination = os.path.join(self.workdir, folder, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            shutil.move(self.step_dir(step), destination)
        what = {QUARANTINE: "is corrupt", UNHEALTHY: "is unhealthy", SUPERSEDED: "is superseded"}[folder]
        tail = ", trying the one before" if folder != SUPERSEDED else ""
        self._log(f"checkpoint step {step} {what}: {why}; moved it to {destination}{tail}")
        self._manager.reload()

    def _failed(self, error: Exception) -> Exception:
        """A failed save as the error to raise: a full disk becomes NoSpaceError, with orbax's temporary
        directories of the failed save removed (the checkpoints before it are untouched)."""
        if not is_no_space(error):
            return error
        if jax.process_index() == 0:
            for tmp in glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")):
                shutil.rmtree(tmp, ignore_errors=True)
        return no_space(self.directory)

    def wait_until_finished(self) -> None:
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # an asynchronous save that failed in its background thread
            raise self._failed(e) from e

    def close(self) -> None:
        self._manager.close()
