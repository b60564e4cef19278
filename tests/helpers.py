"""Helpers shared by the run tests: configs over the fake dataset, saved states, run comparisons, backbones.

Fixtures live in conftest.py (`data_dir`, the session's `compilation_cache`); these are plain functions.
"""

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from configs import finetune_cifar10, smoke
from resnet_jax import create_model
from resnet_jax.checkpoint import make_meta, save_checkpoint
from train import finetune, optim, steps
from train import metrics as metrics_lib
from train.configuration import build_model

REPO = Path(__file__).resolve().parents[1]


def smoke_config(data_dir, **overrides):
    """configs/smoke.py (12 steps of ResNet-20) over the `data_dir` fixture's fake_cifar."""
    c = smoke.get_config()
    c.dataset, c.data_dir = "fake_cifar", str(data_dir)
    for k, v in overrides.items():
        c[k] = v
    return c


def smoke_command(workdir, data_dir, *flags):
    """`python -m train` with configs/smoke.py over the `data_dir` fixture's fake_cifar, logging each step."""
    config = str(REPO / "configs" / "smoke.py")
    return [sys.executable, "-m", "train", "--config", config, f"--workdir={workdir}",
            "--config.dataset=fake_cifar", f"--config.data_dir={data_dir}", "--config.log_every_steps=1",
            *flags]  # fmt: skip


def start_training(command, workdir, env):
    """Starts `command` (stdout and stderr together, text) and returns it once it has logged a step."""
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    metrics_file = Path(workdir) / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics_file.exists() and metrics_file.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    return proc


def saved_state(workdir, step=12):
    """Everything a run saved at `step` (params, batch_stats, opt_state, step, train_sums), as saved."""
    return ocp.StandardCheckpointer().restore(Path(workdir) / "checkpoints" / str(step) / "state")


def logged(workdir):
    """metrics.jsonl without the wall-clock throughput: every other value must be reproducible."""
    return [
        {k: v for k, v in r.items() if k != "img_per_sec"}
        for r in metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    ]


def assert_same_run(workdir_a, workdir_b, step=12):
    """Both runs saved bitwise the same state at `step` and logged the same values."""
    a, b = saved_state(workdir_a, step), saved_state(workdir_b, step)
    for key in ("params", "batch_stats", "opt_state", "step"):
        for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key]), strict=True):
            np.testing.assert_array_equal(x, y, err_msg=key)
    assert logged(workdir_a) == logged(workdir_b)


def backbone_checkpoint(directory, spec, *, origin="resnet-jax", **model_kwargs):
    """A resnet20 checkpoint (10 classes) with non-trivial BatchNorm statistics: (path, variables)."""
    model = create_model("resnet20", **model_kwargs)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    stats = jax.tree.map(lambda x: x + 0.25, variables["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": stats}
    meta = make_meta("resnet20", model, preprocess=spec, origin=origin, step=0)
    return save_checkpoint(directory, variables, meta), variables


def finetune_config(init_checkpoint, **overrides):
    """configs/finetune_cifar10.py from `init_checkpoint` to 5 classes, batches of 8."""
    config = finetune_cifar10.get_config()
    config.init_checkpoint = str(init_checkpoint)
    config.num_classes = 5
    config.batch_size = config.eval_batch_size = 8
    for k, v in overrides.items():
        config[k] = v
    return config


def finetune_state(config, image_size=32):
    """(resolved config, a fresh train state initialised from the config's init checkpoint)."""
    config, init, policy = finetune.resolve_config(config)
    tx = finetune.wrap_optimizer(config, policy, optim.create_optimizer(config, config.num_train_steps))
    state = steps.create_train_state(jax.random.key(1), build_model(config), tx, (image_size,) * 2 + (3,))
    return config, finetune.initialize(policy, state, init)


CLASSES = ("cat", "dog", "frog", "ship")


def write_image_folder(root: Path, num_train: int = 64, num_test: int = 20, seed: int = 0) -> None:
    """root/train/<class>/<i>.png and root/test/<class>/<i>.png: random 32x32 RGB images, 4 classes."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", num_train), ("test", num_test)):
        for i in range(n):
            folder = root / split / CLASSES[i % len(CLASSES)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def encode_image(arr: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image (JPEG-friendly, so decode paths can be compared closely)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    phase = np.random.default_rng(seed).uniform(0, 6, 3)
    return np.stack([127 + 100 * np.sin(4 * x + 3 * y + p) for p in phase], -1).astype(np.uint8)
