"""`python -m train.eval` reproduces the final evaluation a training run logged."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from configs import smoke
from train import metrics as metrics_lib
from train import testing, train
from train.eval import evaluate

REPO = Path(__file__).parents[1]


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
    workdir, _, result = smoke_run
    records = metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    logged = [r for r in records if r["split"] == "test"]
    final = logged[-1]
    assert final["step"] == result["step"] == 12
    got = evaluate(workdir)
    assert got["step"] == 12 and got["examples"] == 20 == final["examples"]
    assert got["accuracy"] == final["accuracy"] == result["test_accuracy"]
    assert got["loss"] == pytest.approx(final["loss"], rel=1e-6)
    assert "accuracy_hflip" not in got
    flipped = evaluate(workdir, hflip=True)
    assert flipped["accuracy"] == got["accuracy"]
    assert flipped["accuracy_hflip"] == final["accuracy_hflip"] == result["test_accuracy_hflip"]
    # Independently of make_eval_fn: load_checkpoint + make_predict_fn on the raw split, counted in numpy.
    import numpy as np

    import resnet_jax
    from train import tfds_data

    _, data_dir, _ = smoke_run
    images, labels = tfds_data.load_split(tfds_data.get_builder("fake_cifar", data_dir), "test")
    model, variables = resnet_jax.load_checkpoint(workdir)
    logits = np.asarray(resnet_jax.make_predict_fn(model)(variables, images))
    assert len(labels) == 20 and float(np.mean(logits.argmax(-1) == labels)) == pytest.approx(got["accuracy"])
    # An older checkpoint gives the evaluation logged at its step.
    at_6 = next(r for r in logged if r["step"] == 6)
    assert evaluate(workdir, step=6)["accuracy"] == at_6["accuracy"]


def test_cli_prints_the_logged_accuracy(smoke_run):
    workdir, _, result = smoke_run
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-m", "train.eval", "--workdir", workdir, "--hflip"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"test accuracy [\d.]+ \(([\d.e-]+)\) .* on 20 examples", out)
    assert match, out
    assert float(match.group(1)) == result["test_accuracy"]
    tta = f"with flip test-time augmentation: test accuracy {result['test_accuracy_hflip']:.4f}"
    assert tta in out.splitlines()[-1]


def test_cli_names_a_directory_without_a_run(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "train.eval", "--workdir", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert f"{tmp_path}/config.json not found" in out.stderr
