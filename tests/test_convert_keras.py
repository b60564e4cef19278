"""Keras weight import: converted models compute Keras' logits, through the API and the CLI; bad files
are one line.

The reference nets (tests/convert_helpers.py) have random weights and perturbed BatchNorm statistics.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convert_helpers import KERAS_REASON, TOL, max_diff, randomize_keras, run_cli

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"

KERAS_CASES = [("ResNet50", 7, 97, 131), ("ResNet101", 10, 64, 96), ("ResNet152", 10, 64, 96)]


@pytest.mark.parametrize("name,num_classes,height,width", KERAS_CASES)
def test_keras_logits_match(name, num_classes, height, width):
    keras = pytest.importorskip("keras", reason=KERAS_REASON)
    from resnet_jax.convert import from_keras

    rng = np.random.default_rng(2)
    reference = getattr(keras.applications, name)(
        weights=None, classes=num_classes, input_shape=(height, width, 3), classifier_activation=None
    )
    randomize_keras(reference, 3, rng.normal(size=(4, height, width, 3)).astype(np.float32))
    x = rng.normal(size=(2, height, width, 3)).astype(np.float32)
    model, variables = from_keras(reference)

    assert model.num_classes == num_classes
    assert (model.stride_in_1x1, model.conv_bias, model.bn_epsilon, model.bn_momentum) == (
        True,
        True,
        1.001e-5,
        0.99,
    )
    expected = np.asarray(reference(x, training=False))
    got = model.apply(variables, x, train=False)
    assert max_diff(got, expected) <= TOL, (name, max_diff(got, expected))
    # The conv biases matter: without them the logits move.
    no_bias = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.zeros_like(v) if "conv" in str(p[1]) and str(p[-1]) == "['bias']" else v,
        variables["params"],
    )
    assert max_diff(model.apply({**variables, "params": no_bias}, x, train=False), expected) > 100 * TOL


def test_keras_v2_logits_match_and_cli_meta(tmp_path, capsys):
    keras = pytest.importorskip("keras", reason=KERAS_REASON)
    from resnet_jax import make_predict_fn
    from resnet_jax.checkpoint import load_checkpoint, load_meta
    from resnet_jax.convert import from_keras
    from resnet_jax.convert.__main__ import main
    from resnet_jax.summary import count_params

    height, width = 64, 48
    rng = np.random.default_rng(7)
    reference = keras.applications.ResNet50V2(
        weights=None, classes=7, input_shape=(height, width, 3), classifier_activation=None
    )
    randomize_keras(reference, 8, rng.normal(size=(4, height, width, 3)).astype(np.float32), "_2_bn")
    x = rng.normal(size=(2, height, width, 3)).astype(np.float32)
    model, variables = from_keras(reference)
    assert (model.block, model.stride_block, model.num_classes) == ("preact_bottleneck", "last", 7)
    assert count_params(variables) == sum(int(np.prod(w.shape)) for w in reference.trainable_weights)
    expected = np.asarray(reference(x, training=False))
    assert max_diff(model.apply(variables, x, train=False), expected) <= TOL
    # The zero-padded stem max-pool, the conv biases and the statistics each matter.
    no_bias = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.zeros_like(v) if str(p[-1]) == "['bias']" and "conv" in str(p[-2]) else v,
        variables["params"],
    )
    assert max_diff(model.apply({**variables, "params": no_bias}, x, train=False), expected) > 100 * TOL

    # Through the CLI: the checkpoint records Keras V2's "tf" preprocessing, x / 127.5 - 1, as mean_std 0.5.
    reference.save_weights(tmp_path / "v2.weights.h5")
    argv = ["--from", "keras", "--arch", "resnet50v2", "--weights", str(tmp_path / "v2.weights.h5")]
    assert main([*argv, "--num-classes", "7", "--out", str(tmp_path / "ckpt")]) == 0, capsys.readouterr().err
    assert load_meta(tmp_path / "ckpt")["preprocess"] == {
        "kind": "mean_std",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    loaded, loaded_vars = load_checkpoint(tmp_path / "ckpt")
    images = rng.integers(0, 256, size=(2, height, width, 3), dtype=np.uint8)
    keras_logits = np.asarray(
        reference(keras.applications.resnet_v2.preprocess_input(images.astype(np.float32)))
    )
    assert max_diff(make_predict_fn(loaded)(loaded_vars, images), keras_logits) <= TOL


def test_keras_errors():
    keras = pytest.importorskip("keras", reason=KERAS_REASON)
    from resnet_jax.convert import from_keras

    with pytest.raises(ValueError, match=r"none of resnet50 .*ResNet50V2/101V2/152V2 are supported"):
        from_keras(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    notop = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3))
    with pytest.raises(ValueError) as info:
        from_keras(notop)
    lines = str(info.value).splitlines()
    assert lines[0].endswith(
        "does not fit the model; hint: the Keras model has no 'predictions' layer; "
        "build it with include_top=True"
    )
    assert lines[1] == "2 missing, 0 unexpected, 0 mis-shaped:"
    assert "  missing predictions/kernel (expected shape (2048, 1000))" in lines


def test_cli_bad_keras_file_is_one_line(tmp_path):
    """A file that does not fit makes Keras warn per layer (200 lines) before it fails: one line here."""
    keras = pytest.importorskip("keras", reason=KERAS_REASON)
    # Weights of another net, in the Keras 3 format (the format whose loader warns per layer).
    other = keras.applications.ResNet50V2(weights=None, classes=5, input_shape=(32, 32, 3))
    other.save_weights(tmp_path / "v2.weights.h5")
    done = run_cli(
        "--from", "keras", "--arch", "resnet50", "--weights", str(tmp_path / "v2.weights.h5"),
        "--out", str(tmp_path / "ckpt"),
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr[:3000]
    assert done.stderr.startswith(f"error: could not load {tmp_path / 'v2.weights.h5'} into ")
    assert "check --arch and --num-classes" in done.stderr and len(done.stderr) < 800
    assert not (tmp_path / "ckpt").exists()


_KERAS_TF_REFERENCE = """
import sys, h5py, numpy as np, keras
sys.path.insert(0, sys.argv[2])
from convert_helpers import randomize_keras
from keras.src.legacy.saving import legacy_h5_format
assert keras.backend.backend() == "tensorflow"
rng = np.random.default_rng(5)
model = keras.applications.ResNet50(
    weights=None, classes=5, input_shape=(64, 80, 3), classifier_activation=None
)
randomize_keras(model, 6, rng.normal(size=(4, 64, 80, 3)).astype(np.float32))
x = rng.normal(size=(2, 64, 80, 3)).astype(np.float32)
# The legacy .h5 layout is that of Keras' own ImageNet files (resnet50_weights_tf_dim_ordering_tf_kernels.h5).
with h5py.File(sys.argv[1] + "/resnet50.h5", "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
np.savez(sys.argv[1] + "/reference.npz", x=x, logits=np.asarray(model(x, training=False)))
"""


def test_cli_keras_matches_tensorflow_backend(tmp_path):
    """A ResNet50 built, randomized and run by Keras on TensorFlow, saved as a legacy .h5, via the CLI."""
    pytest.importorskip("keras", reason=KERAS_REASON)
    pytest.importorskip(
        "tensorflow", reason="tensorflow not installed (the reference runs Keras on TensorFlow)"
    )
    from resnet_jax.checkpoint import load_checkpoint, load_meta

    subprocess.run(
        [sys.executable, "-c", _KERAS_TF_REFERENCE, str(tmp_path), str(Path(__file__).parent)],
        check=True,
        env={**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""},
        timeout=300,
    )
    weights = ("--from", "keras", "--arch", "resnet50", "--weights", str(tmp_path / "resnet50.h5"))
    done = run_cli(*weights, "--num-classes", "5", "--out", str(tmp_path / "ckpt"))
    assert done.returncode == 0, done.stderr
    meta = load_meta(tmp_path / "ckpt")
    assert meta["origin"] == "keras"
    assert meta["preprocess"] == {"kind": "caffe", "mean_bgr": [103.939, 116.779, 123.68]}
    assert meta["model_kwargs"] == {
        "num_classes": 5,
        "stride_in_1x1": True,
        "conv_bias": True,
        "bn_momentum": 0.99,
        "bn_epsilon": 1.001e-5,
    }
    model, variables = load_checkpoint(tmp_path / "ckpt")
    reference = np.load(tmp_path / "reference.npz")
    assert max_diff(model.apply(variables, reference["x"], train=False), reference["logits"]) <= TOL

    wrong = run_cli(*weights, "--out", str(tmp_path / "c2"))
    assert wrong.returncode == 1 and "--num-classes" in wrong.stderr
    assert wrong.stderr.count("\n") == 1, wrong.stderr
