"""Full training program img/s against the bare jitted train step's img/s, in one process.

  python bench/throughput.py --config configs/cifar10_fast.py --config.data_dir=/work/data/tfds

"Bare step": `train_step` alone under `jax.jit` on one fixed batch already on the devices (no batch
selection, no host loop, no logging or checkpoints). "Full program": `train_and_evaluate` itself, whose
logged img/s per logging window covers batch selection and augmentation on device, the host loop,
the progress bar, metric writes and asynchronous checkpoints (the first window, which compiles, is
left out). The two are measured alternately (bare, full, bare) so that load from other processes
affects both alike.

With --config.pipeline=grain the full program streams its batches (decoded and augmented on the host,
put on the devices by a background thread), and the bare step is the step that program runs (no
on-device crop or flip):

  python bench/throughput.py --config configs/cifar10_resnet20.py --config.pipeline=grain \
    --config.data_source=folder --config.train_dir=DIR/train --config.eval_dir=DIR/test
"""

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# train/ and configs/ come from the checkout (they are not installed): the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_integer("steps", 30, "Training steps per measurement.")
flags.mark_flags_as_required(["config"])


def bare_step_img_per_sec(config, num_steps: int) -> float:
    """img/s of the jitted train step alone on a fixed device-resident batch (after one warm-up call)."""
    import common
    import jax
    import jax.numpy as jnp
    import numpy as np

    from train import optim, steps
    from train.configuration import build_model

    mesh = steps.make_mesh()
    model = build_model(config)
    state = steps.create_train_state(
        jax.random.PRNGKey(0), model, optim.create_optimizer(config, 1000), (32, 32, 3)
    )
    mean, std = jnp.asarray(config.mean, jnp.float32), jnp.asarray(config.std, jnp.float32)
    step = common.jit_train_step(
        lambda s, b, r: steps.train_step(
            s,
            b,
            r,
            mean=mean,
            std=std,
            # The streaming pipeline augments on the host, so its program's step does not.
            pad=config.pad if config.pipeline == "memory" else 0,
            flip=config.flip and config.pipeline == "memory",
            label_smoothing=config.label_smoothing,
        ),
        mesh,
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (config.batch_size, 32, 32, 3), dtype=np.uint8),
        "label": rng.integers(0, config.num_classes, config.batch_size).astype(np.int32),
    }
    batch = jax.device_put(batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    key = jax.random.PRNGKey(1)
    state, m = step(state, batch, key)
    jax.block_until_ready(m)
    start = time.perf_counter()
    for _ in range(num_steps):
        state, m = step(state, batch, key)
    jax.block_until_ready(m)
    return num_steps * config.batch_size / (time.perf_counter() - start)


def full_program_img_per_sec(config, steps: int) -> float:
    """Mean logged img/s of train_and_evaluate over its logging windows after the first."""
    from train import metrics, train

    config.num_train_steps = steps
    config.eval_every_steps = -1
    config.progress_bar = True
    with tempfile.TemporaryDirectory() as workdir:
        train.train_and_evaluate(config, workdir)
        rows = [
            r for r in metrics.read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"
        ]
    rates = [r["img_per_sec"] for r in rows[1:]]
    return sum(rates) / len(rates)


def main(argv):
    from resnet_jax.xla_flags import set_xla_cpu_defaults

    del argv
    set_xla_cpu_defaults()  # as `python -m train` runs: its XLA:CPU defaults unless XLA_FLAGS sets them
    logging.set_verbosity(logging.WARNING)
    config = FLAGS.config
    bare_a = bare_step_img_per_sec(config, FLAGS.steps)
    full = full_program_img_per_sec(config, FLAGS.steps)
    bare_b = bare_step_img_per_sec(config, FLAGS.steps)
    bare = (bare_a + bare_b) / 2
    print(
        f"{config.model} batch {config.batch_size}: bare step {bare:.1f} img/s ({bare_a:.1f}, {bare_b:.1f}); "
        f"full program {full:.1f} img/s = {100 * full / bare:.1f}% of the bare step",
        file=sys.stdout,
        flush=True,
    )


if __name__ == "__main__":
    app.run(main)
