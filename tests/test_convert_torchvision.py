"""torchvision weight import: converted models compute torchvision's logits; bad state dicts are named.

The reference nets (tests/convert_helpers.py) have random weights and perturbed BatchNorm statistics.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convert_helpers import TOL, max_diff, meta_state_dict, torch_logits, torchvision_net

# (arch, num_classes, input height, width): every size on a non-square input, one with odd sides.
# A basic-block and a bottleneck net in the fast tier; the rest in the full tier (seconds each on 2 cores).
TORCHVISION_CASES = [
    ("resnet18", 1000, 160, 224),
    pytest.param("resnet34", 10, 96, 128, marks=pytest.mark.slow),
    ("resnet50", 7, 97, 131),
    pytest.param("resnet101", 10, 64, 96, marks=pytest.mark.slow),
    pytest.param("resnet152", 10, 64, 96, marks=pytest.mark.slow),
    pytest.param("resnext50_32x4d", 10, 64, 48, marks=pytest.mark.slow),
    pytest.param("wide_resnet50_2", 10, 64, 48, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("arch,num_classes,height,width", TORCHVISION_CASES)
def test_torchvision_logits_match(arch, num_classes, height, width):
    from resnet_jax.convert import from_torchvision

    net = torchvision_net(arch, num_classes, (height, width))
    x = np.random.default_rng(1).normal(size=(2, height, width, 3)).astype(np.float32)
    model, variables = from_torchvision(net.state_dict(), arch)

    assert model.num_classes == num_classes
    assert (model.stride_in_1x1, model.conv_bias, model.bn_epsilon) == (False, False, 1e-5)
    assert set(variables) == {"params", "batch_stats"}
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
    expected = torch_logits(net, x)
    got = model.apply(variables, x, train=False)
    assert got.shape == expected.shape
    assert max_diff(got, expected) <= TOL, (arch, max_diff(got, expected))
    # The statistics matter: the same weights with fresh BN statistics give other logits.
    fresh = {
        "params": variables["params"],
        "batch_stats": jax.tree.map(jnp.ones_like, variables["batch_stats"]),
    }
    assert max_diff(model.apply(fresh, x, train=False), expected) > 100 * TOL


def test_torchvision_accepts_numpy_and_modules():
    from resnet_jax.convert import from_torchvision

    net = torchvision_net("resnet18", 5, (64, 64))
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

    sd = {k: v.numpy() for k, v in torchvision_net("resnet18", 10, (32, 32)).state_dict().items()}
    del sd["layer2.1.bn1.running_var"]
    del sd["fc.bias"]
    sd["extra.weight"] = np.zeros((3, 4), np.float32)
    sd["conv1.weight"] = np.zeros((64, 3, 5, 5), np.float32)
    with pytest.raises(ValueError) as info:
        from_torchvision(sd, "resnet18")
    message = str(info.value)
    assert "2 missing, 1 unexpected, 1 mis-shaped" in message
    assert "missing layer2.1.bn1.running_var (expected shape (128,))" in message
    assert "missing fc.bias (expected shape (10,))" in message
    assert "unexpected extra.weight (shape (3, 4))" in message
    assert "mis-shaped conv1.weight: got shape (64, 3, 5, 5), expected (64, 3, 7, 7)" in message


def test_torchvision_wrong_arch_is_named():
    from resnet_jax.convert import from_torchvision

    sd = torchvision_net("resnet50", 1000, (32, 32)).state_dict()
    with pytest.raises(ValueError) as info:
        from_torchvision(sd, "resnet18")
    message = str(info.value)
    assert "unexpected layer1.0.conv3.weight" in message
    assert "mis-shaped layer1.0.conv1.weight: got shape (64, 64, 1, 1), expected (64, 64, 3, 3)" in message
    assert (
        "hint: the state dict's keys and shapes fit torchvision's resnet50: pass arch='resnet50'" in message
    )
    with pytest.raises(ValueError, match="unknown torchvision arch 'resnet20'"):
        from_torchvision(sd, "resnet20")


@pytest.mark.parametrize("given,fits", [("resnet152", "resnet18"), ("resnet18", "resnet152")])
def test_wrong_arch_error_is_the_hint_then_counts_then_ten_keys_a_kind(given, fits):
    from resnet_jax.convert import from_torchvision

    # Zeros of the right shapes: only names and shapes matter here (np.zeros touches no memory).
    sd = {k: np.zeros(shape, np.float32) for k, shape in meta_state_dict(fits).items()}
    with pytest.raises(ValueError) as info:
        from_torchvision(sd, given)
    lines = str(info.value).splitlines()
    # Unabridged, either way is 703 lines.
    assert len(lines) <= 2 + 3 * 11, "\n".join(lines)
    assert lines[0] == (
        f"torchvision {given} state dict does not fit the model; hint: the state dict's keys and shapes "
        f"fit torchvision's {fits}: pass arch={fits!r} (CLI: --arch {fits})"
    )
    counts = lines[1].rstrip(":").split(", ")
    assert [c.split(" ", 1)[1] for c in counts] == ["missing", "unexpected", "mis-shaped"]
    for kind, count in zip(("missing", "unexpected", "mis-shaped"), counts, strict=True):
        listed = [line for line in lines if line.startswith(f"  {kind} ")]
        n = int(count.split()[0])
        assert len(listed) == min(n, 10), (kind, n, listed)
        assert (f"  ... and {n - 10} more {kind}" in lines) == (n > 10)
    assert any(line.startswith("  ... and ") for line in lines)


@pytest.mark.parametrize("arch", ["resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2"])
def test_torchvision_101s_map_every_key_and_shape(arch):
    from resnet_jax.convert.torchvision import _expected_shapes

    assert _expected_shapes(arch, 1000) == meta_state_dict(arch)


def test_torchvision_wrapped_state_dicts():
    from resnet_jax.convert import from_torchvision

    sd = torchvision_net("resnet18", 5, (32, 32)).state_dict()
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
    sd = {k: np.zeros(shape, np.float32) for k, shape in meta_state_dict("resnext50_32x4d").items()}
    for arch in ("resnet50", "wide_resnet50_2"):
        with pytest.raises(
            ValueError, match="fit torchvision's resnext50_32x4d: pass arch='resnext50_32x4d'"
        ):
            from_torchvision(sd, arch)
    model, _ = from_torchvision(sd, "resnext50_32x4d")
    assert (model.groups, model.base_width) == (32, 4)
