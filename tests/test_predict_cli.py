"""`python -m resnet_jax.predict`: image files of any size to top-5 class names, and one-line errors.

--pretrained runs offline against a Hugging Face cache holding timm's own model (tests/hub_cache.py).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hub_cache import offline_env, publish, timm_model
from PIL import Image
from tiny_checkpoint import CIFAR10_CLASSES, save_tiny_checkpoint

from resnet_jax import create_model
from resnet_jax.hub import imagenet_class_names
from resnet_jax.predict.__main__ import fit_images, input_recipe, main, read_images, top_classes

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
    assert input_recipe(create_model("resnet20")) == ((32, 32), None, None)  # whole image
    assert input_recipe(create_model("resnet50")) == ((224, 224), 0.875, "bilinear")  # 256 -> centre 224
    [image] = read_images([str(path)])
    assert fit_images([image], (32, 32), None, None).shape == (1, 32, 32, 3)
    cropped = fit_images([image], (224, 224), 0.875, "bilinear")
    assert cropped.shape == (1, 224, 224, 3) and cropped.dtype == np.uint8


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A Hugging Face cache holding timm/resnet18.a1_in1k (timm's model, random weights), and the model."""
    cache = tmp_path_factory.mktemp("hf")
    reference = timm_model("resnet18.a1_in1k")
    publish(cache, "resnet18.a1_in1k", reference)
    return cache, reference


def run_cli(*args, env=(), cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "resnet_jax.predict", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "RESNET_JAX_CACHE_DIR": "off", **dict(env)},
    )


def test_pretrained_prints_imagenet_names_as_timm_ranks_them(hub_cache, tmp_path):
    cache, reference = hub_cache
    rng = np.random.default_rng(1)
    paths = []
    for i, (h, w) in enumerate([(375, 500), (333, 250)]):
        paths.append(str(tmp_path / f"photo{i}.jpg"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1], quality=95)
    out = run_cli("--pretrained", "resnet18.a1_in1k", *paths, env=offline_env(cache).items())
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == paths[0] and lines[6] == paths[1], out.stdout
    # timm's own transform and model on the same files rank the same ImageNet classes.
    transform = timm.data.create_transform(
        **timm.data.resolve_data_config({}, model=reference, use_test_size=True)
    )
    names = imagenet_class_names()
    for path, block in zip(paths, (lines[1:6], lines[7:12]), strict=True):
        with torch.no_grad():
            probs = torch.softmax(reference(transform(Image.open(path).convert("RGB"))[None]), -1)[0].numpy()
        want = [(names[i], probs[i]) for i in np.argsort(-probs)[:5]]
        got = [(line.split("%", 1)[1].strip(), float(line.split("%")[0]) / 100) for line in block]
        assert [n for n, _ in got] == [n for n, _ in want], (got, want)
        np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=1e-4)


def test_offline_without_the_weights_is_one_line_and_writes_nothing(tmp_path, images):
    home, cache, cwd = tmp_path / "home", tmp_path / "hf", tmp_path / "cwd"
    for d in (home, cache, cwd):
        d.mkdir()
    env = {**offline_env(cache), "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    env["PYTHONDONTWRITEBYTECODE"], env["PYTHONPATH"] = "1", str(REPO)
    out = subprocess.run(
        [sys.executable, "-m", "resnet_jax.predict", "--pretrained", "resnet50.a1_in1k", *images],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != "RESNET_JAX_CACHE_DIR"} | env,  # default JAX cache
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "hf download timm/resnet50.a1_in1k model.safetensors" in out.stderr
    assert out.stdout == ""
    written = [p for d in (home, cache, cwd) for p in d.rglob("*")]
    assert written == [], written


def test_pretrained_file_needs_its_arch_and_exactly_one_source(hub_cache, workdir, images, capsys):
    cache, _ = hub_cache
    [path] = cache.rglob("model.safetensors")
    assert main(["--pretrained", str(path), *images]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass arch='resnet18' (CLI: --arch resnet18)" in err
    for argv in (
        ["--workdir", workdir, "--pretrained", str(path)],
        [],
        ["--workdir", workdir, "--arch", "x"],
    ):
        with pytest.raises(SystemExit) as e:
            main([*argv, *images])
        assert e.value.code == 2  # argparse's usage error


def test_top_classes_without_names_uses_indices():
    probs = np.array([[0.1, 0.6, 0.3]])
    assert top_classes(probs, None, k=2) == [[("1", 0.6), ("2", 0.3)]]
    assert top_classes(probs, ("a", "b", "c"), k=5) == [[("b", 0.6), ("c", 0.3), ("a", 0.1)]]
