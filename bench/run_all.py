"""The whole CPU benchmark in one command: prints the markdown tables of BENCHMARKS.md.

    python bench/run_all.py                     # full run (about 20 minutes on 2 cores)
    python bench/run_all.py --smoke             # every script once with tiny sizes (1-2 minutes)
    python bench/run_all.py --models resnet20 --dtypes float32 --json results.json

Runs bench/matmul_peak.py, then bench/cpu.py once per (model, dtype, framework), each in its own process
(so peak memory belongs to one configuration and no library's thread pool outlives its run), all with
the same thread count, then the GEMM peak again (the better of the two is used). The tables give medians
over timed windows and the load average around each run: the machine may be shared, and a busy machine
lowers every figure (PyTorch's OpenMP pool more than XLA's), so compare runs made at low load. XLA_FLAGS
set in the environment reach every JAX process; bench/cpu.py adds the training program's XLA:CPU defaults
(resnet_jax.xla_flags) to those it does not set, as `python -m train` does (each record's `xla_flags`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

BENCH = Path(__file__).resolve().parent
# Today's goals (docs/benchmarks.md): the whole training program keeps 95% of its bare jitted step, and
# ResNet-20 training out of the box reaches 0.6x PyTorch eager float32 on a CPU.
GOAL_PROGRAM_VS_STEP = 0.95
GOAL_RESNET20_VS_TORCH = 0.6


def run(script: str, args: list[str]) -> list[dict]:
    """Runs a bench script in a fresh process and returns its BENCH_JSON records (raises on failure)."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, env=env, cwd=common.REPO
    )
    sys.stderr.write(
        proc.stdout.split("BENCH_JSON")[0] if proc.returncode == 0 else proc.stdout + proc.stderr
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed with exit code {proc.returncode}")
    return common.parse_records(proc.stdout)


def model_flops(model: str, size: int) -> float:
    import torch_ref

    return torch_ref.forward_flops(torch_ref.create(model), size)


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(title: str, head: list[str], rows: list[list]) -> list[str]:
    return ["", f"### {title}", "", _row(head), _row(["---"] * len(head)), *(_row(r) for r in rows)]


def tables(peaks: list[dict], records: list[dict]) -> str:
    """The markdown report: GEMM peaks, training, eval / first step / memory, and the goals."""
    best = {}
    for p in peaks:
        best[p["dtype"]] = max(best.get(p["dtype"], 0.0), p["flop_s"])
    lines = _table(
        "Matmul peak (square GEMM)",
        ["library", "dtype", "GFLOP/s", "load avg"],
        [[p["lib"], p["dtype"], f"{p['flop_s'] / 1e9:.1f}", p["loadavg"]] for p in peaks],
    )
    lines += ["", "Peak used below, the best library per dtype: "]
    lines[-1] += ", ".join(f"{d} {v / 1e9:.0f} GFLOP/s" for d, v in best.items()) + "."
    by = {(r["framework"], r["model"], r["dtype"]): r for r in records}
    flops = {m: model_flops(m, r["image_size"]) for (_, m, _), r in by.items()}

    def frac(r: dict | None, key: str, mult: float) -> str:
        if r is None or not best.get(r["dtype"]):
            return "-"
        achieved = r[key]["img_s"] * mult * flops[r["model"]]
        return f"{achieved / 1e9:.0f} ({100 * achieved / best[r['dtype']]:.0f}%)"

    def img_s(r: dict | None, key: str) -> float | None:
        return r[key]["img_s"] if r else None

    def ratio(a: float | None, b: float | None) -> str:
        return _f(a / b if a and b else None, ".2f")

    ours = [(k, r) for k, r in by.items() if k[0] == "jax"]
    train_rows, eval_rows, goals = [], [], []
    for (_, model, dtype), r in ours:
        t, t32 = by.get(("torch", model, dtype)), by.get(("torch", model, "float32"))
        prog, step = img_s(r, "train_program"), img_s(r, "train_step")
        theirs, theirs32 = img_s(t, "train_step"), img_s(t32, "train_step")
        train_rows.append(
            [
                model,
                dtype,
                r["batch"],
                f"{prog:.1f}",
                f"{step:.1f}",
                ratio(prog, step),
                _f(theirs),
                ratio(prog, theirs),
                ratio(prog, theirs32),
                frac(r, "train_program", 3),
                frac(t, "train_step", 3),
                f"{r['loadavg_before']}; {t['loadavg_before'] if t else '-'}",
            ]
        )
        eval_rows.append(
            [
                model,
                dtype,
                r["batch"],
                f"{img_s(r, 'eval'):.1f}",
                _f(img_s(t, "eval")),
                ratio(img_s(r, "eval"), img_s(t, "eval")),
                frac(r, "eval", 1),
                frac(t, "eval", 1),
                f"{r['first_step_s']:.1f}; {_f(t and t['first_step_s'])}",
                f"{r['peak_rss_mib']:.0f}; {_f(t and t['peak_rss_mib'], '.0f')}",
            ]
        )
        ok = "met" if prog / step >= GOAL_PROGRAM_VS_STEP else "NOT met"
        goals.append(
            f"- {model} {dtype}: program / bare step = {prog / step:.2f} "
            f"(goal >= {GOAL_PROGRAM_VS_STEP}: {ok})"
        )
        if model == "resnet20" and dtype == "float32" and theirs:
            ok = "met" if prog / theirs >= GOAL_RESNET20_VS_TORCH else "NOT met"
            goals.append(
                f"- resnet20 float32 training, ours / PyTorch float32 eager = {prog / theirs:.2f} "
                f"(goal >= {GOAL_RESNET20_VS_TORCH}: {ok})"
            )
    lines += _table(
        "Training img/s (median of timed windows); GFLOP/s = img/s x 3 x forward FLOPs (% of the GEMM peak)",
        [
            "model",
            "dtype",
            "batch",
            "ours: program",
            "ours: bare step",
            "program / step",
            "PyTorch eager",
            "ours / PyTorch same dtype",
            "ours / PyTorch f32",
            "ours GFLOP/s",
            "PyTorch GFLOP/s",
            "load avg (ours; PyTorch)",
        ],
        train_rows,
    )
    lines += _table(
        "Eval img/s, first step, peak memory",
        [
            "model",
            "dtype",
            "batch",
            "ours eval",
            "PyTorch eval",
            "ours / PyTorch",
            "ours GFLOP/s",
            "PyTorch GFLOP/s",
            "first step s (ours; PyTorch)",
            "peak RSS MiB (ours; PyTorch)",
        ],
        eval_rows,
    )
    lines += ["", "### Goals", "", *goals, ""]
    xla = [
        f"{r['model']} {r['dtype']} {r['train_step_flops'] / 1e6:.1f} M"
        for _, r in ours
        if r.get("train_step_flops")
    ]
    lines.append(
        "Model FLOPs per image (2 x multiply-adds of convs and FC, forward): "
        + ", ".join(f"{m} {v / 1e6:.1f} M" for m, v in flops.items())
        + (
            "; XLA's cost analysis of the whole jitted train step, per image: " + ", ".join(xla)
            if xla
            else ""
        )
        + "."
    )
    return "\n".join(lines)


def header(threads: int, argv: list[str]) -> str:
    return "\n".join(
        [
            f"Command: `python bench/run_all.py {' '.join(argv)}`".replace(" `", " `").rstrip(),
            f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {common.cpu_model()}, "
            f"{len(os.sched_getaffinity(0))} CPUs, {threads} threads for XLA and PyTorch; "
            f"load avg at start {common.loadavg()}",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in common.versions().items()),
            f"XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '').strip() or '(none)'}`",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet50"], choices=["resnet20", "resnet50"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--frameworks", nargs="+", default=["jax", "torch"], choices=["jax", "torch"])
    p.add_argument("--threads", type=int, default=None, help="threads for every library (default: all CPUs)")
    p.add_argument("--windows", type=int, default=5, help="timed windows per figure (median reported)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks every script runs")
    p.add_argument("--json", type=Path, default=None, help="also write every raw record to this file")
    args = p.parse_args(argv)
    threads = common.pin_threads(args.threads)
    common_args = ["--threads", str(threads)] + (
        ["--smoke"] if args.smoke else ["--windows", str(args.windows)]
    )
    head = header(threads, argv)
    peak_args = common_args[:2] + (["--smoke"] if args.smoke else [])
    peaks = run("matmul_peak.py", peak_args)
    records = []
    for model in args.models:
        for dtype in args.dtypes:
            for fw in args.frameworks:
                records += run(
                    "cpu.py", ["--framework", fw, "--model", model, "--dtype", dtype, *common_args]
                )
    # Again at the end: under changing load one GEMM measurement can understate the peak.
    peaks += run("matmul_peak.py", peak_args)
    if args.json:
        args.json.write_text(json.dumps({"peaks": peaks, "records": records}, indent=1))
    print(head + tables(peaks, records))


if __name__ == "__main__":
    main()
