"""Cost of the start-of-run check of image folders (train/data/image_check.py): threads against processes.

Reads every file's header under the given class-folder roots (ImageFolder listing) the ways the check
could: serially on one thread (its CPU time per file is the cost that scales with the data), on the
check's thread pool (image_check.THREADS, and other counts), and on a pool of spawned processes (one
per CPU; their start-up counted). One untimed pass first warms the page cache, so the figures are the
CPU-bound case; a cold network disk adds its latency per file, which more threads overlap. Prints a
markdown table and the extrapolation to ImageNet's 1,281,167 training files.

    python ../shared/data/prepare_cifar10.py folder DIR     # the 60,000-file CIFAR-10 JPEG tree
    python bench/folder_check.py DIR/train DIR/test [--threads 2 8 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_model, emit, loadavg
from train.data import image_check
from train.data.image_folder import ImageFolder

IMAGENET_TRAIN_FILES = 1_281_167


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _inspect_chunk(paths: list[str]) -> list:
    return [image_check.inspect(p) for p in paths]


def with_processes(paths: list[str], workers: int) -> list:
    """inspect() of every path on a pool of `workers` spawned processes (JAX runs threads: no fork)."""
    chunks = [paths[i : i + 1024] for i in range(0, len(paths), 1024)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        return [r for chunk in pool.map(_inspect_chunk, chunks) for r in chunk]


def best_of(repeats: int, run) -> tuple[float, float]:
    """(best wall seconds, this process's CPU seconds in that run) of `repeats` runs of run()."""
    best = None
    for _ in range(repeats):
        cpu, start = _cpu_s(), time.perf_counter()
        run()
        wall, used = time.perf_counter() - start, _cpu_s() - cpu
        if best is None or wall < best[0]:
            best = (wall, used)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", help="class-folder roots (root/<class>/<image>)")
    parser.add_argument("--threads", type=int, nargs="*", default=[2, 8, image_check.THREADS])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    paths = [os.path.join(f.root, p) for f in map(ImageFolder, args.roots) for p in f.paths]
    n, cpus = len(paths), os.cpu_count() or 1
    image_check.inspect_all(paths)  # warms the page cache
    rows = [("serial, 1 thread", *best_of(args.repeats, lambda: [image_check.inspect(p) for p in paths]))]
    per_file_cpu = rows[0][2] / n
    for t in sorted(set(args.threads)):
        rows.append((f"{t} threads", *best_of(args.repeats, lambda t=t: image_check.inspect_all(paths, t))))
    rows.append((f"{cpus} processes (spawned)", *best_of(args.repeats, lambda: with_processes(paths, cpus))))
    print(f"{n} files under {', '.join(args.roots)}; {cpus} CPUs ({cpu_model()}); load {loadavg()}")
    print("| how | wall s | files/s | CPU s of this process |\n|---|---|---|---|")
    for how, wall, used in rows:
        print(f"| {how} | {wall:.2f} | {n / wall:,.0f} | {used:.2f} |")
        emit({"bench": "folder_check", "how": how, "files": n, "wall_s": wall, "files_per_s": n / wall})
    fastest = min(rows, key=lambda r: r[1])
    print(
        f"CPU per file (serial): {per_file_cpu * 1e6:.0f} us; ImageNet's {IMAGENET_TRAIN_FILES:,} files: "
        f"{per_file_cpu * IMAGENET_TRAIN_FILES:.0f} CPU-s, {IMAGENET_TRAIN_FILES / (n / fastest[1]):.0f} s "
        f"at the fastest rate here ({fastest[0]})"
    )


if __name__ == "__main__":
    main()
