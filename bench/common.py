"""Shared helpers of the bench scripts: thread setup, timing windows, peak memory, machine facts.

Every bench process calls `pin_threads` before importing jax or torch, so that XLA's and PyTorch's
intra-op pools have the same, recorded size.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pin_threads(threads: int | None = None) -> int:
    """Fixes the thread count of every math library in this process; returns it.

    XLA:CPU sizes its Eigen/intra-op pool from the CPUs the process may run on (tsl's
    NumSchedulableCPUs, i.e. the affinity mask), so the affinity mask is what sets it; PyTorch is
    told with torch.set_num_threads by the caller (`torch_threads`). OpenMP/MKL/OpenBLAS read the
    env vars below at load time. Must run before jax, torch or numpy load their backends.

    Args:
      threads: threads to use; None means every CPU this process may run on.
    """
    allowed = sorted(os.sched_getaffinity(0))
    n = len(allowed) if threads is None else threads
    if not 1 <= n <= len(allowed):
        raise ValueError(f"threads must be in 1..{len(allowed)} (the CPUs this process may use), got {n}")
    os.sched_setaffinity(0, allowed[:n])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    if sys.platform == "linux":
        # A clean XLA_FLAGS: the test conftest's 8 fake host devices would split our 2 cores 8 ways.
        flags = os.environ.get("XLA_FLAGS", "")
        flags = " ".join(f for f in flags.split() if "xla_force_host_platform_device_count" not in f)
        os.environ["XLA_FLAGS"] = flags
    return n


def torch_threads(n: int) -> None:
    """Gives PyTorch exactly `n` intra-op threads (and one inter-op thread: one step runs at a time)."""
    import torch

    torch.set_num_threads(n)
    # Raises if already set or parallel work already started in this process; then it stays as is.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def time_windows(run: Callable[[int], None], steps: int, windows: int) -> list[float]:
    """Seconds per step in each of `windows` timed windows; `run(k)` must run k steps and block on them."""
    out = []
    for _ in range(windows):
        t0 = time.perf_counter()
        run(steps)
        out.append((time.perf_counter() - t0) / steps)
    return out


def summarize(per_step: list[float], batch: int) -> dict:
    """Median img/s over the windows, and its spread (min/max img/s) so noise is visible."""
    rates = [batch / s for s in per_step]
    return {
        "img_s": statistics.median(rates),
        "img_s_min": min(rates),
        "img_s_max": max(rates),
        "windows": len(rates),
    }


def peak_rss_mib() -> float:
    """This process's peak resident memory (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loadavg() -> str:
    """The 1/5/15-minute load averages, as `uptime` prints them (the machine is shared)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def versions() -> dict:
    """Versions of the libraries that matter for the figures (only those importable)."""
    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "torch", "torchvision", "numpy"):
        with contextlib.suppress(ImportError):
            out[name] = __import__(name).__version__
    return out


def emit(record: dict) -> None:
    """Prints one result as a JSON line tagged for run_all.py to pick out of the output."""
    print("BENCH_JSON " + json.dumps(record), flush=True)


def parse_records(text: str) -> list[dict]:
    return [
        json.loads(line[len("BENCH_JSON ") :]) for line in text.splitlines() if line.startswith("BENCH_JSON ")
    ]


def smoke_model(name: str, dtype=None):
    """A tiny ResNet with the same block type as `name`, for --smoke runs (compiles in a second or two).

    Smoke runs check that a bench script works end to end; their figures mean nothing.
    """
    import jax.numpy as jnp

    import resnet_jax

    dtype = jnp.float32 if dtype is None else dtype
    if name == "resnet20":
        return resnet_jax.ResNet(
            (1, 1, 1),
            (8, 16, 32),
            num_classes=10,
            stem_features=8,
            cifar_stem=True,
            shortcut="zero_pad",
            dtype=dtype,
        )
    return resnet_jax.ResNet(
        (1, 1), (32, 64), block="bottleneck", num_classes=10, stem_features=16, dtype=dtype
    )


def compile_init(fn, *args):
    """jax.jit(fn) compiled for `args`, without XLA:CPU's backend optimisation.

    Parameter initialisation runs once and is not measured, but its many threefry calls make XLA:CPU's
    optimising compile slow (about 10 s for a tiny ResNet on this machine, 1 s at level 0).
    """
    import jax

    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
    return jax.jit(fn).lower(*args).compile(options)


def jit_train_step(step_fn, mesh):
    """`step_fn(state, batch, rng)` compiled for `mesh`: state replicated and donated, batch on 'data'.

    The bare step the benchmarks time: no batch selection, no loop, no logging.
    """
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    replicated = NamedSharding(mesh, P())
    return jax.jit(
        step_fn,
        in_shardings=(replicated, NamedSharding(mesh, P("data")), replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
