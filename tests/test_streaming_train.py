"""The training program on the streaming (grain) path: exact resume, workers, class names in the
checkpoint, folder errors through the CLI, and the ImageNet config on tfds mock data.

Runs use the smoke config (resnet20, batch 16, 12 steps) on a tiny image folder written here: 64 train
and 20 test PNG images of 32x32 in 4 classes.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import smoke
from resnet_jax.checkpoint import load_checkpoint
from tests.helpers import CLASSES, assert_same_run, saved_state, write_image_folder
from train import train
from train.configuration import ConfigError, validate_config
from train.data import streaming

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    write_image_folder(root)
    return root


def config(folder: Path, **overrides):
    c = smoke.get_config()
    c.pipeline, c.data_source = "grain", "folder"
    c.train_dir, c.eval_dir = str(folder / "train"), str(folder / "test")
    c.num_classes = len(CLASSES)
    c.train_transform, c.eval_transform = "pad_crop_flip", "none"
    for k, v in overrides.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def uninterrupted(folder, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    result = train.train_and_evaluate(config(folder), workdir)
    assert result["step"] == 12 and result["stopped_by"] is None
    return workdir


def test_streaming_stop_and_resume_is_bitwise_identical(folder, uninterrupted, tmp_path):
    stopped = train.train_and_evaluate(config(folder, stop_after_steps=5), str(tmp_path))
    assert stopped["stopped_by"] == "stop_after_steps" and stopped["step"] == 5
    resumed = train.train_and_evaluate(config(folder), str(tmp_path))
    assert resumed["step"] == 12 and resumed["stopped_by"] is None
    assert_same_run(uninterrupted, tmp_path)


def test_checkpoint_meta_holds_the_folder_class_names_and_image_size(uninterrupted):
    meta, _ = load_checkpoint(uninterrupted)
    assert tuple(meta.class_names) == CLASSES
    assert list(meta.image_size) == [32, 32]
    assert meta.preprocess["kind"] == "mean_std"


def test_worker_processes_train_the_same_params(folder, uninterrupted, tmp_path):
    train.train_and_evaluate(config(folder, num_workers=2), str(tmp_path))
    a, b = saved_state(uninterrupted), saved_state(tmp_path)
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_array_equal(x, y)


class _Failed(Exception):
    pass


def test_the_pipeline_is_closed_when_the_run_fails(folder, tmp_path, monkeypatch):
    closed = []
    close = streaming.StreamingPipeline.close
    monkeypatch.setattr(streaming.StreamingPipeline, "close", lambda self: closed.append(1) or close(self))

    class FailingRunState:
        @classmethod
        def open(cls, *args, **kwargs):
            raise _Failed

    monkeypatch.setattr(train, "RunState", FailingRunState)
    with pytest.raises(_Failed):
        train.train_and_evaluate(config(folder), str(tmp_path / "run"))
    assert closed == [1]


def test_pipeline_fields_are_validated(folder):
    bad = config(folder, normalization="per_pixel", train_transform="random_resized_crop", train_dir=None)
    with pytest.raises(ConfigError) as info:
        validate_config(bad, 8)
    message = str(info.value)
    assert "per_pixel" in message and "--config.train_dir=DIR" in message and "image_size>0" in message
    with pytest.raises(ConfigError, match="pipeline='foo' must be one of memory, grain"):
        validate_config(config(folder, pipeline="foo"), 8)
    with pytest.raises(ConfigError, match="eval_transform='crop'"):
        validate_config(config(folder, eval_transform="crop"), 8)


def _cli(folder: Path, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "train",
        "--config",
        str(REPO / "configs" / "smoke.py"),
        f"--workdir={workdir}",
        "--config.pipeline=grain",
        "--config.data_source=folder",
        f"--config.train_dir={folder / 'train'}",
        f"--config.eval_dir={folder / 'test'}",
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "case, extra, expected",
    [
        ("missing root", ("--config.num_classes=4",), "does not exist or is not a folder"),
        ("num_classes", ("--config.num_classes=10",), "has 4 classes but num_classes=10"),
    ],
)
def test_folder_errors_through_the_cli_are_one_line_and_write_nothing(
    folder, tmp_path, case, extra, expected
):
    root = tmp_path / "missing" if case == "missing root" else folder
    workdir = tmp_path / "run"
    out = _cli(root, workdir, *extra)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected in lines[-1], out.stderr
    assert "Traceback" not in out.stderr
    assert not workdir.exists()


def test_imagenet_resnet50_config_trains_on_mock_data(tmp_path):
    """configs/imagenet_resnet50.py (grain, tfds imagenet2012, its transforms, schedule and 1000
    classes) on tfds's mock data, with a small batch and image size, and ResNet-18 with the last-BN
    zero-init option instead of ResNet-50 (120 s instead of 72 s on 2 CPU cores, measured)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from configs import imagenet_resnet50

    c = imagenet_resnet50.get_config()
    assert c.warmup_steps == 5 * (1_281_167 // 1024) == 6255 and c.learning_rate == pytest.approx(0.4)
    assert c.model == "resnet50" and c.dataset == "imagenet2012" and c.num_classes == 1000
    c.model, c.model_kwargs.zero_init_last_bn = "resnet18", True
    c.batch_size, c.eval_batch_size, c.image_size = 8, 8, 64
    c.num_train_steps, c.num_epochs, c.warmup_steps = 2, -1.0, 1
    c.log_every_steps, c.eval_every_steps, c.progress_bar = 1, -1, False
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        result = train.train_and_evaluate(c, str(tmp_path))
    assert result["step"] == 2 and np.isfinite(result["test_loss"])
    meta, _ = load_checkpoint(str(tmp_path))
    assert list(meta.image_size) == [64, 64] and len(meta.class_names) == 1000
    assert os.path.exists(tmp_path / "metrics.jsonl")
