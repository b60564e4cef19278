"""This machine's measured GEMM peak: FLOP/s of a large square matmul in numpy, JAX and PyTorch.

Each library runs float32 and bfloat16 (numpy has no bfloat16) with the same thread count. The best of
these is the "peak" that bench/run_all.py divides each model's achieved FLOP/s by.

    python bench/matmul_peak.py [--n 3072] [--repeats 5] [--threads N] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def _rate(fn, n: int, repeats: int) -> float:
    fn()  # warm-up (and compile, for JAX)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def measure(lib: str, dtype: str, n: int, repeats: int) -> float:
    """Median FLOP/s (2*n^3 per matmul) of an n x n @ n x n product in `lib` at `dtype`."""
    if lib == "numpy":
        import numpy as np

        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
        return _rate(lambda: a @ b, n, repeats)
    if lib == "jax":
        import jax
        import jax.numpy as jnp

        dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
        a = jax.random.normal(jax.random.key(0), (n, n), dt)
        b = jax.random.normal(jax.random.key(1), (n, n), dt)
        f = jax.jit(jnp.matmul)
        return _rate(lambda: f(a, b).block_until_ready(), n, repeats)
    if lib == "torch":
        import torch

        dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(dt)
        b = torch.randn(n, n, generator=g).to(dt)
        return _rate(lambda: torch.mm(a, b), n, repeats)
    raise ValueError(f"unknown lib {lib!r}; use numpy, jax or torch")


CASES = (
    ("numpy", "float32"),
    ("jax", "float32"),
    ("jax", "bfloat16"),
    ("torch", "float32"),
    ("torch", "bfloat16"),
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3072, help="matrix side")
    p.add_argument("--repeats", type=int, default=5, help="timed matmuls per case (median)")
    p.add_argument("--threads", type=int, default=None, help="threads for every library (default: all CPUs)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.repeats = 128, 1
    threads = common.pin_threads(args.threads)
    common.torch_threads(threads)
    print(f"| library | dtype | GFLOP/s (n={args.n}, {threads} threads) |\n|---|---|---|")
    for lib, dtype in CASES:
        load = common.loadavg()
        flops = measure(lib, dtype, args.n, args.repeats)
        print(f"| {lib} | {dtype} | {flops / 1e9:.1f} |", flush=True)
        common.emit(
            {
                "kind": "matmul",
                "lib": lib,
                "dtype": dtype,
                "n": args.n,
                "threads": threads,
                "flop_s": flops,
                "loadavg": load,
            }
        )


if __name__ == "__main__":
    main()
