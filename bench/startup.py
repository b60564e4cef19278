"""Seconds from `python -m train ...` to the end of the first training step, cold and warm cache.

  python bench/startup.py                       # resnet20 (32x32, batch 16) and resnet50 (224x224, batch 8)
  python bench/startup.py --models resnet20 --runs 1

Each run starts `python -m train` in a fresh process on a small fake dataset (train/data/testing.py) with
`log_every_steps=1` and stops it as soon as metrics.jsonl holds the first training record, which the
program writes after step 1 has finished. Per model: `off` (RESNET_JAX_CACHE_DIR=off), `cold` (an empty
cache directory) and `warm` (the same directory again, as a rerun finds it).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # train/ from the checkout (it is not installed)

SETTINGS = {"resnet20": {"size": 32, "batch": 16}, "resnet50": {"size": 224, "batch": 8}}


def time_to_first_step(model: str, data_dir: str, dataset: str, cache: str, timeout: float = 600) -> float:
    """Seconds from starting the command to the first 'train' line in its metrics.jsonl."""
    s = SETTINGS[model]
    workdir = tempfile.mkdtemp(prefix="startup_")
    cmd = [
        sys.executable, "-m", "train", "--config", "configs/smoke.py", f"--workdir={workdir}",
        f"--config.model={model}", f"--config.dataset={dataset}", f"--config.data_dir={data_dir}",
        f"--config.batch_size={s['batch']}", f"--config.eval_batch_size={s['batch']}",
        "--config.num_train_steps=1000", "--config.log_every_steps=1", "--config.eval_every_steps=-1",
        "--config.checkpoint_every_steps=1000",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(RESNET_JAX_CACHE_DIR=cache, JAX_PLATFORMS="cpu")
    metrics = Path(workdir) / "metrics.jsonl"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while time.perf_counter() - start < timeout:
            if metrics.exists() and '"train"' in metrics.read_text():
                return time.perf_counter() - start
            if proc.poll() is not None:
                raise RuntimeError(f"{model}: the run exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{model}: no training step within {timeout} s")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--runs", type=int, default=1, help="repetitions of each (off, cold, warm) triple")
    kinds = ["off", "cold", "warm"]
    parser.add_argument("--caches", nargs="+", default=kinds, choices=kinds, help="which runs to make")
    args = parser.parse_args(argv)

    from train.data.testing import write_fake_dataset

    data_dir = tempfile.mkdtemp(prefix="startup_data_")
    print("| model | image, batch | cache | seconds to the first step | load average (1 min) |")
    print("| --- | --- | --- | --- | --- |")
    for model in args.models:
        s = SETTINGS[model]
        name = write_fake_dataset(
            data_dir, f"fake_{model}", num_train=2 * s["batch"], num_test=s["batch"],
            image_shape=(s["size"], s["size"], 3),
        )  # fmt: skip
        for _ in range(args.runs):
            cache = tempfile.mkdtemp(prefix="startup_cache_")
            for label, setting in (("off", "off"), ("cold", cache), ("warm", cache)):
                if label not in args.caches:
                    continue
                seconds = time_to_first_step(model, data_dir, name, setting)
                size = f"{s['size']}x{s['size']}, {s['batch']}"
                load = os.getloadavg()[0]
                print(f"| {model} | {size} | {label} | {seconds:.1f} | {load:.1f} |", flush=True)


if __name__ == "__main__":
    main()
