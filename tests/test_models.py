"""The model family against published references: parameter counts, shapes, BatchNorm semantics."""

import subprocess
import sys
from pathlib import Path

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax
from resnet_jax import BasicBlock, ResidualBlock, create_model, layers
from resnet_jax.summary import count_params

IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
RESNEXT_WIDE = [
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]
KERAS_V2 = ["resnet50v2", "resnet101v2", "resnet152v2"]
CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202"]
PREACT_CIFAR = ["preact_resnet110", "preact_resnet164", "preact_resnet1001"]
WRN = ["wrn16_8", "wrn28_10", "wrn40_4"]
ALL = IMAGENET + RESNEXT_WIDE + KERAS_V2 + CIFAR + PREACT_CIFAR + WRN

# torchvision's model cards (1000 classes) and the paper's CIFAR nets (Table 6 "0.27M" etc., exact counts
# as in torchvision-style counting: conv kernels + BN scale/bias + head weight/bias).
REFERENCE_COUNTS = {
    ("resnet18", None): 11_689_512,
    ("resnet34", None): 21_797_672,
    ("resnet50", None): 25_557_032,
    ("resnet101", None): 44_549_160,
    ("resnet152", None): 60_192_808,
    ("resnet34", 10): 21_289_802,
    ("resnet50", 10): 23_528_522,
    ("resnet20", None): 269_722,
    ("resnet32", None): 464_154,
    ("resnet44", None): 658_586,
    ("resnet56", None): 853_018,
    ("resnet110", None): 1_727_962,
    ("resnet1202", None): 19_421_274,
    # torchvision's model cards.
    ("resnext50_32x4d", None): 25_028_904,
    ("resnext101_32x8d", None): 88_791_336,
    ("resnext101_64x4d", None): 83_455_272,
    ("wide_resnet50_2", None): 68_883_240,
    ("wide_resnet101_2", None): 126_886_696,
    # Keras' ResNet50V2/101V2/152V2 "trainable params".
    ("resnet50v2", None): 25_568_360,
    ("resnet101v2", None): 44_577_896,
    ("resnet152v2", None): 60_236_904,
    # WRN-28-10 on CIFAR-10, as its authors' code counts it.
    ("wrn28_10", None): 36_479_194,
}
# Keras' "total params" of ResNet50V2/101V2/152V2: trainable plus the BN moving statistics.
KERAS_V2_TOTALS = {"resnet50v2": 25_613_800, "resnet101v2": 44_675_560, "resnet152v2": 60_380_648}


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_resnet20_v0_fixture_logits_are_bitwise_stable():
    # A checkpoint written by the model code before the composable refactor (tests/fixtures/README.md):
    # today's code must read it (same variable names and shapes) and compute bitwise the same logits.
    model, variables = resnet_jax.load_checkpoint(FIXTURES / "resnet20_v0" / "checkpoint")
    reference = np.load(FIXTURES / "resnet20_v0" / "inputs_logits.npz")
    assert reference["images"].dtype == np.uint8 and reference["logits"].shape == (4, 10)
    logits = np.asarray(resnet_jax.make_predict_fn(model)(variables, reference["images"]))
    np.testing.assert_array_equal(logits, reference["logits"])


def _abstract_init(model, size=32, batch=1):
    x = jnp.zeros((batch, size, size, 3))
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _init(model, size=32, batch=2, seed=0):
    x = jnp.zeros((batch, size, size, 3))
    return model.init(jax.random.key(seed), x, train=False)


def _factories(train, norm="batch"):
    conv = layers.make_conv(use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32)
    kw = dict(train=train, momentum=0.9, epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32)
    return dict(conv=conv, norm=layers.make_norm(norm, **kw))


# The deepest nets trace thousands of layers (20-40 s each on 2 cores): the full tier only.
DEEP = ("resnet1202", "preact_resnet1001")


def _cases(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in DEEP else n for n in names]


def _images(batch=4, size=32, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


@pytest.mark.parametrize(
    ("name", "num_classes"),
    [pytest.param(*k, marks=pytest.mark.slow) if k[0] in DEEP else k for k in REFERENCE_COUNTS],
)
def test_parameter_counts_equal_references(name, num_classes):
    variables = _abstract_init(create_model(name, num_classes=num_classes))
    assert count_params(variables) == REFERENCE_COUNTS[(name, num_classes)]


def test_available_models_lists_every_family():
    assert resnet_jax.available_models() == ALL


@pytest.mark.parametrize("name", _cases(n for n in ALL if n != "preact_resnet1001"))  # 1001: counted below
def test_output_shapes_32(name):
    model = create_model(name, num_classes=7)
    logits = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((3, 32, 32, 3)), train=False)[0]
    )
    assert logits.shape == (3, 7) and logits.dtype == jnp.float32


@pytest.mark.parametrize("name", IMAGENET)
def test_output_and_feature_shapes_224(name):
    model = create_model(name)
    (logits, feats), _ = jax.eval_shape(
        lambda: model.init_with_output(
            jax.random.key(0), jnp.zeros((2, 224, 224, 3)), train=False, return_features=True
        )
    )
    assert logits.shape == (2, 1000)
    c = 1 if name in ("resnet18", "resnet34") else 4
    assert feats["stem"].shape == (2, 56, 56, 64)
    assert feats["stage1"].shape == (2, 56, 56, 64 * c)
    assert feats["stage2"].shape == (2, 28, 28, 128 * c)
    assert feats["stage3"].shape == (2, 14, 14, 256 * c)
    assert feats["stage4"].shape == (2, 7, 7, 512 * c)
    assert feats["pooled"].shape == (2, 512 * c)


def test_cifar_family_feature_shapes_and_real_forward():
    model = create_model("resnet20")
    variables = _init(model)
    logits, feats = model.apply(variables, _images(), train=False, return_features=True)
    assert [feats[k].shape for k in ("stem", "stage1", "stage2", "stage3", "pooled")] == [
        (4, 32, 32, 16),
        (4, 32, 32, 16),
        (4, 16, 16, 32),
        (4, 8, 8, 64),
        (4, 64),
    ]
    chex.assert_tree_all_finite(logits)
    # The head is applied to the pooled features.
    head = variables["params"]["head"]
    np.testing.assert_allclose(logits, feats["pooled"] @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)


def test_cifar_stem_option_on_imagenet_family():
    model = create_model("resnet18", num_classes=10, cifar_stem=True)
    variables = _abstract_init(model)
    assert variables["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 64)
    (_, feats), _ = jax.eval_shape(
        lambda: model.init_with_output(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False, return_features=True
        )
    )
    assert feats["stem"].shape == (1, 32, 32, 64) and feats["stage4"].shape == (1, 4, 4, 512)


def test_submodule_names_are_stable():
    params = _abstract_init(create_model("resnet50"))["params"]
    assert {"stem_conv", "stem_bn", "head"} <= set(params)
    assert set(params["stage2_block0"]) == {
        "conv1",
        "bn1",
        "conv2",
        "bn2",
        "conv3",
        "bn3",
        "shortcut_conv",
        "shortcut_bn",
    }
    assert set(params["stage2_block1"]) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3"}
    assert "stage4_block2" in params and "stage4_block3" not in params
    assert "bias" not in params["stage1_block0"]["conv1"]  # conv before BN: no bias


def test_option_a_has_no_shortcut_parameters_and_option_b_has():
    a = _abstract_init(create_model("resnet20"))["params"]
    assert not [
        p for p in jax.tree_util.tree_flatten_with_path(a)[0] if "shortcut" in jax.tree_util.keystr(p[0])
    ]
    b = _abstract_init(create_model("resnet20", shortcut="projection"))["params"]
    assert set(b["stage2_block0"]) >= {"shortcut_conv", "shortcut_bn"}
    assert b["stage2_block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 16, 32)
    assert "shortcut_conv" not in b["stage1_block0"]  # identity where shapes match


@pytest.mark.parametrize("shortcut", ["zero_pad", "projection"])
def test_shortcut_semantics_with_zeroed_residual_branch(shortcut):
    # With the last BN scale at zero the residual branch outputs exactly zero, so the block is
    # relu(shortcut(x)): option A must be stride-2 subsampling with zero channels appended.
    block = BasicBlock(
        8, stride=2, shortcut=layers.SHORTCUTS[shortcut], zero_init_last=True, **_factories(train=False)
    )
    x = jnp.abs(_images(2, 6))
    variables = block.init(jax.random.key(0), x, train=False)
    y = block.apply(variables, x, train=False)
    assert y.shape == (2, 3, 3, 8)
    if shortcut == "zero_pad":
        np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2, :])
        np.testing.assert_array_equal(y[..., 3:], 0.0)
        assert "shortcut_conv" not in variables["params"]
    else:
        kernel = variables["params"]["shortcut_conv"]["kernel"][0, 0]
        expected = jax.nn.relu((x[:, ::2, ::2, :] @ kernel) / jnp.sqrt(1 + 1e-5))
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_zero_pad_cannot_reduce_channels():
    block = ResidualBlock(2, stride=1, shortcut=layers.zero_pad_shortcut, **_factories(train=False))
    with pytest.raises(ValueError, match="cannot reduce channels"):
        block.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)), train=False)


@pytest.mark.parametrize(("stride_in_1x1", "conv1_hw", "conv2_hw"), [(False, 8, 4), (True, 4, 4)])
def test_bottleneck_stride_placement(stride_in_1x1, conv1_hw, conv2_hw):
    model = create_model("resnet50", stride_in_1x1=stride_in_1x1)
    x = jnp.zeros((1, 32, 32, 3))
    variables = _init(model, batch=1)
    _, state = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    block = state["intermediates"]["stage2_block0"]
    assert block["conv1"]["__call__"][0].shape[1] == conv1_hw
    assert block["conv2"]["__call__"][0].shape[1] == conv2_hw


def test_train_mode_updates_batch_stats_with_pytorch_momentum():
    model = create_model("resnet20")
    variables = _init(model)
    x = _images()
    _, inter = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    stats = updates["batch_stats"]
    assert not jax.tree.all(jax.tree.map(jnp.array_equal, stats, variables["batch_stats"]))
    # PyTorch momentum 0.1 == Flax 0.9: new running mean = 0.9 * 0 + 0.1 * batch mean.
    stem_out = inter["intermediates"]["stem_conv"]["__call__"][0]
    np.testing.assert_allclose(stats["stem_bn"]["mean"], 0.1 * stem_out.mean(axis=(0, 1, 2)), atol=1e-6)


def test_eval_mode_uses_running_stats_changes_nothing_and_is_deterministic():
    model = create_model("resnet20")
    variables = _init(model)
    x = _images()
    logits, updates = model.apply(variables, x, train=False, mutable=["batch_stats"])
    chex.assert_trees_all_equal(updates["batch_stats"], variables["batch_stats"])
    np.testing.assert_array_equal(logits, model.apply(variables, x, train=False))
    # Running statistics: an example's logits do not depend on the rest of the batch.
    np.testing.assert_allclose(model.apply(variables, x[:1], train=False), logits[:1], rtol=1e-5, atol=1e-6)
    train_logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(train_logits, logits)


def test_train_is_keyword_only_and_required():
    model = create_model("resnet20")
    variables = _init(model)
    with pytest.raises(TypeError):
        model.apply(variables, _images())
    with pytest.raises(TypeError):
        model.apply(variables, _images(), True)
    with pytest.raises(flax.errors.ModifyScopeVariableError):
        model.apply(variables, _images(), train=True)  # train mode must be given a mutable batch_stats


def test_jit_and_eager_agree():
    model = create_model("resnet20")
    variables = _init(model)
    x = _images()
    eager = model.apply(variables, x, train=False)
    jitted = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_state_and_logits():
    f32 = create_model("resnet20")
    bf16 = create_model("resnet20", dtype=jnp.bfloat16)
    variables = _init(f32)
    x = _images()
    logits, updates = bf16.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.dtype == jnp.float32
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(updates["batch_stats"]))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(_init(bf16)["params"]))
    ref, _ = f32.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(logits, ref, atol=0.1 * float(jnp.abs(ref).max()) + 0.05)
    # The computation really is bfloat16: intermediate activations, and logits that differ from float32's.
    _, feats = bf16.apply(variables, x, train=False, return_features=True)
    _, feats32 = f32.apply(variables, x, train=False, return_features=True)
    assert {feats[k].dtype for k in ("stem", "stage1", "stage3")} == {jnp.dtype(jnp.bfloat16)}
    assert {feats32[k].dtype for k in ("stem", "stage1", "stage3")} == {jnp.dtype(jnp.float32)}
    assert not np.array_equal(np.asarray(logits), np.asarray(ref))
    grads = jax.grad(lambda p: bf16.apply({**variables, "params": p}, x, train=False).sum())(
        variables["params"]
    )
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


@pytest.mark.slow
def test_bn_and_bias_options_reach_the_layers():
    model = create_model("resnet50", bn_momentum=0.99, bn_epsilon=0.5, conv_bias=True)
    params = _abstract_init(model)["params"]
    assert params["stage1_block0"]["conv1"]["bias"].shape == (64,)
    assert params["stage3_block0"]["shortcut_conv"]["bias"].shape == (1024,)
    variables = _init(model, batch=1)
    x = _images(2)
    _, inter = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    conv_out = inter["intermediates"]["stem_conv"]["__call__"][0]
    bn_out = inter["intermediates"]["stem_bn"]["__call__"][0]
    # Fresh running stats (mean 0, var 1): eval-mode BN is x / sqrt(1 + epsilon).
    np.testing.assert_allclose(bn_out, conv_out / np.sqrt(1.5), rtol=1e-5, atol=1e-6)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(
        updates["batch_stats"]["stem_bn"]["mean"], 0.01 * conv_out.mean(axis=(0, 1, 2)), atol=1e-6
    )


def test_zero_init_last_bn():
    params = _init(create_model("resnet18", zero_init_last_bn=True))["params"]
    assert not params["stage1_block0"]["bn2"]["scale"].any()
    assert params["stage1_block0"]["bn1"]["scale"].all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(name="resnet19"), "unknown model 'resnet19'; available: resnet18"),
        (dict(name="resnet50", num_classes=0), "num_classes must be a positive integer, got 0"),
        (dict(name="resnet50", num_classes=-3), "got -3"),
        (dict(name="resnet50", num_classes=2.5), "got 2.5"),
        (dict(name="resnet20", shortcut="C"), "unknown shortcut 'C'; valid: projection, zero_pad"),
        (dict(name="resnet20", dtype=jnp.int32), "dtype must be a floating dtype"),
        (dict(name="resnet20", param_dtype="int8"), "param_dtype must be a floating dtype"),
        (dict(name="resnet20", dtype="no-such-type"), "dtype must be a floating dtype"),
        (dict(name="resnet20", widths=3), "unknown option.*widths.*valid: block, num_classes"),
        (dict(name="resnet20", bn_momentum=1.5), "bn_momentum must be in"),
        (dict(name="resnet20", groups=2), "groups and base_width are for bottleneck blocks"),
        (dict(name="resnext50_32x4d", groups=0), "groups must be a positive integer, got 0"),
        (dict(name="resnet50", dropout_rate=0.3), "dropout_rate must be in .* needs basic blocks"),
        (dict(name="wrn16_8", dropout_rate=1.0), "dropout_rate must be in"),
        (dict(name="resnet20", norm="group"), r"norm='group' needs every width divisible by 32.*\[16\]"),
        (dict(name="resnet50", norm="layer"), "unknown norm 'layer'; valid: batch, frozen_batch, group"),
        (dict(name="resnet50", stride_block="middle"), "unknown stride_block 'middle'; valid: first, last"),
        (
            dict(name="resnet50", block="preact"),
            "unknown block 'preact'; valid: basic, bottleneck, preact_basic",
        ),
    ],
)
def test_bad_arguments_raise_clear_value_errors(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message):
        create_model(name, **kwargs)


@pytest.mark.slow
def test_summary_cli_ends_with_reference_total():
    cmd = [
        sys.executable,
        "-m",
        "resnet_jax.summary",
        "resnet50",
        "--num-classes",
        "10",
        "--image-size",
        "224",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "stage4_block2" in out
    assert out.rstrip().splitlines()[-1] == "Trainable parameters: 23,528,522"
    bad = subprocess.run([*cmd[:3], "resnet51"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown model 'resnet51'" in bad.stderr


def test_seed_transfer_head():
    # The seed article's head: Dense(1024) + ReLU + Dense(num_classes) on the pooled features.
    model = create_model("resnet50", num_classes=10, head_hidden=1024)
    params = _abstract_init(model)["params"]
    assert params["head_hidden"]["kernel"].shape == (2048, 1024)
    assert params["head"]["kernel"].shape == (1024, 10)
    assert count_params({"params": params}) == 23_528_522 - 20_490 + 2048 * 1024 + 1024 + 1024 * 10 + 10
    small = create_model("resnet20", head_hidden=8)
    variables = _init(small)
    logits, feats = small.apply(variables, _images(), train=False, return_features=True)
    p = variables["params"]
    hidden = jax.nn.relu(feats["pooled"] @ p["head_hidden"]["kernel"] + p["head_hidden"]["bias"])
    np.testing.assert_allclose(logits, hidden @ p["head"]["kernel"] + p["head"]["bias"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="head_hidden must be a non-negative integer"):
        create_model("resnet20", head_hidden=-1)


# ----------------------------------------------------------------------------------------------
# ResNeXt, Wide ResNet, pre-activation ResNet v2


def test_keras_v2_totals_include_bn_moving_statistics():
    for name, total in KERAS_V2_TOTALS.items():
        variables = _abstract_init(create_model(name))
        assert sum(x.size for x in jax.tree.leaves(variables)) == total, name


@pytest.mark.slow
def test_resnext_and_wide_counts_equal_torchvision_models():
    torch = pytest.importorskip("torch")
    models = pytest.importorskip("torchvision.models")
    for name in RESNEXT_WIDE:
        with torch.device("meta"):  # shapes only: no memory for the weights
            net = getattr(models, name)(weights=None)
        expected = sum(p.numel() for p in net.parameters())
        assert count_params(_abstract_init(create_model(name))) == expected, name


def _preact_bottleneck_count(n, widths=(64, 128, 256), stem=16, classes=10):
    """(weights, BN parameters) of the 2016 paper's 9n+2 CIFAR net, from its description.

    A unit with c_in inputs, c outputs and bottleneck w = c/4 has 1x1, 3x3, 1x1 conv kernels
    c_in*w + 9*w*w + w*c, BNs of 2*c_in (pre-activation; none in the first unit, which follows the bare
    stem conv) + 2*w + 2*w, and a c_in*c projection where c_in != c. An identity unit (c_in = c = 4w)
    is 17w^2 + 12w. Stem 3x3x3x16, final BN 2*256, head 256*10 + 10; no conv biases.
    """
    weights, bn, c_in = 27 * stem, 0, stem
    for s, c in enumerate(widths):
        w = c // 4
        for b in range(n):
            bn += (0 if s == b == 0 else 2 * c_in) + 4 * w
            weights += c_in * w + 9 * w * w + w * c + (c_in * c if c_in != c else 0)
            c_in = c
    return weights + c_in * classes + classes, bn + 2 * c_in


def _preact_basic_count(n, widths, stem=16, classes=10, first_preact=True):
    """(weights, BN parameters) of a pre-activation CIFAR net of basic units (ResNet-110 v2, WRN-d-k).

    A unit: BN 2*c_in (unless it is the first and follows the bare stem conv), 3x3 conv 9*c_in*c, BN 2*c,
    3x3 conv 9*c*c, and a 1x1 projection c_in*c where the channels change. Stem, final BN, head as above.
    """
    weights, bn, c_in = 27 * stem, 0, stem
    for s, c in enumerate(widths):
        for b in range(n):
            bn += (2 * c_in if first_preact or s or b else 0) + 2 * c
            weights += 9 * c_in * c + 9 * c * c + (c_in * c if c_in != c else 0)
            c_in = c
    return weights + c_in * classes + classes, bn + 2 * c_in


# name -> (weights, BN params) from the papers' descriptions, and the papers' figure in millions. The 2016
# paper's 1.7M and 10.2M round the weights without BN parameters (1,679,034 and 10,178,490); with them the
# nets have 1,703,226 and 10,327,674. The WRN paper's figures include BN (WRN-28-10: 36,479,194 exactly).
PAPER_COUNTS = {
    "preact_resnet110": (_preact_basic_count(18, (16, 32, 64), first_preact=False), 1.7, False),
    "preact_resnet164": (_preact_bottleneck_count(18), 1.7, False),
    "preact_resnet1001": (_preact_bottleneck_count(111), 10.2, False),
    "wrn16_8": (_preact_basic_count(2, (128, 256, 512)), 11.0, True),
    "wrn28_10": (_preact_basic_count(4, (160, 320, 640)), 36.5, True),
    "wrn40_4": (_preact_basic_count(6, (64, 128, 256)), 8.9, True),
}


@pytest.mark.parametrize("name", _cases(PAPER_COUNTS))
def test_preact_cifar_counts_follow_the_papers(name):
    (weights, bn), millions, with_bn = PAPER_COUNTS[name]
    params = _abstract_init(create_model(name))["params"]
    assert count_params({"params": params}) == weights + bn
    bn_params = sum(x.size for k, v in params.items() for x in jax.tree.leaves(v) if "bn" in str(k))
    bn_params += sum(
        x.size for b in params.values() for k, v in b.items() if "bn" in k for x in jax.tree.leaves(v)
    )
    assert bn_params == bn
    assert round((weights + bn if with_bn else weights) / 1e6, 1) == millions
    if name == "wrn28_10":
        assert weights + bn == REFERENCE_COUNTS[(name, None)]


def test_preact_and_keras_v2_layouts():
    p = _abstract_init(create_model("preact_resnet164"))["params"]
    assert "stem_bn" not in p and p["post_bn"]["scale"].shape == (256,)
    # The first unit follows the bare stem conv: no preact BN; later units have one.
    assert set(p["stage1_block0"]) == {"conv1", "bn1", "conv2", "bn2", "conv3", "shortcut_conv"}
    assert set(p["stage1_block1"]) == {"preact_bn", "conv1", "bn1", "conv2", "bn2", "conv3"}
    assert set(p["stage2_block0"]) == {"preact_bn", "conv1", "bn1", "conv2", "bn2", "conv3", "shortcut_conv"}
    w = _abstract_init(create_model("wrn16_8"))["params"]
    assert set(w["stage1_block0"]) == {"preact_bn", "conv1", "bn1", "conv2", "shortcut_conv"}
    assert w["stage1_block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 16, 128)
    assert "shortcut_conv" not in w["stage1_block1"]
    # Keras puts biases on the convs no BN follows: stem, last conv of a unit, projection.
    v2 = _abstract_init(create_model("resnet50v2"))["params"]
    assert v2["stem_conv"]["bias"].shape == (64,)
    assert "bias" not in v2["stage1_block0"]["conv1"] and "bias" not in v2["stage1_block0"]["conv2"]
    assert v2["stage1_block0"]["conv3"]["bias"].shape == (256,)
    assert v2["stage1_block0"]["shortcut_conv"]["bias"].shape == (256,)
    # Only the first unit of a stage changes channels; the last one strides with a subsampled shortcut.
    assert "shortcut_conv" not in v2["stage1_block2"]
    x = jnp.zeros((2, 224, 224, 3))
    (_, feats), _ = jax.eval_shape(
        lambda: create_model("resnet50v2").init_with_output(
            jax.random.key(0), x, train=False, return_features=True
        )
    )
    shapes = [feats[k].shape[1:] for k in ("stem", "stage1", "stage2", "stage3", "stage4")]
    assert shapes == [(56, 56, 64), (28, 28, 256), (14, 14, 512), (7, 7, 1024), (7, 7, 2048)]
    r = _abstract_init(create_model("resnext50_32x4d"))["params"]
    assert r["stage1_block0"]["conv2"]["kernel"].shape == (3, 3, 4, 128)  # 32 groups of 4 channels
    assert _abstract_init(create_model("wide_resnet50_2"))["params"]["stage4_block0"]["conv2"][
        "kernel"
    ].shape == (
        3,
        3,
        1024,
        1024,
    )


@pytest.mark.slow
@pytest.mark.parametrize("block", [resnet_jax.PreActBasicBlock, resnet_jax.PreActBottleneckBlock])
def test_preact_block_shortcuts(block):
    # A zero last-norm scale makes the residual branch exactly zero, leaving the shortcut: the identity,
    # a 1x1 subsampling where only the stride changes (Keras' MaxPooling2D(1, 2)), or a projection of the
    # pre-activated input where the channels change.
    x = _images(2, 6)
    for features, stride, expected in ((8, 1, x), (8, 2, x[:, ::2, ::2]), (16, 2, None)):
        xin = jnp.concatenate([x, x, x[..., :2]], -1)  # 8 channels
        m = block(features, stride=stride, zero_init_last=True, **_factories(train=False))
        variables = m.init(jax.random.key(0), xin, train=False)
        y = m.apply(variables, xin, train=False)
        if expected is None:
            kernel = variables["params"]["shortcut_conv"]["kernel"][0, 0]
            p = jax.nn.relu(xin / jnp.sqrt(1 + 1e-5))[:, ::2, ::2]
            np.testing.assert_allclose(y, p @ kernel, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(y, jnp.concatenate([expected, expected, expected[..., :2]], -1))


def _small_wrn(**kwargs):
    return resnet_jax.ResNet(
        (1, 1, 1),
        (16, 32, 64),
        block="preact_basic",
        num_classes=10,
        stem_features=16,
        cifar_stem=True,
        **kwargs,
    )


@pytest.mark.slow
def test_dropout_needs_an_rng_only_in_training():
    model = _small_wrn(dropout_rate=0.3)
    variables = _init(model)
    x = _images()
    # No dropout parameters: the same variables as without dropout.
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, _init(_small_wrn()))
    eval_logits = model.apply(variables, x, train=False)  # no rng needed
    np.testing.assert_array_equal(eval_logits, _small_wrn().apply(variables, x, train=False))
    with pytest.raises(flax.errors.InvalidRngError):
        model.apply(variables, x, train=True, mutable=["batch_stats"])
    runs = [
        model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(k)})[0]
        for k in (0, 0, 1)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])
    no_dropout, _ = _small_wrn().apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(runs[0], no_dropout)


@pytest.mark.slow
def test_group_norm_is_one_factory_change():
    model = create_model("resnet18", num_classes=10, norm="group")
    variables = _init(model)
    assert set(variables) == {"params"}  # GroupNorm keeps no running statistics
    assert set(variables["params"]["stem_bn"]) == {"scale", "bias"}
    x = _images()
    logits = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(logits, model.apply(variables, x, train=True))  # no batch dependence
    np.testing.assert_allclose(model.apply(variables, x[:1], train=False), logits[:1], rtol=1e-5, atol=1e-5)
    # Same parameter names and shapes as the BatchNorm model.
    bn = _abstract_init(create_model("resnet18", num_classes=10))["params"]
    assert jax.tree.map(jnp.shape, bn) == jax.tree.map(jnp.shape, variables["params"])


def test_frozen_batch_on_a_preact_net_keeps_statistics():
    model, frozen = _small_wrn(), _small_wrn(norm="frozen_batch")
    variables = _init(model)
    x = _images()
    logits, updates = frozen.apply(variables, x, train=True, mutable=["batch_stats"])
    chex.assert_trees_all_equal(updates["batch_stats"], variables["batch_stats"])
    np.testing.assert_array_equal(logits, model.apply(variables, x, train=False))


@pytest.mark.parametrize("name", [n for n in ALL if n != "preact_resnet1001"])
def test_every_name_rebuilds_from_its_meta(name):
    import json

    from resnet_jax.checkpoint import make_meta, model_from_meta

    options = {"num_classes": 7, "zero_init_last_bn": True}
    if create_model(name).block.endswith("basic"):
        options["dropout_rate"] = 0.3
    model = create_model(name, **options)
    meta = json.loads(json.dumps(make_meta(name, model, preprocess=IMAGENET, origin="resnet-jax", step=0)))
    assert meta["model_kwargs"] == options
    rebuilt = model_from_meta(meta)
    assert all(getattr(rebuilt, f) == getattr(model, f) for f in resnet_jax.registry.MODEL_FIELDS)


IMAGENET = {"kind": "mean_std", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.mark.parametrize(("name", "size", "count"), [("resnet20", 32, 269_722), ("wrn16_8", 32, 10_961_370)])
def test_summary_uses_the_native_size_and_says_the_total_includes_bn_statistics(name, size, count):
    from resnet_jax.summary import native_image_size, summary

    assert native_image_size(name) == size and native_image_size("resnext50_32x4d") == 224
    text = summary(name, depth=0)
    stats = sum(x.size for x in jax.tree.leaves(_abstract_init(create_model(name))["batch_stats"]))
    assert text.startswith(f"{name} on {size}x{size}x3 images.")
    assert f"BatchNorm running statistics (batch_stats: {stats:,}) included" in text
    assert f"Total Parameters: {count + stats:,}" in text
    assert text.rstrip().splitlines()[-1] == f"Trainable parameters: {count:,}"


@pytest.mark.parametrize(
    ("config_name", "count", "boundaries_in_epochs"),
    [("cifar10_wrn28_10", 36_479_194, (60, 120, 160)), ("cifar10_preact_resnet164", 1_703_226, None)],
)
def test_recipe_configs_build_their_models(config_name, count, boundaries_in_epochs):
    import importlib

    config = importlib.import_module(f"configs.{config_name}").get_config()
    model = create_model(config.model, num_classes=config.num_classes, **config.model_kwargs.to_dict())
    assert count_params(_abstract_init(model)) == count
    steps_per_epoch = 50_000 // config.batch_size
    if boundaries_in_epochs:  # the WRN paper: x0.2 at epochs 60/120/160 of 200, Nesterov, wd 5e-4
        assert tuple(b / steps_per_epoch for b in config.lr_boundaries) == boundaries_in_epochs
        assert config.num_train_steps == 200 * steps_per_epoch
        assert (config.lr_decay_factor, config.nesterov, config.weight_decay) == (0.2, True, 5e-4)
        assert model.dropout_rate == 0.0
        # The documented override reaches the blocks: training then needs a dropout key (traced only).
        with_dropout = create_model(config.model, dropout_rate=0.3)
        x = jnp.zeros((1, 32, 32, 3))
        variables = jax.eval_shape(lambda: with_dropout.init(jax.random.key(0), x, train=False))

        def train_step(m, rngs):
            return jax.eval_shape(
                lambda v: m.apply(v, x, train=True, mutable=["batch_stats"], rngs=rngs), variables
            )

        train_step(with_dropout, {"dropout": jax.random.key(1)})
        with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
            train_step(with_dropout, None)
        train_step(model, None)  # without the override no dropout runs, so no key is needed
    else:  # the 2016 paper: 0.01 for 400 iterations, then 0.1, /10 at 32k and 48k, 64k iterations
        assert (config.warmup, config.warmup_lr, config.warmup_steps) == ("constant", 0.01, 400)
        assert tuple(config.lr_boundaries) == (32_000, 48_000) and config.num_train_steps == 64_000
        assert (config.learning_rate, config.lr_decay_factor, config.weight_decay) == (0.1, 0.1, 1e-4)
