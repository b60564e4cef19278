"""What bounding dispatch costs: the training loop's step program run k steps ahead of the device at most.

  python bench/dispatch.py [--model resnet20] [--batch 128] [--steps 200] [--rounds 3]

The loop (train/run_state.py) waits for step s - k before dispatching step s + 1, so the progress bar
counts finished steps and a stop request is answered within k steps. This runs the same compiled
program (programs.make_train_fn over an in-memory split of random CIFAR-sized images) with k = 2 (the
default `max_steps_ahead`) and k = unbounded, alternating rounds so that load from other processes
affects both alike, and prints img/s of each and their ratio.
"""

import argparse
import collections
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train/ comes from the checkout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from configs import cifar10_fast
    from train import optim, programs, steps
    from train.configuration import build_model
    from train.data import memory

    config = cifar10_fast.get_config()
    config.model, config.batch_size = args.model, args.batch
    mesh = steps.make_mesh()
    rng = np.random.default_rng(0)
    n = 50_000
    data = memory.put_train(
        rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32), mesh
    )
    data_key, aug_key = jax.random.split(jax.random.key(0))
    spec = {"kind": "mean_std", "mean": list(config.mean), "std": list(config.std)}
    pipeline = memory.InMemoryPipeline(
        data, data, batch_size=args.batch, data_key=data_key, preprocess=spec, num_classes=10
    )
    model = build_model(config)
    tx = optim.create_optimizer(config, 10 * args.steps)
    replicated = NamedSharding(mesh, P())
    state = jax.jit(
        functools.partial(steps.create_train_state, model=model, tx=tx, image_shape=(32, 32, 3)),
        out_shardings=replicated,
    )(jax.random.key(1))
    mean, std = (jax.numpy.asarray(spec[k]) for k in ("mean", "std"))
    step_fn = functools.partial(steps.train_step, mean=mean, std=std, pad=config.pad, flip=config.flip)
    run = programs.make_train_fn(step_fn, mesh, pipeline.device_batch, aug_key)
    holder = {"state": state, "sums": jax.device_put(programs.zero_sums(), replicated)}

    def loop(steps: int, ahead: int | None) -> float:
        pending: collections.deque = collections.deque()
        start = time.perf_counter()
        for _ in range(steps):
            holder["state"], holder["sums"], done = run(
                holder["state"], holder["sums"], (data.images, data.labels)
            )
            pending.append(done)
            if ahead is not None and len(pending) > ahead:
                jax.block_until_ready(pending.popleft())
        jax.device_get(holder["sums"])
        return steps * args.batch / (time.perf_counter() - start)

    loop(5, None)  # compile
    rates = {2: [], None: []}
    for _ in range(args.rounds):
        for ahead in (2, None):
            rates[ahead].append(loop(args.steps, ahead))
    bounded, unbounded = (float(np.median(rates[k])) for k in (2, None))
    print(
        f"{args.model} batch {args.batch} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{args.steps} steps x {args.rounds} rounds: max_steps_ahead=2 {bounded:.1f} img/s, unbounded "
        f"{unbounded:.1f} img/s, ratio {bounded / unbounded:.3f} (rounds: {rates[2]} / {rates[None]})"
    )


if __name__ == "__main__":
    main()
