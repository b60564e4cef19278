"""When a training state is healthy enough to be saved, and the error when it is not.

The criterion, checked at every save (and at every log for the loss):
  1. every training step's loss and the updated parameters are finite (the step program flags any
     step that is not, see programs.make_train_fn);
  2. the evaluation at this save, when there is one, has a finite loss;
  3. the parameters' global L2 norm has not exploded: it is at most EXPLOSION_FACTOR times the norm of
     the last healthy state (the state the run started or resumed from, then each healthy save).

A state that fails is never saved, so the newest checkpoint is always the last healthy one and a rerun
resumes from it. SGD with weight decay moves the norm by a few percent between saves; a learning rate
far too high multiplies it by orders of magnitude within a few steps (lr 1e6 on ResNet-20: 2e22 after
two steps, with a finite loss at first), so the factor separates the two with a wide margin.
"""

from __future__ import annotations

import math
from typing import Any

EXPLOSION_FACTOR = 10.0


class TrainingDiverged(RuntimeError):
    """The loss or the parameters became non-finite or exploded; the message names the step, the reason
    and the last healthy checkpoint, which is kept."""


def problem(
    host_sums: dict[str, Any], reference_norm: float, eval_metrics: dict[str, Any] | None
) -> str | None:
    """What makes the state after a logging window unhealthy (see the module docstring), or None.

    Args:
      host_sums: the window's sums on the host (programs.zero_sums' keys).
      reference_norm: the parameter norm of the last healthy state.
      eval_metrics: the evaluation at this point, if there was one.
    """
    if int(host_sums["nonfinite"]):
        return f"the loss or the parameters became non-finite at step {int(host_sums['first_nonfinite'])}"
    if eval_metrics is not None and not math.isfinite(eval_metrics["loss"]):
        return f"the evaluation loss is {eval_metrics['loss']}"
    norm = float(host_sums["param_norm"])
    if norm > EXPLOSION_FACTOR * reference_norm:
        return (
            f"the parameters exploded: their norm grew from {reference_norm:.4g} to {norm:.4g} (more than "
            f"{EXPLOSION_FACTOR:g}x since the last healthy state)"
        )
    return None


def diverged(
    step: int, why: str, good_steps: list[int], directory: str, learning_rate: float
) -> TrainingDiverged:
    """The error for a run that diverged by `step`, naming the checkpoints that are kept."""
    where = (
        f"the last healthy checkpoint is step {good_steps[-1]} in {directory} (kept: {good_steps})"
        if good_steps
        else "no checkpoint was saved before it"
    )
    return TrainingDiverged(
        f"training diverged by step {step}: {why}; nothing unhealthy was saved and {where}. Lower "
        f"--config.learning_rate (now {learning_rate}) and rerun the same command to resume from it "
        "(or pick a checkpoint with --config.resume_step=N)."
    )
