"""Where metrics go: DIR/metrics.jsonl, TensorBoard event files, and PNG curves at each evaluation."""

from __future__ import annotations

import json
import math
import os
from typing import Any


class MetricsWriter:
    """Appends one JSON object per line to `workdir/metrics.jsonl` and mirrors it to TensorBoard.

    On resume from `resume_step`, lines and events logged after that step by the interrupted run are
    dropped first, so the file reads as if the run had never stopped.

    Args:
      workdir: the run directory.
      resume_step: the step the run restarts from (0 for a fresh run).
      enabled: False on every process but process 0 (multi-host): nothing is written there.
    """

    def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        _truncate_after(self.path, resume_step)
        SummaryWriter = _import_summary_writer()

        # purge_step hides the events the interrupted run wrote after resume_step.
        self._tb = SummaryWriter(
            os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1 if resume_step else None
        )

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        """Logs `metrics` (JSON-able scalars) for `split` ('train' or 'test') at `step`."""
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: _finite_or_none(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        for k, v in metrics.items():
            if isinstance(v, int | float) and math.isfinite(v):
                self._tb.add_scalar(f"{split}/{k}", v, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _finite_or_none(value: Any) -> Any:
    # JSON has no NaN or infinity: a non-finite figure (a diverged evaluation) is written as null.
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file, in order."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _truncate_after(path: str, step: int) -> None:
    records = read_metrics(path)
    kept = [r for r in records if r["step"] <= step]
    if len(kept) != len(records):
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)


def plot_curves(metrics_path: str, png_path: str) -> None:
    """Draws train/test loss and accuracy against step from metrics.jsonl into `png_path`."""
    # A Figure without pyplot renders with no backend and leaves the process's matplotlib state alone.
    from matplotlib.figure import Figure

    records = read_metrics(metrics_path)
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for split, style in (("train", "-"), ("test", "o-")):
        rows = [r for r in records if r["split"] == split]
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r["loss"] for r in rows], style, label=split)
        axes[1].plot(steps, [r["accuracy"] for r in rows], style, label=split)
    for ax, name in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    # Written next to the file and renamed: an interrupted write never leaves a broken PNG.
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, png_path)


def _import_summary_writer() -> type:
    """tensorboardX's SummaryWriter, imported without PyTorch.

    tensorboardX's writer module imports torch when it is installed (only to accept torch tensors), which
    costs seconds of every run's start-up (BENCHMARKS.md, start-up); this program passes Python floats.
    """
    import sys

    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX tolerates
    try:
        from tensorboardX import SummaryWriter
    finally:
        if blocked:
            del sys.modules["torch"]
    return SummaryWriter
