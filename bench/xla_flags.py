"""XLA:CPU settings side by side, with PyTorch eager float32 in the same run.

    python bench/xla_flags.py                        # every candidate, 3 rounds (about 30 min on 2 cores)
    python bench/xla_flags.py --rounds 5 --candidates xla_default fusions ours torch --json out.json
    python bench/xla_flags.py --smoke                # each candidate once, tiny sizes: checks the script

Measured per candidate (float32, threads pinned as in bench/cpu.py):
  train:  ResNet-20 bare train step (train.steps.train_step, jitted as bench/cpu.py does), batch 128;
          PyTorch: bench/torch_ref.py's forward + loss + backward + SGD step.
  eval:   ResNet-20 eval forward (train.steps.eval_step), batch 128; PyTorch: no_grad forward, eval mode.
  r50:    ResNet-50 forward at 224x224 to the pooled features (feature extraction), batch 8;
          PyTorch: torchvision resnet50 with fc = Identity.
A candidate is a value of XLA_FLAGS added to the environment (XLA reads XLA_FLAGS once per process), or
'ours': whatever `resnet_jax.set_xla_cpu_defaults()` sets, i.e. what `python -m train` runs with.
Every (round, candidate) runs in a fresh process; round r runs the candidates in an order rotated by r
(ABC, BCA, CAB, ...) so that load from other jobs falls on all alike. Each figure is the median img/s of
--windows timed windows and carries os.getloadavg() taken before and after it; the table gives, per
candidate, the median over rounds and the 1-minute load range, and each ratio divides by PyTorch's
median in the same run. "best window": the median over rounds of each process's fastest window, the one
least slowed by other jobs (on a busy machine the closer estimate of the quiet-machine speed).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

sys.path.insert(0, str(common.REPO))

YNN = "--xla_cpu_experimental_ynn_fusion_type"
# XLA's default list for this flag (jaxlib 0.10.2) is individual_dot,individual_convolution: YNNPACK runs
# each dot and each convolution with more than 16 input or output channels. A list without +/- prefixes
# replaces it; a list of +/- items edits it. Spelling the default list out is not the default (the logits
# differ): '+individual_dot' keeps it bitwise.
CANDIDATES = {
    "xla_default": "",
    "fusions": f"{YNN}=dot,eltwise,reduce",
    "fusions_idot": f"{YNN}=dot,eltwise,reduce,individual_dot",
    "fusions_iconv": f"{YNN}=dot,eltwise,reduce,individual_convolution",
    "plus_fusions": f"{YNN}=+dot,+eltwise,+reduce",
    "plus_eltwise": f"{YNN}=+eltwise",
    "plus_reduce": f"{YNN}=+reduce",
    "plus_eltwise_reduce": f"{YNN}=+eltwise,+reduce",
    "minus_iconv": f"{YNN}=-individual_convolution",
    "no_ynn": f"{YNN}=-individual_dot,-individual_convolution",
    "ours": None,
    "torch": None,
}
PARTS = ("train", "eval", "r50", "r50_train")
SIZES = {"train": (32, 128), "eval": (32, 128), "r50": (224, 8), "r50_train": (224, 8)}  # (side, batch)
STEPS = {"train": 3, "eval": 10, "r50": 2, "r50_train": 1}  # steps per timed window


def measure(run, batch: int, steps: int, windows: int, warmup: int) -> dict:
    """img/s of `run(k)` (k steps, blocking): median and range over windows, CPU time, load around it."""
    if warmup:
        run(warmup)
    load = os.getloadavg()
    rates, cpu = [], []
    for _ in range(windows):
        c0, t0 = sum(os.times()[:2]), time.perf_counter()
        run(steps)
        rates.append(batch * steps / (time.perf_counter() - t0))
        cpu.append((sum(os.times()[:2]) - c0) / (batch * steps))
    return {
        "img_s": statistics.median(rates),
        "img_s_min": min(rates),
        "img_s_max": max(rates),
        "cpu_ms_per_img": 1e3 * statistics.median(cpu),
        "load_before": round(load[0], 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def jax_parts(args) -> dict:
    import hashlib
    import re

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import resnet_jax
    from configs import default
    from train import optim
    from train import steps as tr

    config = default.get_config()
    mesh, rng = tr.make_mesh(), np.random.default_rng(0)
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    mean, std = jnp.asarray(config.mean, jnp.float32), jnp.asarray(config.std, jnp.float32)

    def part(name):
        """(batch size, device batch, replicated initial train state) of a part."""
        model_name = "resnet50" if name.startswith("r50") else "resnet20"
        model = common.smoke_model(model_name) if args.smoke else resnet_jax.create_model(model_name)
        size, b = SIZES[name][0], 2 if args.smoke else SIZES[name][1]
        images = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
        labels = rng.integers(0, model.num_classes, (b,), dtype=np.int32)
        batch = jax.device_put({"image": images, "label": labels, "mask": np.ones(b, np.float32)}, sharded)
        tx = optim.create_optimizer(config, 1_000_000)
        shape = (size, size, 3)
        init = functools.partial(tr.create_train_state, model=model, tx=tx, image_shape=shape)
        state = common.compile_init(init, jax.random.key(0))(jax.random.key(0))
        return b, batch, jax.device_put(state, replicated)

    def features(state, batch):  # the pooled features of eval mode: feature extraction
        x = (batch["image"].astype(jnp.float32) / 255.0 - mean) / std
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return state.apply_fn(variables, x, train=False, return_features=True)[1]["pooled"]

    key = jax.device_put(jax.random.key(1), replicated)

    def one(name):
        """The part's figures: its compiled program's hash, or its timings."""
        b, batch, state = part(name)
        if name in ("train", "r50_train"):
            fn = functools.partial(tr.train_step, mean=mean, std=std, pad=config.pad, flip=config.flip)
            step = common.jit_train_step(fn, mesh).lower(state, batch, key).compile()

            def call(s):
                return step(s, batch, key)  # (new state, metrics)

        else:
            fn = functools.partial(tr.eval_step, mean=mean, std=std) if name == "eval" else features
            step = jax.jit(fn).lower(state, batch).compile()

            def call(s):
                return s, step(s, batch)

        if args.compile_only:
            text = re.sub(r"metadata=\{[^}]*\}", "", step.as_text())  # op names aside: the program
            digest = hashlib.sha256(text.encode()).hexdigest()[:10]
            return {"program": digest, "ynn_fusions": text.count('"kind":"__ynn_fusion"')}
        holder = [state]

        def run(k):
            for _ in range(k):
                holder[0], y = call(holder[0])
            jax.block_until_ready((holder[0], y))

        return measure(run, b, STEPS[name], args.windows, args.warmup)

    return {name: one(name) for name in args.parts}


def torch_parts(args, threads: int) -> dict:
    import torch
    import torch_ref

    common.torch_threads(threads)
    torch.manual_seed(0)

    def one(name):
        size, b = SIZES[name][0], 2 if args.smoke else SIZES[name][1]
        model = torch_ref.create("resnet50" if name.startswith("r50") else "resnet20")
        if name == "r50":
            model.fc = torch.nn.Identity()  # pooled features, as the JAX side
        x, y = torch.randn(b, 3, size, size), torch.randint(0, 10, (b,))
        train_step, eval_step = torch_ref.make_steps(model, "float32")

        def run(k):
            for _ in range(k):
                train_step(x, y) if name in ("train", "r50_train") else eval_step(x)

        return measure(run, b, STEPS[name], args.windows, args.warmup)

    return {name: one(name) for name in args.parts}


def worker(args) -> None:
    """One candidate in this process: prints its BENCH_JSON record."""
    threads = common.pin_threads(args.threads)  # before jax/torch load; keeps XLA_FLAGS' other flags
    name = args.worker
    if name == "ours":
        from resnet_jax.xla_flags import set_xla_cpu_defaults

        set_xla_cpu_defaults()
    elif name != "torch":
        os.environ["XLA_FLAGS"] = " ".join(f for f in (os.environ["XLA_FLAGS"], CANDIDATES[name]) if f)
    if name == "torch" and args.compile_only:
        return
    out = torch_parts(args, threads) if name == "torch" else jax_parts(args)
    common.emit({"candidate": name, "xla_flags": os.environ.get("XLA_FLAGS", ""), "threads": threads, **out})


def table(records: list[dict], names: list[str], parts: tuple[str, ...]) -> str:
    """Markdown, one table per part: per candidate the median over rounds of img/s (range), of the best
    window, and of CPU ms per image, each img/s ratio to PyTorch's, and the 1-minute load range."""

    def median_of(name, part, key):
        xs = [r[part][key] for r in records if r["candidate"] == name and part in r]
        return statistics.median(xs) if xs else None

    def ratio(a, b):
        return f"{a / b:.2f}" if a and b else "-"

    head = ["candidate", "XLA_FLAGS", "img/s (min-max)", "/ PyTorch", "best window", "/ PyTorch"]
    head += ["CPU ms/img", "rounds", "load 1-min"]
    lines = []
    for p in parts:
        lines += ["", f"{p} ({SIZES[p][1]} images of {SIZES[p][0]} px per step)", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for name in names:
            mine = [r for r in records if r["candidate"] == name and p in r]
            if not mine:
                continue
            flags = CANDIDATES[name] if CANDIDATES[name] is not None else mine[0]["xla_flags"]
            xs = [r[p]["img_s"] for r in mine]
            med, best = median_of(name, p, "img_s"), median_of(name, p, "img_s_max")
            loads = [r[p][k] for r in mine for k in ("load_before", "load_after")]
            cells = [name, f"`{flags}`" if name != "torch" and flags else "-"]
            cells += [f"{med:.1f} ({min(xs):.0f}-{max(xs):.0f})", ratio(med, median_of("torch", p, "img_s"))]
            cells += [f"{best:.1f}", ratio(best, median_of("torch", p, "img_s_max"))]
            cells += [f"{median_of(name, p, 'cpu_ms_per_img'):.2f}", str(len(mine))]
            cells.append(f"{min(loads):.1f}-{max(loads):.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def programs_table(records: list[dict], parts: tuple[str, ...]) -> str:
    """Markdown: per candidate and part, the compiled program's hash and its count of YNNPACK fusions;
    a letter per distinct program of a part, so that equal programs show at a glance."""
    letters = {p: {} for p in parts}
    rows = ["| candidate | XLA_FLAGS | " + " | ".join(parts) + " |", "|" + " --- |" * (len(parts) + 2)]
    for r in records:
        cells = [r["candidate"], f"`{r['xla_flags']}`" if r["xla_flags"] else "-"]
        for p in parts:
            program = letters[p].setdefault(r[p]["program"], "ABCDEFGHIJKLMNOP"[len(letters[p])])
            cells.append(f"{program} ({r[p]['ynn_fusions']} YNN fusions)")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--rounds", type=int, default=3, help="processes per candidate, interleaved")
    p.add_argument("--windows", type=int, default=5, help="timed windows per figure (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--threads", type=int, default=None, help="threads for XLA and PyTorch (default: all)")
    p.add_argument("--json", type=Path, default=None, help="also write every raw record to this file")
    p.add_argument("--smoke", action="store_true", help="one round, tiny models and batches")
    p.add_argument(
        "--compile-only",
        action="store_true",
        help="one round; per candidate and part, a hash of the compiled program instead of timings "
        "(candidates with equal hashes run the same program)",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.windows, args.warmup = 1, 1, 0
    if args.compile_only:
        args.rounds, args.candidates = 1, [c for c in args.candidates if c != "torch"]
    if args.worker:
        return worker(args)
    threads = common.pin_threads(args.threads)
    base = os.environ.get("XLA_FLAGS", "").strip()
    print(
        f"machine: {common.cpu_model()}, {len(os.sched_getaffinity(0))} CPUs, {threads} threads; "
        f"versions: {json.dumps(common.versions())}; XLA_FLAGS before candidates: `{base or '(none)'}`; "
        f"load at start {common.loadavg()}",
        flush=True,
    )
    forwarded = ["--threads", str(threads), "--windows", str(args.windows), "--warmup", str(args.warmup)]
    forwarded += ["--parts", *args.parts] + (["--smoke"] if args.smoke else [])
    forwarded += ["--compile-only"] if args.compile_only else []
    records, names = [], args.candidates
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            env = {**os.environ, "XLA_FLAGS": base}
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            cmd = [sys.executable, __file__, f"--worker={name}", *forwarded]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=common.REPO)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"{name} failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-3000:]}"
                )
            record = {**common.parse_records(proc.stdout)[0], "round": r}
            records.append(record)
            key = "program" if args.compile_only else "img_s"
            figures = ", ".join(f"{p} {record[p][key]}" for p in args.parts)
            print(f"round {r} {name}: {figures} (load {common.loadavg()})", flush=True)
            if args.json:
                args.json.write_text(json.dumps(records, indent=1))
    if args.compile_only:
        return print(programs_table(records, tuple(args.parts)))
    print(table(records, names, tuple(args.parts)))


if __name__ == "__main__":
    main()
