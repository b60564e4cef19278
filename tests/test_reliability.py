"""Never lose the good weights: retention across restarts, divergence, corruption, bad input, signals.

Each test makes the fault happen and then asserts on what is on disk and on the exit status.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import resnet_jax
from resnet_jax.checkpoint import CheckpointError, RunCheckpoints
from tests.helpers import smoke_command, smoke_config, start_training
from train import metrics as metrics_lib
from train import train
from train.configuration import ConfigError
from train.data.testing import write_fake_dataset
from train.data.tfds_data import DatasetUnavailableError

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"

REPO = Path(__file__).resolve().parents[1]


def all_finite(tree):
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


def test_best_checkpoint_survives_two_restarts(data_dir, tmp_path):
    # keep_checkpoints=1: only the latest and the best stay. Evaluations at every 2 steps.
    c = dict(keep_checkpoints=1, eval_every_steps=2, checkpoint_every_steps=2)
    for stop in (4, 8, -1):  # two restarts
        train.train_and_evaluate(smoke_config(data_dir, stop_after_steps=stop, **c), str(tmp_path))
    tests = [r for r in metrics_lib.read_metrics(str(tmp_path / "metrics.jsonl")) if r["split"] == "test"]
    best = max(r["accuracy"] for r in tests)
    kept = RunCheckpoints(str(tmp_path), 1).all_steps()
    kept_accuracy = {r["step"]: r["accuracy"] for r in tests if r["step"] in kept}
    assert 12 in kept and best in kept_accuracy.values(), (kept, tests)
    assert len(kept) <= 2
    # The best is known from disk alone (saved with each checkpoint), as a new process would see it.
    assert kept_accuracy[RunCheckpoints(str(tmp_path), 1).best_step()] == best


def _flip_bytes(step_dir):
    data = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
                  key=lambda p: p.stat().st_size)[-1]  # fmt: skip
    raw = bytearray(data.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(255 - b for b in raw[middle : middle + 64])
    data.write_bytes(bytes(raw))


def test_flipped_bytes_in_a_saved_array_are_detected_on_load(tmp_path):
    model = resnet_jax.create_model("resnet20")
    variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
    meta = resnet_jax.checkpoint.make_meta(
        "resnet20", model, preprocess={"kind": "mean_std", "mean": [0.5] * 3, "std": [0.25] * 3},
        origin="resnet-jax", step=0,
    )  # fmt: skip
    path = resnet_jax.save_checkpoint(tmp_path / "0", variables, meta)
    resnet_jax.load_checkpoint(path)  # intact: loads
    _flip_bytes(Path(path))
    with pytest.raises(
        CheckpointError, match=r"unusable: (its content does not match its checksums|cannot read)"
    ):
        resnet_jax.load_checkpoint(path)


def test_bad_input_leaves_the_workdir_untouched(data_dir, tmp_path):
    workdir = tmp_path / "run"
    train.train_and_evaluate(smoke_config(data_dir, stop_after_steps=4), str(workdir))
    snapshot = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    # The type decides the exit status: these are the ones the CLI turns into one `error:` line and exit 1.
    bad = [
        (dict(data_dir=str(tmp_path / "nothing")), DatasetUnavailableError, "holds no prepared copy"),
        (dict(dataset="no_such_dataset"), DatasetUnavailableError, "unknown tfds dataset"),
        (dict(num_classes=5), DatasetUnavailableError, "num_classes=5 but fake_cifar has 10 classes"),
        (
            dict(model="resnet32"),
            CheckpointError,
            r"do not fit this config \(fields that differ from its config.json: .*model",
        ),
        (dict(learning_rate=-1.0), ConfigError, "learning_rate=-1.0 must be > 0"),
    ]
    for overrides, error, message in bad:
        with pytest.raises(error, match=message) as e:
            c = smoke_config(data_dir)
            c.update(overrides)
            train.train_and_evaluate(c, str(workdir))
        assert "delete" not in str(e.value), "never advise deleting a good checkpoint"
        assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == snapshot, overrides
    # A fresh workdir given bad input is not even created.
    with pytest.raises(DatasetUnavailableError, match="num_classes=5"):
        train.train_and_evaluate(smoke_config(data_dir, num_classes=5), str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("workdir", "message"),
    [("", "--workdir is empty"), ("file", "is a file, not a directory")],
)
def test_empty_or_file_workdir_is_rejected(data_dir, tmp_path, workdir, message):
    if workdir:
        workdir = str(tmp_path / workdir)
        Path(workdir).write_text("not a directory")
    with pytest.raises(ConfigError, match=message):
        train.train_and_evaluate(smoke_config(data_dir), workdir)


def test_predict_rejects_raw_float_pixels_and_non_finite_input():
    model = resnet_jax.create_model("resnet20")
    variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
    spec = {"kind": "mean_std", "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
    predict = resnet_jax.make_predict_fn(model, spec)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float64)
    with pytest.raises(ValueError, match="raw pixels must be passed as uint8"):
        predict(variables, pixels)
    with pytest.raises(ValueError, match="NaN or infinite"):
        predict(variables, np.full((1, 32, 32, 3), np.nan, np.float32))
    normalised = (pixels / 255 - np.array(spec["mean"])) / np.array(spec["std"])
    np.testing.assert_allclose(
        predict(variables, normalised.astype(np.float32)),
        predict(variables, pixels.astype(np.uint8)),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    ("config_path", "message"),
    [
        ("missing.py", "error: cannot load the --config file"),
        ("syntax.py", "error: cannot load the --config file"),
    ],
)
def test_config_file_errors_are_one_line(tmp_path, config_path, message):
    (tmp_path / "syntax.py").write_text("def get_config(:\n")
    cmd = [
        sys.executable,
        "-m",
        "train",
        "--config",
        str(tmp_path / config_path),
        f"--workdir={tmp_path / 'w'}",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "w").exists()


def test_ctrl_c_is_acknowledged_at_once_saves_and_exits_130(data_dir, tmp_path):
    flags = [
        "--config.num_train_steps=2000",
        "--config.eval_every_steps=-1",
        "--config.checkpoint_every_steps=1000",
    ]
    proc = start_training(smoke_command(tmp_path, data_dir, *flags), tmp_path, dict(os.environ))
    metrics_file = tmp_path / "metrics.jsonl"
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, out[-2000:]
    assert "SIGINT received: stopping after step" in out and "resume with:" in out
    stopped_at = int(out.split("stopped by SIGINT at step ")[1].split(";")[0])
    assert RunCheckpoints(str(tmp_path), 2).latest_step() == stopped_at < 2000
    assert time.time() - sent < 60
    assert math.isfinite(json.loads(metrics_file.read_text().splitlines()[-1])["loss"])


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
@pytest.mark.parametrize("damage", ["dataset_info", "records", "truncated"])
def test_damaged_tfds_copy_is_one_clear_error(tmp_path, damage, file_format):
    from train.data import tfds_data

    write_fake_dataset(str(tmp_path), num_train=16, num_test=8, file_format=file_format)
    version_dir = tmp_path / "fake_cifar" / "1.0.0"
    if damage == "dataset_info":
        (version_dir / "dataset_info.json").write_text("{not json")
    else:
        records = list(version_dir.glob(f"*.{file_format}*"))
        assert records
        for f in records:
            data = f.read_bytes()
            f.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 64)
    with pytest.raises(tfds_data.DatasetUnavailableError, match="damaged") as e:
        builder = tfds_data.get_builder("fake_cifar", str(tmp_path))
        tfds_data.load_split(builder, "train")
    assert "\n" not in str(e.value) and "prepare" in str(e.value)
