"""GPU benchmark (one GPU, under 8 minutes): our training and eval throughput next to PyTorch's.

    python bench/gpu.py                  # on a machine with one CUDA GPU
    python bench/gpu.py --smoke          # tiny stand-in models on CPU: checks the script runs

Prints one markdown table:
  - resnet50 224x224 bf16 training img/s, batch 256: the project's jitted train step
    (train.steps.train_step: uint8 batch on device, crop/flip/normalise, forward, backward, SGD momentum
    + weight decay), synthetic data;
  - resnet50 224x224 bf16 eval img/s, batch 256;
  - resnet20 CIFAR training img/s, batch 128, with the whole uint8 training split on the device: the
    training loop's own per-step program (batch selection + augmentation + step), float32 and bf16;
  - torchvision resnet50, bf16 autocast (AMP) and channels_last, batch 256, training and eval, same GPU
    (bench/gpu_torch.py).

Imports only jax, flax, optax, numpy, resnet_jax and train.train / train.data.memory / train.optim
(none of which imports tensorflow, tensorflow_datasets or ml_collections at module level), and
torch/torchvision in a separate process.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from gpu_torch import bench_torch, median_rate  # noqa: E402  (bench/ is on the path from here on)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The project's default optimiser settings (configs/default.py), without importing ml_collections.
OPTIM = dict(
    learning_rate=0.1,
    momentum=0.9,
    nesterov=False,
    weight_decay=1e-4,
    weight_decay_on="kernels",
    schedule="constant",
    warmup_steps=0,
    warmup="linear",
    warmup_lr=0.0,
    lr_boundaries=(),
    lr_decay_factor=0.1,
    label_smoothing=0.0,
)


# ------------------------------------------------------------------------------------------------ JAX


def jax_models(smoke: bool):
    """{name: (flax module, image size, batch)}; --smoke swaps in tiny models of the same block types."""
    import jax.numpy as jnp

    import resnet_jax

    if smoke:
        import common

        r20 = functools.partial(common.smoke_model, "resnet20")
        return {"resnet50": (common.smoke_model("resnet50", jnp.bfloat16), 64, 2), "resnet20": (r20, 32, 2)}
    r20 = functools.partial(resnet_jax.create_model, "resnet20")
    return {
        "resnet50": (resnet_jax.create_model("resnet50", dtype=jnp.bfloat16), 224, 256),
        "resnet20": (r20, 32, 128),
    }


def load_steps() -> dict:
    """The project's JAX pieces (train.steps and train.optim import neither tensorflow nor ml_collections)."""
    import common

    from train import optim, steps

    return dict(
        train_step=steps.train_step,
        jit=common.jit_train_step,
        create_state=steps.create_train_state,
        create_optimizer=optim.create_optimizer,
        label="project step (train.steps.train_step)",
    )


def _state(steps: dict, model, size: int, batch: int, mesh):
    """(config, train state) with the project's optimiser for `model` on size x size images."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    config = SimpleNamespace(**OPTIM, batch_size=batch, pad=4, flip=True, eval_hflip=False)
    tx = steps["create_optimizer"](config, 1_000_000)
    init = functools.partial(steps["create_state"], model=model, tx=tx, image_shape=(size, size, 3))
    import common

    state = common.compile_init(init, jax.random.key(0))(jax.random.key(0))
    return config, jax.device_put(state, NamedSharding(mesh, P()))


def jax_resnet50(args, steps: dict, mesh, rng) -> list[dict]:
    """resnet50 bf16: the bare jitted train step, then eval, on one device-resident synthetic batch."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from resnet_jax.preprocess import normalize

    model, size, b = jax_models(args.smoke)["resnet50"]
    _, state = _state(steps, model, size, b, mesh)
    mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)
    step = steps["jit"](functools.partial(steps["train_step"], mean=mean, std=std, pad=4, flip=True), mesh)
    images = rng.integers(0, 256, (b, size, size, 3), dtype="uint8")
    labels = rng.integers(0, model.num_classes, (b,), dtype="int32")
    batch = jax.device_put({"image": images, "label": labels}, NamedSharding(mesh, P("data")))
    key = jax.device_put(jax.random.key(1), NamedSharding(mesh, P()))
    holder = {"state": state}
    del state  # donated by the first step

    def run_step(k):
        s = holder["state"]
        for _ in range(k):
            s, _ = step(s, batch, key)
        holder["state"] = jax.block_until_ready(s)

    @jax.jit
    def evaluate(state, images):
        x = normalize(images, mean, std)
        return state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)

    def run_eval(k):
        for _ in range(k):
            out = evaluate(holder["state"], batch["image"])
        jax.block_until_ready(out)

    t0 = time.perf_counter()
    run_step(1)
    first = time.perf_counter() - t0
    run_step(args.warmup)
    train = median_rate(run_step, b, args.steps, args.windows)
    run_eval(1 + args.warmup)
    common = {"fw": "jax", "batch": b, "size": size}
    return [
        {"what": "resnet50 train (bf16, bare jitted step)", **common, "img_s": train, "first_step_s": first},
        {
            "what": "resnet50 eval (bf16)",
            **common,
            "img_s": median_rate(run_eval, b, args.steps, args.windows),
        },
    ]


def jax_resnet20(args, steps: dict, mesh, data, dtype: str) -> dict:
    """resnet20: the training loop's per-step program over the uint8 split `data` held on the device."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    make, size, b = jax_models(args.smoke)["resnet20"]
    config, state = _state(steps, make(dtype=jnp.dtype(dtype)), size, b, mesh)
    mean, std = jnp.asarray(CIFAR_MEAN), jnp.asarray(CIFAR_STD)
    from train import programs
    from train.data import memory

    data_key, aug_key = jax.random.split(jax.random.key(2))
    spec = {"kind": "mean_std", "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}
    pipeline = memory.InMemoryPipeline(
        data, data, batch_size=b, data_key=data_key, preprocess=spec, num_classes=10
    )
    step_fn = functools.partial(steps["train_step"], mean=mean, std=std, pad=config.pad, flip=config.flip)
    train_fn = programs.make_train_fn(step_fn, mesh, pipeline.device_batch, aug_key)
    rep = NamedSharding(mesh, P())

    def zeros():  # fresh each time: the program donates its sums
        return jax.device_put(programs.zero_sums(), rep)

    loop = {"state": state, "sums": zeros()}
    del state

    def run_program(k):
        s, sums = loop["state"], loop["sums"]
        for _ in range(k):
            s, sums, _ = train_fn(s, sums, (data.images, data.labels))
        jax.device_get(sums)  # the loop's log-step sync
        loop["state"], loop["sums"] = jax.block_until_ready(s), zeros()

    t0 = time.perf_counter()
    run_program(1)
    first = time.perf_counter() - t0
    run_program(args.warmup)
    n = args.steps * (1 if args.smoke else 4)  # small steps: longer windows
    return {
        "what": f"resnet20 CIFAR train ({dtype}, data on device, training loop)",
        "fw": "jax",
        "batch": b,
        "size": size,
        "img_s": median_rate(run_program, b, n, args.windows),
        "first_step_s": first,
    }


def bench_jax(args) -> list[dict]:
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from train.data import memory

    steps = load_steps()
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    rng = np.random.default_rng(0)
    rows = jax_resnet50(args, steps, mesh, rng)
    _, size, b = jax_models(args.smoke)["resnet20"]
    n = 4 * b if args.smoke else 50_000
    data = memory.put_train(
        rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        rng.integers(0, 10, (n,), dtype=np.int32),
        mesh,
    )
    dtypes = ("float32",) if args.smoke else ("float32", "bfloat16")  # smoke: the same code, once
    rows += [jax_resnet20(args, steps, mesh, data, dtype) for dtype in dtypes]
    for r in rows:
        r["step"] = steps["label"]
        r["device"] = str(jax.devices()[0].device_kind)
    return rows


# ---------------------------------------------------------------------------------------------- PyTorch


# ----------------------------------------------------------------------------------------------- driver


def table(rows: list[dict]) -> str:
    out = ["| benchmark | framework | batch | image | img/s | first step s |", "|---|---|---|---|---|---|"]
    for r in rows:
        first = f"{r['first_step_s']:.1f}" if "first_step_s" in r else "-"
        out.append(f"| {r['what']} | {r['fw']} | {r['batch']} | {r['size']} | {r['img_s']:.0f} | {first} |")
    ours = next((r for r in rows if r["what"].startswith("resnet50 train")), None)
    theirs = next((r for r in rows if r["what"].startswith("torchvision resnet50 train")), None)
    if ours and theirs:
        out.append("")
        out.append(
            f"resnet50 training, ours / PyTorch AMP channels_last: {ours['img_s'] / theirs['img_s']:.2f}"
        )
        out.append(
            "Published anchors: NVIDIA PyTorch ResNet-50 AMP 2,470 img/s (one A100-80GB); "
            "MLPerf 8xH100 ~7,000 img/s per H100 (DALI, fused kernels)."
        )
    devices = sorted({r["device"] for r in rows})
    steps = sorted({r["step"] for r in rows if "step" in r})
    out.append(f"Device: {', '.join(devices)}. JAX train step: {', '.join(steps)}.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--part",
        choices=("all", "jax", "torch"),
        default="all",
        help="all: run the jax and torch parts in separate processes (each frees its GPU memory)",
    )
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--windows", type=int, default=5, help="timed windows (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny stand-in models, batch 2, on CPU")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.windows, args.warmup = 1, 1, 0
        os.environ["JAX_PLATFORMS"] = "cpu"
    if args.part == "jax":
        print("GPU_JSON " + json.dumps(bench_jax(args)), flush=True)
        return
    if args.part == "torch":
        print("GPU_JSON " + json.dumps(bench_torch(args)), flush=True)
        return
    rows, t0 = [], time.perf_counter()
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--part")]
    for part in ("jax", "torch"):
        proc = subprocess.run(
            [sys.executable, __file__, "--part", part, *passthrough], capture_output=True, text=True
        )
        if proc.returncode != 0:
            sys.exit(f"bench/gpu.py --part {part} failed:\n{proc.stdout}\n{proc.stderr}")
        for line in proc.stdout.splitlines():
            if line.startswith("GPU_JSON "):
                rows += json.loads(line[len("GPU_JSON ") :])
            else:
                print(line)
    print(table(rows))
    print(f"Total wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
