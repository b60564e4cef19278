"""Multi-host training: 2 JAX processes x 4 CPU devices give the run 1 process x 8 devices gives.

Each process is a real `python -m train` started on localhost with `jax.distributed` (CPU collectives
over gloo). The reference is one process with 8 devices; a checkpoint written by the 2-process run is
resumed by a 1-process run. The streaming (grain) folder path is checked the same way.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from resnet_jax.checkpoint import load_checkpoint
from train import metrics as metrics_lib

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir, data_dir, *extra, config="smoke.py"):
    return [
        sys.executable,
        "-m",
        "train",
        "--config",
        str(REPO / "configs" / config),
        "--workdir",
        str(workdir),
        "--config.dataset=fake_cifar",
        f"--config.data_dir={data_dir}",
        "--config.num_train_steps=2",
        "--config.eval_every_steps=1",
        # On random images and labels, float rounding of a different reduction order grows about 10x
        # a step at lr 0.01 (40x at 0.1), even between 1 and 8 devices of one process; two steps at
        # lr 0.01 keep the comparison about sharding (measured: ~3e-7 after one step).
        "--config.learning_rate=0.01",
        *extra,
    ]


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return env


def _run_single(workdir, data_dir, *extra, devices=8, config="smoke.py"):
    out = subprocess.run(
        _command(workdir, data_dir, *extra, config=config),
        env=_env(devices),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _start_two_processes(workdir, data_dir, *extra, config="smoke.py"):
    """Two processes of 4 devices each, one coordinator, started (not waited for)."""
    port = _free_port()
    return [
        subprocess.Popen(
            _command(
                workdir,
                data_dir,
                "--config.distributed=True",
                f"--config.coordinator_address=127.0.0.1:{port}",
                "--config.num_processes=2",
                f"--config.process_id={i}",
                *extra,
                config=config,
            ),
            env=_env(4),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _run_two_processes(workdir, data_dir, *extra, config="smoke.py"):
    procs = _start_two_processes(workdir, data_dir, *extra, config=config)
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S))
    finally:
        for p in procs:
            p.kill()
    for p, (_, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stderr[-3000:]
    return outputs


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("single")
    _run_single(workdir, data_dir)
    return workdir


def _assert_close(a, b, atol=1e-5):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


def _metrics(workdir):
    return metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))


def test_two_processes_train_like_one_process_with_all_devices(tmp_path, data_dir, single_run):
    workdir = tmp_path / "two"
    (out0, _), (out1, _) = _run_two_processes(workdir, data_dir)
    assert "final: test accuracy" in out0 and "final: test accuracy" not in out1  # process 0 reports
    _, ref = load_checkpoint(str(single_run))
    _, got = load_checkpoint(str(workdir))
    _assert_close(ref, got)
    ref_test = [r for r in _metrics(single_run) if r["split"] == "test"]
    got_test = [r for r in _metrics(workdir) if r["split"] == "test"]
    assert [r["step"] for r in got_test] == [1, 2]
    assert [r["examples"] for r in got_test] == [20, 20]  # every test example counted once
    for r, g in zip(ref_test, got_test, strict=True):
        assert g["accuracy"] == pytest.approx(r["accuracy"], abs=1e-6)
        assert g["loss"] == pytest.approx(r["loss"], abs=1e-4)
    # Only process 0 writes metrics: one line per (step, split), no duplicates from process 1.
    assert len(_metrics(workdir)) == len(_metrics(single_run))
    # ...and TensorBoard events: one writer, one events file.
    assert len([f for f in os.listdir(workdir / "tensorboard") if f.startswith("events.out")]) == 1


def test_one_process_resumes_a_two_process_checkpoint(tmp_path, data_dir, single_run):
    workdir = tmp_path / "resume"
    _run_two_processes(workdir, data_dir, "--config.stop_after_steps=1")
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())[-1] == 1
    out = _run_single(workdir, data_dir)
    assert "resuming from" in out.stdout
    _, ref = load_checkpoint(str(single_run))
    _, got = load_checkpoint(str(workdir))
    _assert_close(ref, got)


def test_sigterm_to_one_process_stops_every_process_at_the_same_step(tmp_path, data_dir):
    import signal
    import time

    workdir = tmp_path / "preempted"
    extra = ["--config.num_train_steps=5000", "--config.eval_every_steps=-1", "--config.log_every_steps=1",
             "--config.checkpoint_every_steps=2500"]  # fmt: skip
    procs = _start_two_processes(workdir, data_dir, *extra)
    try:
        deadline = time.time() + TIMEOUT_S
        metrics = workdir / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)  # a preemption notice reaches one host only
        outputs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, outputs[0][1][-2000:]
    stopped_at = int(outputs[0][0].split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert stopped_at < 5000
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == stopped_at  # one collective save, at the step both processes agreed on


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from tests.helpers import write_image_folder

    root = tmp_path_factory.mktemp("folder")
    write_image_folder(root)
    return root


def _folder_args(root):
    return (
        "--config.pipeline=grain",
        "--config.data_source=folder",
        f"--config.train_dir={root / 'train'}",
        f"--config.eval_dir={root / 'test'}",
        "--config.num_classes=4",
        "--config.train_transform=pad_crop_flip",
        "--config.eval_transform=none",
    )


def test_streaming_folder_two_processes_train_like_one_process(tmp_path, data_dir, image_folder):
    # Each process reads and augments only its rows of every batch (streaming.py); together they
    # must give the batches, hence the parameters, of one process reading them all.
    single, two = tmp_path / "single", tmp_path / "two"
    _run_single(single, data_dir, *_folder_args(image_folder))
    _run_two_processes(two, data_dir, *_folder_args(image_folder))
    _, ref = load_checkpoint(str(single))
    meta, got = load_checkpoint(str(two))
    _assert_close(ref, got)
    assert tuple(meta.class_names) == ("cat", "dog", "frog", "ship")
    got_test = [r for r in _metrics(two) if r["split"] == "test"]
    assert [r["examples"] for r in got_test] == [20, 20]  # every test example counted once


@pytest.mark.parametrize("pipeline", ["memory", "folder"])
def test_cached_features_on_several_devices_and_processes_train_the_head_of_one_device(
    tmp_path, data_dir, image_folder, pipeline
):
    """A frozen fine-tune with cached features (configs/finetune_cifar10.py, pad 0) builds its feature
    table with collectives on 8 devices and on 2 processes x 4 devices (unbounded dispatch used to time
    out there), and trains the same head as 1 process with 1 device."""
    from tests.helpers import backbone_checkpoint

    backbone, _ = backbone_checkpoint(
        tmp_path / "backbone", {"kind": "mean_std", "mean": [0.5] * 3, "std": [0.25] * 3}
    )
    extra = [f"--config.init_checkpoint={backbone}", "--config.pad=0", "--config.num_epochs=-1",
             "--config.batch_size=16", "--config.eval_batch_size=16", "--config.num_classes=0"]  # fmt: skip
    if pipeline == "folder":
        extra += [
            *_folder_args(image_folder)[:-3],
            "--config.train_transform=none",
            "--config.eval_transform=none",
        ]
    ft = "finetune_cifar10.py"
    one, eight, two = tmp_path / "one", tmp_path / "eight", tmp_path / "two"
    out = _run_single(one, data_dir, *extra, devices=1, config=ft)
    assert "features not cached" not in out.stdout + out.stderr
    _run_single(eight, data_dir, *extra, config=ft)
    _run_two_processes(two, data_dir, *extra, config=ft)
    _, ref = load_checkpoint(str(one))
    for workdir in (eight, two):
        _, got = load_checkpoint(str(workdir))
        _assert_close(ref, got)
        assert "head_img_per_sec" in (workdir / "metrics.jsonl").read_text()  # the head steps ran
