"""One benchmark configuration in this process: our JAX training program or the PyTorch reference.

    python bench/cpu.py --framework jax --model resnet20 --dtype float32 --batch 128
    python bench/cpu.py --framework torch --model resnet50 --dtype bfloat16 --batch 16 --steps 2

Prints one human-readable line and one `BENCH_JSON {...}` line (read by bench/run_all.py, which runs
every configuration in its own process so each peak-memory figure belongs to one configuration).

Measured, each as the median img/s of `--windows` timed windows of `--steps` steps after warm-up:
  jax   train_program: the training loop of train.train_and_evaluate (its own compiled per-step
                       program from train.programs.make_train_fn: batch selection from the uint8 split
                       held on device, crop/flip/normalise, forward, backward, SGD update, metric
                       sums; host syncs every log_every_steps) on synthetic uint8 data.
        train_step:    the bare jitted train.steps.train_step (bench/common.py jit_train_step), called in
                       a loop on one device-resident uint8 batch.
        eval:          the training program's whole-split evaluation (one compiled program).
  torch train_step:    forward + loss + backward + SGD step on one pre-made float batch.
        eval:          no_grad forward in eval mode.
  compile_s:           JAX: trace + lower + XLA compile of the bare train step (ahead of time).
  first_step_s:        wall time to the end of the first step (JAX: compile_s + one step; PyTorch:
                       one eager step including oneDNN's primitive creation).
  peak_rss_mib:        ru_maxrss of this process.
JAX runs with the XLA:CPU defaults of `python -m train` (resnet_jax.xla_flags) added to XLA_FLAGS,
except those XLA_FLAGS sets itself; the record's `xla_flags` is what XLA read.
With --smoke, JAX runs a tiny stand-in of the same block type (common.smoke_model): a check that the
script works, not a measurement.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

sys.path.insert(0, str(common.REPO))

IMAGE_SIZE = {"resnet20": 32, "resnet50": 224}
NUM_CLASSES = {"resnet20": 10, "resnet50": 1000}


def jax_forward_flops(model, batch: int, size: int) -> float | None:
    """XLA's count of FLOPs (a multiply-add is 2) of one eval forward pass, per image.

    Lowered from shapes alone (jax.eval_shape), so no parameters are initialised for it.
    """
    import jax
    import jax.numpy as jnp

    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
    return _flops(compiled, batch)


def bench_jax(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from configs import default
    from train import optim, programs, steps
    from train.configuration import build_model, validate_config
    from train.data import memory

    size, b = IMAGE_SIZE[args.model], args.batch
    config = default.get_config()
    config.model = args.model
    config.num_classes = NUM_CLASSES[args.model]
    config.half_precision = args.dtype == "bfloat16"
    config.batch_size = config.eval_batch_size = b
    num_steps = 1_000_000
    mesh = steps.make_mesh()
    validate_config(config, mesh.size)
    model = common.smoke_model(args.model, jnp.dtype(args.dtype)) if args.smoke else build_model(config)
    if args.smoke:
        config.num_classes = model.num_classes
    tx = optim.create_optimizer(config, num_steps)
    replicated = NamedSharding(mesh, P())
    init_fn = functools.partial(steps.create_train_state, model=model, tx=tx, image_shape=(size, size, 3))
    init = common.compile_init(init_fn, jax.random.key(0))
    mean = jnp.asarray(config.mean, jnp.float32)
    std = jnp.asarray(config.std, jnp.float32)
    rng = np.random.default_rng(0)

    def images(n):
        return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)

    def labels(n):
        return rng.integers(0, config.num_classes, (n,), dtype=np.int32)

    out = {}
    # The bare step: the jitted train_step on one device-resident batch.
    step = common.jit_train_step(
        functools.partial(steps.train_step, mean=mean, std=std, pad=config.pad, flip=config.flip), mesh
    )
    batch = jax.device_put({"image": images(b), "label": labels(b)}, NamedSharding(mesh, P("data")))
    key = jax.device_put(jax.random.key(1), replicated)
    state = jax.device_put(init(jax.random.key(0)), replicated)
    # Compiled ahead of time so compilation is timed on its own and XLA's cost analysis comes free.
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    out["compile_s"] = time.perf_counter() - t0
    out["train_step_flops"] = _flops(compiled, b)
    holder = [state]
    del state  # donated by the first step

    def run_step(k):
        s = holder[0]
        for _ in range(k):
            s, _ = compiled(s, batch, key)
        holder[0] = jax.block_until_ready(s)

    t0 = time.perf_counter()
    run_step(1)
    out["first_step_s"] = out["compile_s"] + time.perf_counter() - t0
    run_step(args.warmup)

    # The whole program: train_and_evaluate's loop over the split held on device.
    n_train = args.train_examples or max(4 * b, 50_000 if args.model == "resnet20" else 0)
    n_eval_batches = args.steps
    train_data = memory.put_train(images(n_train), labels(n_train), mesh)
    eval_data = memory.put_eval(images(n_eval_batches * b), labels(n_eval_batches * b), b, mesh)
    data_key, aug_key = jax.random.split(jax.random.key(2))
    spec = {"kind": "mean_std", "mean": list(config.mean), "std": list(config.std)}
    pipeline = memory.InMemoryPipeline(
        train_data,
        eval_data,
        batch_size=b,
        data_key=data_key,
        preprocess=spec,
        num_classes=config.num_classes,
    )
    step_fn = functools.partial(steps.train_step, mean=mean, std=std, pad=config.pad, flip=config.flip)
    train_fn = programs.make_train_fn(step_fn, mesh, pipeline.device_batch, aug_key)
    eval_fn = programs.image_eval(mesh, mean, std)

    def run_train(state, sums):
        return train_fn(state, sums, (train_data.images, train_data.labels))[:2]

    def run_eval(state):
        return programs.evaluate(eval_fn, state, pipeline.eval_inputs())

    loop = {
        "state": jax.device_put(init(jax.random.key(0)), replicated),
        "sums": jax.device_put(programs.zero_sums(), replicated),
    }

    def run_program(k):
        # As train_and_evaluate: dispatch k steps, then the log step's device_get of the sums and reset.
        state, sums = loop["state"], loop["sums"]
        for _ in range(k):
            state, sums = run_train(state, sums)
        jax.device_get(sums)
        loop["state"], loop["sums"] = state, jax.device_put(programs.zero_sums(), replicated)
        jax.block_until_ready(loop["state"])

    run_program(1 + args.warmup)
    # Windows alternate (step, program, step, ...) so that load from other processes hits both alike.
    step_s, program_s = [], []
    for _ in range(args.windows):
        step_s += common.time_windows(run_step, args.steps, 1)
        program_s += common.time_windows(run_program, args.steps, 1)
    out["train_step"] = common.summarize(step_s, b)
    out["train_program"] = common.summarize(program_s, b)
    del holder[0]

    def run_eval_k(k):
        for _ in range(k):
            run_eval(loop["state"])  # returns host floats: already synchronised

    run_eval_k(1)
    per_split = common.time_windows(run_eval_k, 1, args.windows)
    out["eval"] = common.summarize([t / n_eval_batches for t in per_split], b)
    out["forward_flops_per_image"] = jax_forward_flops(model, b, size)
    out["devices"] = [str(d) for d in jax.devices()]
    return out


def _flops(compiled, b: int) -> float | None:
    """XLA's FLOP count of a compiled program, per image (None where XLA gives no count)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) / b if cost and "flops" in cost else None


def bench_torch(args, threads: int) -> dict:
    import torch
    import torch_ref

    common.torch_threads(threads)
    torch.manual_seed(0)
    size, b = IMAGE_SIZE[args.model], args.batch
    model = torch_ref.create(args.model)
    x = torch.randn(b, 3, size, size)
    y = torch.randint(0, NUM_CLASSES[args.model], (b,))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    train_step, eval_step = torch_ref.make_steps(model, args.dtype)
    out = {"torch_threads": torch.get_num_threads()}

    def run_train(k):
        for _ in range(k):
            train_step(x, y)

    def run_eval(k):
        for _ in range(k):
            eval_step(x)

    t0 = time.perf_counter()
    run_train(1)
    out["first_step_s"] = time.perf_counter() - t0
    run_train(args.warmup)
    out["train_step"] = common.summarize(common.time_windows(run_train, args.steps, args.windows), b)
    run_eval(max(args.warmup, 1))
    out["eval"] = common.summarize(common.time_windows(run_eval, args.steps, args.windows), b)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", choices=("jax", "torch"), required=True)
    p.add_argument("--model", choices=tuple(IMAGE_SIZE), required=True)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--batch", type=int, default=None, help="default: 128 (resnet20), 16 (resnet50)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed window (default 5 / 2)")
    p.add_argument("--windows", type=int, default=5, help="timed windows; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
    p.add_argument(
        "--threads", type=int, default=None, help="threads for XLA and PyTorch (default: all CPUs)"
    )
    p.add_argument("--train-examples", type=int, default=0, help="size of the synthetic training split")
    p.add_argument("--channels-last", action="store_true", help="PyTorch: channels_last memory format")
    p.add_argument("--smoke", action="store_true", help="tiny batch and one step per window")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch = args.batch or 2
        args.steps, args.windows, args.warmup = 1, 1, 0
        args.train_examples = args.train_examples or 4 * args.batch
    if args.batch is None:
        args.batch = 128 if args.model == "resnet20" else 16
    if args.steps is None:
        args.steps = 5 if args.model == "resnet20" else 2
    if args.batch < 1 or args.steps < 1 or args.windows < 1 or args.warmup < 0:
        p.error("--batch, --steps and --windows must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = common.pin_threads(args.threads)
    if args.framework == "jax":
        from resnet_jax.xla_flags import set_xla_cpu_defaults

        set_xla_cpu_defaults()  # as `python -m train` runs: its XLA:CPU defaults unless XLA_FLAGS sets them
    load_before = common.loadavg()
    t0 = time.perf_counter()
    out = bench_jax(args) if args.framework == "jax" else bench_torch(args, threads)
    record = {
        "kind": "model",
        "framework": args.framework,
        "model": args.model,
        "dtype": args.dtype,
        "batch": args.batch,
        "image_size": IMAGE_SIZE[args.model],
        "threads": threads,
        "xla_flags": os.environ.get("XLA_FLAGS", "") if args.framework == "jax" else None,
        "channels_last": args.channels_last,
        "smoke": args.smoke,
        "steps": args.steps,
        "windows": args.windows,
        **out,
        "peak_rss_mib": common.peak_rss_mib(),
        "loadavg_before": load_before,
        "loadavg_after": common.loadavg(),
        "wall_s": time.perf_counter() - t0,
        "versions": common.versions(),
    }
    program = f", program {out['train_program']['img_s']:.1f}" if "train_program" in out else ""
    print(
        f"{args.framework} {args.model} {args.dtype} batch {args.batch}: train step "
        f"{out['train_step']['img_s']:.1f} img/s{program}, eval {out['eval']['img_s']:.1f} img/s, "
        f"first step {out['first_step_s']:.1f} s, peak {record['peak_rss_mib']:.0f} MiB, "
        f"load {load_before} -> {record['loadavg_after']}",
        flush=True,
    )
    common.emit(record)


if __name__ == "__main__":
    main()
