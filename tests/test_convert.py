"""Weight import: converted models compute the reference models' logits (torchvision, Keras).

The references are the frameworks' own ResNets with random weights, every BatchNorm given random
affine parameters and running statistics measured on random batches (then perturbed), so a wrong
layout, a missing bias, a swapped stride or a wrong epsilon moves the logits far past 1e-4.
The last BN of each block gets a small scale (as trained nets have): otherwise a random 152-layer
net is so ill-conditioned that float32 torch itself differs from float64 torch by ~5e-4.
"""

import os
import subprocess
import sys
from pathlib import Path

# Keras on JAX keeps TensorFlow out of this process; must be set before keras is first imported.
os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4
TORCH_REASON = "torch/torchvision not installed (pip install 'resnet-jax-flax[torch]')"
KERAS_REASON = "keras not installed (pip install 'resnet-jax-flax[keras]')"


def _torch():
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    models = pytest.importorskip("torchvision.models", reason=TORCH_REASON)
    return torch, models


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def _torchvision_net(arch: str, num_classes: int, hw: tuple[int, int], seed: int = 0):
    """A torchvision ResNet in eval mode with random weights and non-trivial BatchNorm state."""
    torch, models = _torch()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = getattr(models, arch)(weights=None, num_classes=num_classes)
    last_bn = "bn3" if arch.startswith(("resnet5", "resnet1", "resnext", "wide")) else "bn2"
    bns = [(name, m) for name, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for name, bn in bns:
            low, high = (0.1, 0.5) if name.endswith(last_bn) else (0.5, 1.5)
            bn.weight.uniform_(low, high, generator=gen)
            bn.bias.normal_(0.0, 0.2, generator=gen)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
        net.train()
        for _ in range(2):
            net(torch.randn(4, 3, *hw, generator=gen))
        for _, bn in bns:
            bn.running_mean.add_(0.1 * bn.running_var.sqrt() * torch.randn(bn.num_features, generator=gen))
            bn.running_var.mul_(torch.empty(bn.num_features).uniform_(0.8, 1.25, generator=gen))
    return net.eval()


def _torch_logits(net, x_nhwc: np.ndarray) -> np.ndarray:
    torch, _ = _torch()
    with torch.no_grad():
        return net(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


# (arch, num_classes, input height, width): every size on a non-square input, one with odd sides.
TORCHVISION_CASES = [
    ("resnet18", 1000, 160, 224),
    ("resnet34", 10, 96, 128),
    ("resnet50", 7, 97, 131),
    ("resnet101", 10, 64, 96),
    ("resnet152", 10, 64, 96),
    ("resnext50_32x4d", 10, 64, 48),
    ("wide_resnet50_2", 10, 64, 48),
]


@pytest.mark.parametrize("arch,num_classes,height,width", TORCHVISION_CASES)
def test_torchvision_logits_match(arch, num_classes, height, width):
    from resnet_jax.convert import from_torchvision

    net = _torchvision_net(arch, num_classes, (height, width))
    x = np.random.default_rng(1).normal(size=(2, height, width, 3)).astype(np.float32)
    model, variables = from_torchvision(net.state_dict(), arch)

    assert model.num_classes == num_classes
    assert (model.stride_in_1x1, model.conv_bias, model.bn_epsilon) == (False, False, 1e-5)
    assert set(variables) == {"params", "batch_stats"}
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
    expected = _torch_logits(net, x)
    got = model.apply(variables, x, train=False)
    assert got.shape == expected.shape
    assert _max_diff(got, expected) <= TOL, (arch, _max_diff(got, expected))
    # The statistics matter: the same weights with fresh BN statistics give other logits.
    fresh = {
        "params": variables["params"],
        "batch_stats": jax.tree.map(jnp.ones_like, variables["batch_stats"]),
    }
    assert _max_diff(model.apply(fresh, x, train=False), expected) > 100 * TOL


def test_torchvision_accepts_numpy_and_modules():
    from resnet_jax.convert import from_torchvision

    net = _torchvision_net("resnet18", 5, (64, 64))
    _, from_tensors = from_torchvision(net.state_dict(), "resnet18")
    _, from_numpy = from_torchvision({k: v.numpy() for k, v in net.state_dict().items()}, "resnet18")
    _, from_module = from_torchvision(net, "resnet18")
    leaves = jax.tree.leaves
    for other in (from_numpy, from_module):
        assert all(np.array_equal(a, b) for a, b in zip(leaves(from_tensors), leaves(other), strict=True))
    # The layouts: OIHW -> HWIO, Linear (out, in) -> Dense (in, out), running stats -> batch_stats.
    sd = net.state_dict()
    np.testing.assert_array_equal(
        from_tensors["params"]["stage2_block0"]["shortcut_conv"]["kernel"],
        sd["layer2.0.downsample.0.weight"].numpy().transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(from_tensors["params"]["head"]["kernel"], sd["fc.weight"].numpy().T)
    np.testing.assert_array_equal(
        from_tensors["batch_stats"]["stage4_block1"]["bn2"]["var"], sd["layer4.1.bn2.running_var"].numpy()
    )


def test_torchvision_errors_list_every_bad_entry():
    from resnet_jax.convert import from_torchvision

    sd = {k: v.numpy() for k, v in _torchvision_net("resnet18", 10, (32, 32)).state_dict().items()}
    del sd["layer2.1.bn1.running_var"]
    del sd["fc.bias"]
    sd["extra.weight"] = np.zeros((3, 4), np.float32)
    sd["conv1.weight"] = np.zeros((64, 3, 5, 5), np.float32)
    with pytest.raises(ValueError) as info:
        from_torchvision(sd, "resnet18")
    message = str(info.value)
    assert "2 missing, 1 unexpected, 1 mis-shaped" in message
    assert "layer2.1.bn1.running_var  (expected shape (128,))" in message
    assert "fc.bias  (expected shape (10,))" in message
    assert "extra.weight  (shape (3, 4))" in message
    assert "conv1.weight: got shape (64, 3, 5, 5), expected (64, 3, 7, 7)" in message


def test_torchvision_wrong_arch_is_named():
    from resnet_jax.convert import from_torchvision

    sd = _torchvision_net("resnet50", 1000, (32, 32)).state_dict()
    with pytest.raises(ValueError) as info:
        from_torchvision(sd, "resnet18")
    message = str(info.value)
    assert "layer1.0.conv3.weight" in message  # unexpected
    assert "fc.weight: got shape (1000, 2048), expected (1000, 512)" in message
    assert (
        "hint: the state dict's keys and shapes fit torchvision's resnet50: pass arch='resnet50'" in message
    )
    with pytest.raises(ValueError, match="unknown torchvision arch 'resnet20'"):
        from_torchvision(sd, "resnet20")


def _meta_state_dict(arch: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of torchvision's `arch` state dict, without allocating its weights."""
    torch, models = _torch()
    with torch.device("meta"):
        net = getattr(models, arch)(weights=None)
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("arch", ["resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2"])
def test_torchvision_101s_map_every_key_and_shape(arch):
    from resnet_jax.convert.torchvision import _expected_shapes

    assert _expected_shapes(arch, 1000) == _meta_state_dict(arch)


def test_torchvision_wrapped_state_dicts():
    from resnet_jax.convert import from_torchvision

    sd = _torchvision_net("resnet18", 5, (32, 32)).state_dict()
    _, plain = from_torchvision(sd, "resnet18")
    wrapped = [
        {"state_dict": sd},
        {"model": sd, "epoch": 3},  # timm / torchvision reference scripts
        {"module." + k: v for k, v in sd.items()},  # DataParallel
        {"state_dict": {"model." + k: v for k, v in sd.items()}, "epoch": 3, "global_step": 10},  # Lightning
        {"model_state_dict": {"module." + k: v for k, v in sd.items()}, "optimizer_state_dict": {}},
    ]
    for obj in wrapped:
        _, variables = from_torchvision(obj, "resnet18")
        leaves = zip(jax.tree.leaves(plain), jax.tree.leaves(variables), strict=True)
        assert all(np.array_equal(a, b) for a, b in leaves)
    with pytest.raises(
        ValueError, match=r"no torchvision state dict found.*found keys 'epoch' \(int\), 'opt'"
    ):
        from_torchvision({"epoch": 3, "opt": {"lr": 0.1}}, "resnet18")


def test_torchvision_names_the_architecture_that_fits():
    from resnet_jax.convert import from_torchvision

    # ResNeXt-50 and ResNet-50 have the same keys; only the shapes tell them apart.
    sd = {k: np.zeros(shape, np.float32) for k, shape in _meta_state_dict("resnext50_32x4d").items()}
    for arch in ("resnet50", "wide_resnet50_2"):
        with pytest.raises(
            ValueError, match="fit torchvision's resnext50_32x4d: pass arch='resnext50_32x4d'"
        ):
            from_torchvision(sd, arch)
    model, _ = from_torchvision(sd, "resnext50_32x4d")
    assert (model.groups, model.base_width) == (32, 4)


def test_convert_does_not_import_frameworks():
    code = (
        "import sys, resnet_jax, resnet_jax.convert; "
        "bad = [m for m in ('torch', 'torchvision', 'keras', 'tensorflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}
    )


# ----------------------------------------------------------------------------------------------
# Keras


def _randomize_keras(model, seed: int, calibration: np.ndarray, last_bn: str = "_3_bn") -> None:
    """Random conv biases and BN affine parameters, then BN moving statistics from `calibration`."""
    rng = np.random.default_rng(seed)
    bns = [layer for layer in model.layers if layer.name.endswith("_bn")]
    for layer in model.layers:
        if layer.name.endswith("_conv") and layer.bias is not None:
            layer.bias.assign(rng.normal(0.0, 0.1, layer.bias.shape).astype(np.float32))
    for bn in bns:
        low, high = (0.1, 0.5) if bn.name.endswith(last_bn) else (0.5, 1.5)
        bn.gamma.assign(rng.uniform(low, high, bn.gamma.shape).astype(np.float32))
        bn.beta.assign(rng.normal(0.0, 0.2, bn.beta.shape).astype(np.float32))
        bn.momentum = 0.0  # the moving statistics become the calibration batch's
    model(calibration, training=True)
    for bn in bns:
        bn.momentum = 0.99
        mean, var = np.asarray(bn.moving_mean.value), np.asarray(bn.moving_variance.value)
        bn.moving_mean.assign(mean + 0.1 * np.sqrt(var) * rng.normal(size=mean.shape).astype(np.float32))
        bn.moving_variance.assign(var * rng.uniform(0.8, 1.25, var.shape).astype(np.float32))


KERAS_CASES = [("ResNet50", 7, 97, 131), ("ResNet101", 10, 64, 96), ("ResNet152", 10, 64, 96)]


@pytest.mark.parametrize("name,num_classes,height,width", KERAS_CASES)
def test_keras_logits_match(name, num_classes, height, width):
    keras = pytest.importorskip("keras", reason=KERAS_REASON)
    from resnet_jax.convert import from_keras

    rng = np.random.default_rng(2)
    reference = getattr(keras.applications, name)(
        weights=None, classes=num_classes, input_shape=(height, width, 3), classifier_activation=None
    )
    _randomize_keras(reference, 3, rng.normal(size=(4, height, width, 3)).astype(np.float32))
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
    assert _max_diff(got, expected) <= TOL, (name, _max_diff(got, expected))
    # The conv biases matter: without them the logits move.
    no_bias = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.zeros_like(v) if "conv" in str(p[1]) and str(p[-1]) == "['bias']" else v,
        variables["params"],
    )
    assert _max_diff(model.apply({**variables, "params": no_bias}, x, train=False), expected) > 100 * TOL


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
    _randomize_keras(reference, 8, rng.normal(size=(4, height, width, 3)).astype(np.float32), "_2_bn")
    x = rng.normal(size=(2, height, width, 3)).astype(np.float32)
    model, variables = from_keras(reference)
    assert (model.block, model.stride_block, model.num_classes) == ("preact_bottleneck", "last", 7)
    assert count_params(variables) == sum(int(np.prod(w.shape)) for w in reference.trainable_weights)
    expected = np.asarray(reference(x, training=False))
    assert _max_diff(model.apply(variables, x, train=False), expected) <= TOL
    # The zero-padded stem max-pool, the conv biases and the statistics each matter.
    no_bias = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.zeros_like(v) if str(p[-1]) == "['bias']" and "conv" in str(p[-2]) else v,
        variables["params"],
    )
    assert _max_diff(model.apply({**variables, "params": no_bias}, x, train=False), expected) > 100 * TOL

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
    assert _max_diff(make_predict_fn(loaded)(loaded_vars, images), keras_logits) <= TOL


def test_keras_errors():
    keras = pytest.importorskip("keras", reason=KERAS_REASON)
    from resnet_jax.convert import from_keras

    with pytest.raises(ValueError, match=r"none of resnet50 .*ResNet50V2/101V2/152V2 are supported"):
        from_keras(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    notop = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3))
    with pytest.raises(ValueError) as info:
        from_keras(notop)
    message = str(info.value)
    assert "2 missing, 0 unexpected, 0 mis-shaped" in message
    assert "predictions/kernel  (expected shape (2048, 1000))" in message
    assert "build it with include_top=True" in message


# ----------------------------------------------------------------------------------------------
# CLI


def _run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "resnet_jax.convert", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
        timeout=300,
    )


def test_cli_torchvision_writes_loadable_checkpoint(tmp_path):
    torch, _ = _torch()
    from resnet_jax.checkpoint import load_checkpoint, load_meta
    from resnet_jax.convert import from_torchvision

    net = _torchvision_net("resnet18", 10, (64, 80))
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    done = _run_cli(
        "--from",
        "torchvision",
        "--arch",
        "resnet18",
        "--weights",
        str(tmp_path / "r18.pth"),
        "--out",
        str(tmp_path / "ckpt"),
    )
    assert done.returncode == 0, done.stderr

    model, variables = load_checkpoint(tmp_path / "ckpt")
    meta = load_meta(tmp_path / "ckpt")
    assert meta["origin"] == "torchvision"
    assert meta["model"] == "resnet18" and meta["model_kwargs"] == {"num_classes": 10}
    assert meta["preprocess"] == {
        "kind": "mean_std",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    _, in_memory = from_torchvision(net.state_dict(), "resnet18")
    flat = traverse_util.flatten_dict
    assert flat(variables).keys() == flat(in_memory).keys()
    assert all(np.array_equal(variables_v, flat(in_memory)[k]) for k, variables_v in flat(variables).items())
    x = np.random.default_rng(4).normal(size=(2, 64, 80, 3)).astype(np.float32)
    assert _max_diff(model.apply(variables, x, train=False), _torch_logits(net, x)) <= TOL


def test_cli_errors(tmp_path, capsys):
    torch, _ = _torch()
    from resnet_jax.convert.__main__ import main

    torch.save(_torchvision_net("resnet18", 10, (32, 32)).state_dict(), tmp_path / "r18.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")

    def fails(*args: str) -> str:
        assert main(["--out", str(tmp_path / "out"), *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ")
        return err

    assert "cannot read" in fails(
        "--from", "torchvision", "--arch", "resnet18", "--weights", str(tmp_path / "junk.pth")
    )
    assert "no such file" in fails(
        "--from", "torchvision", "--arch", "resnet18", "--weights", str(tmp_path / "x.pth")
    )
    err = fails("--from", "torchvision", "--arch", "resnet50", "--weights", str(tmp_path / "r18.pth"))
    assert "fc.weight: got shape (10, 512), expected (10, 2048)" in err and "--arch resnet18" in err
    assert "unknown Keras arch 'resnet18'" in fails(
        "--from", "keras", "--arch", "resnet18", "--weights", str(tmp_path / "r18.pth")
    )
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    err = fails("--from", "torchvision", "--arch", "resnet18", "--weights", str(tmp_path / "r18.pth"))
    assert "exists; pass --overwrite to replace it" in err and "overwrite=True" not in err
    # Files that are not torch checkpoints: one line each, no traceback.
    (tmp_path / "text.pth").write_text("hello, this is text\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    whole = (tmp_path / "r18.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(whole[: len(whole) // 2])
    for name in ("text.pth", "empty.pth", "truncated.pth"):
        err = fails(
            "--from", "torchvision", "--arch", "resnet18", "--weights", str(tmp_path / name), "--overwrite"
        )
        assert err.count("\n") == 1 and f"cannot read {tmp_path / name} as a torch state dict" in err, err
    assert not any((tmp_path / "out").iterdir())


_KERAS_TF_REFERENCE = """
import sys, h5py, numpy as np, keras
sys.path.insert(0, sys.argv[2])
from test_convert import _randomize_keras
from keras.src.legacy.saving import legacy_h5_format
assert keras.backend.backend() == "tensorflow"
rng = np.random.default_rng(5)
model = keras.applications.ResNet50(
    weights=None, classes=5, input_shape=(64, 80, 3), classifier_activation=None
)
_randomize_keras(model, 6, rng.normal(size=(4, 64, 80, 3)).astype(np.float32))
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
    done = _run_cli(
        "--from",
        "keras",
        "--arch",
        "resnet50",
        "--weights",
        str(tmp_path / "resnet50.h5"),
        "--num-classes",
        "5",
        "--out",
        str(tmp_path / "ckpt"),
    )
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
    assert _max_diff(model.apply(variables, reference["x"], train=False), reference["logits"]) <= TOL

    wrong = _run_cli(
        "--from",
        "keras",
        "--arch",
        "resnet50",
        "--weights",
        str(tmp_path / "resnet50.h5"),
        "--out",
        str(tmp_path / "c2"),
    )
    assert wrong.returncode == 1 and "--num-classes" in wrong.stderr
