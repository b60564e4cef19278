"""`python -m resnet_jax.predict`: image files of any size to top-5 class names, and one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_checkpoint import CIFAR10_CLASSES, save_tiny_checkpoint

from resnet_jax import create_model
from resnet_jax.predict.__main__ import load_image, main, target_size, top_classes

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("predict") / "run")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A grey 50x70 PNG and an RGBA 9x17 PNG: sizes and modes the model never saw."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    a, b = d / "grey.png", d / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8), "L").save(a)
    Image.fromarray(rng.integers(0, 256, (9, 17, 4), dtype=np.uint8), "RGBA").save(b)
    return [str(a), str(b)]


def test_command_prints_top5_names(workdir, images):
    out = subprocess.run(
        [sys.executable, "-m", "resnet_jax.predict", "--workdir", workdir, *images],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "RESNET_JAX_CACHE_DIR": "off"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == images[0] and lines[6] == images[1], out.stdout
    for block in (lines[1:6], lines[7:12]):
        probs = [float(line.split("%")[0]) / 100 for line in block]
        names = [line.split("%", 1)[1].strip() for line in block]
        assert set(names) <= set(CIFAR10_CLASSES) and len(set(names)) == 5
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_missing_workdir_and_bad_image_are_one_line(workdir, tmp_path, capsys, images):
    assert main(["--workdir", str(tmp_path / "nope"), *images]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(tmp_path / "nope") in err
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    assert main(["--workdir", workdir, str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read image {bad}") and err.count("\n") == 1
    assert main(["--workdir", workdir, str(tmp_path / "missing.png")]) == 1
    assert "cannot read image" in capsys.readouterr().err


def test_resize_rules(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(path)
    assert target_size(create_model("resnet20")) == (32, 32)
    assert target_size(create_model("resnet50")) == (224, 224)
    assert load_image(str(path), (32, 32), center_crop=False).shape == (32, 32, 3)
    cropped = load_image(str(path), (224, 224), center_crop=True)
    assert cropped.shape == (224, 224, 3) and cropped.dtype == np.uint8


def test_top_classes_without_names_uses_indices():
    probs = np.array([[0.1, 0.6, 0.3]])
    assert top_classes(probs, None, k=2) == [[("1", 0.6), ("2", 0.3)]]
    assert top_classes(probs, ("a", "b", "c"), k=5) == [[("b", 0.6), ("c", 0.3), ("a", 0.1)]]
