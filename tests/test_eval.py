"""`python -m train.eval` reproduces the final evaluation a training run logged, through the run's own
pipeline: in-memory tfds, image folders, and grain over tfds."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import resnet_jax
from configs import smoke
from tests.helpers import CLASSES, write_image_folder
from train import metrics as metrics_lib
from train import train
from train.data import testing, tfds_data
from train.eval import evaluate_checkpoint

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"

REPO = Path(__file__).parents[1]


def _final_logged(workdir):
    records = metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    return [r for r in records if r["split"] == "test"]


def _eval_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "train.eval", *args],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A finished 12-step smoke run of resnet20 on a small fake dataset (20 test images)."""
    data_dir = str(tmp_path_factory.mktemp("data"))
    config = smoke.get_config()
    config.dataset = testing.write_fake_dataset(data_dir, num_train=64, num_test=20)
    config.data_dir = data_dir
    config.eval_batch_size = 8  # 20 examples: the last batch is padded, and must not be counted twice
    config.keep_checkpoints = 4  # keep step 6 (evaluated mid-run) too
    config.eval_hflip = True
    workdir = str(tmp_path_factory.mktemp("run"))
    result = train.train_and_evaluate(config, workdir)
    return workdir, data_dir, result


def test_evaluate_equals_the_final_logged_evaluation(smoke_run):
    workdir, data_dir, result = smoke_run
    logged = _final_logged(workdir)
    final = logged[-1]
    assert final["step"] == result["step"] == 12
    got = evaluate_checkpoint(workdir)
    assert got["step"] == 12 and got["examples"] == 20 == final["examples"]
    assert got["accuracy"] == final["accuracy"] == result["test_accuracy"]
    assert got["accuracy_top5"] == final["accuracy_top5"]
    assert got["loss"] == pytest.approx(final["loss"], rel=1e-6)
    assert "accuracy_hflip" not in got
    flipped = evaluate_checkpoint(workdir, hflip=True)
    assert flipped["accuracy"] == got["accuracy"]
    assert flipped["accuracy_hflip"] == final["accuracy_hflip"] == result["test_accuracy_hflip"]
    # Independently of the eval program: load_checkpoint + make_predict_fn on the raw split, counted in numpy.
    images, labels = tfds_data.load_split(tfds_data.get_builder("fake_cifar", data_dir), "test")
    model, variables = resnet_jax.load_checkpoint(workdir)
    logits = np.asarray(resnet_jax.make_predict_fn(model)(variables, images))
    assert len(labels) == 20 and float(np.mean(logits.argmax(-1) == labels)) == pytest.approx(got["accuracy"])
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    assert float(np.mean((top5 == labels[:, None]).any(-1))) == pytest.approx(got["accuracy_top5"])
    # An older checkpoint gives the evaluation logged at its step.
    at_6 = next(r for r in logged if r["step"] == 6)
    assert evaluate_checkpoint(workdir, step=6)["accuracy"] == at_6["accuracy"]


def test_cli_prints_each_figure_once(smoke_run):
    workdir, _, result = smoke_run
    done = _eval_cli("--workdir", workdir, "--hflip")
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = done.stdout.strip().splitlines()
    match = re.fullmatch(
        r"test accuracy ([\d.]+), top-5 [\d.]+, loss [\d.]+ on 20 examples; with flip test-time "
        r"augmentation ([\d.]+) \(checkpoint .*, step 12\)",
        line,
    )
    assert match, line
    assert match.group(1) == f"{result['test_accuracy']:.4f}"
    assert match.group(2) == f"{result['test_accuracy_hflip']:.4f}"


def test_cli_names_a_directory_without_a_run(tmp_path):
    done = _eval_cli("--workdir", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        == f"error: {tmp_path}/config.json not found: --workdir must be a training run's directory"
    )


def _folder_config(folder, **overrides):
    c = smoke.get_config()
    c.pipeline, c.data_source = "grain", "folder"
    c.train_dir, c.eval_dir = str(folder / "train"), str(folder / "test")
    c.num_classes, c.eval_batch_size = len(CLASSES), 8
    c.train_transform, c.eval_transform, c.image_size = "random_resized_crop", "resize", 24
    c.update(overrides)
    return c


def test_folder_run_evaluates_through_its_own_pipeline(tmp_path):
    """A folder run (resized to 24 px by its eval transform): train.eval gives the logged accuracy on its
    own eval folder, not on the tfds dataset in the config's default fields, and --eval_dir another one."""
    write_image_folder(tmp_path / "images")
    workdir = str(tmp_path / "run")
    result = train.train_and_evaluate(_folder_config(tmp_path / "images"), workdir)
    final = _final_logged(workdir)[-1]
    got = evaluate_checkpoint(workdir)
    assert got["examples"] == 20 == final["examples"]
    assert got["accuracy"] == final["accuracy"] == result["test_accuracy"]
    assert got["loss"] == pytest.approx(final["loss"], rel=1e-5)
    other = evaluate_checkpoint(workdir, eval_dir=str(tmp_path / "images" / "train"))
    assert other["examples"] == 64
    done = _eval_cli("--workdir", workdir)
    assert done.returncode == 0 and f"test accuracy {final['accuracy']:.4f}," in done.stdout, done.stderr[
        -2000:
    ]
    done = _eval_cli("--workdir", workdir, "--eval_dir", str(tmp_path / "nowhere"))
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "nowhere does not exist" in done.stderr


def test_grain_tfds_run_evaluates_through_its_own_pipeline(tmp_path):
    """grain over tfds (tfds's mock data stands for an ArrayRecord copy): the logged accuracy again."""
    import tensorflow_datasets as tfds

    c = _folder_config(tmp_path, data_source="tfds", dataset="cifar10", num_classes=10)
    c.train_transform, c.eval_transform, c.image_size = "pad_crop_flip", "none", 0
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=36, policy=tfds.testing.MockPolicy.USE_CODE):
        result = train.train_and_evaluate(c, workdir)
        got = evaluate_checkpoint(workdir)
    final = _final_logged(workdir)[-1]
    assert got["examples"] == final["examples"] == 36
    assert got["accuracy"] == final["accuracy"] == result["test_accuracy"]
    assert got["loss"] == pytest.approx(final["loss"], rel=1e-5)
