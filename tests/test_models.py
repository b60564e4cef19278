"""The registry's models: parameter counts against torchvision's, Keras' and the papers', shapes, stable
names, rebuilding from a checkpoint's meta, the summary CLI and the recipe configs' models."""

import os
import subprocess
import sys
from pathlib import Path

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import (
    ALL,
    DEEP,
    IMAGENET,
    RESNEXT_WIDE,
    abstract_init,
    cases,
    images,
    init,
)

import resnet_jax
from resnet_jax import create_model
from resnet_jax.summary import count_params

# The ImageNet normalisation, for metas.
IMAGENET_SPEC = {"kind": "mean_std", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


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


V0_LOGITS = """
import sys
import numpy as np
import resnet_jax
model, variables = resnet_jax.load_checkpoint(sys.argv[1] + "/checkpoint")
reference = np.load(sys.argv[1] + "/inputs_logits.npz")
assert reference["images"].dtype == np.uint8 and reference["logits"].shape == (4, 10)
logits = np.asarray(resnet_jax.make_predict_fn(model)(variables, reference["images"]))
np.testing.assert_array_equal(logits, reference["logits"])
"""
# The fixture's logits were computed with jaxlib's own XLA:CPU settings; the suite's processes run with
# resnet_jax.xla_flags' defaults, which fuse differently (logits differ by ~2e-6). A '+' item edits XLA's
# list instead of replacing it: adding one it already holds keeps XLA's own default, bitwise.
V0_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=+individual_dot"


def test_resnet20_v0_fixture_logits_are_bitwise_stable():
    # A checkpoint written by the model code before the composable refactor (tests/fixtures/README.md):
    # today's code must read it (same variable names and shapes) and compute bitwise the same logits
    # under the same XLA settings, in a process of its own (XLA reads XLA_FLAGS once per process).
    env = {**os.environ, "XLA_FLAGS": V0_XLA_FLAGS, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", V0_LOGITS, str(FIXTURES / "resnet20_v0")],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize(
    ("name", "num_classes"),
    [pytest.param(*k, marks=pytest.mark.slow) if k[0] in DEEP else k for k in REFERENCE_COUNTS],
)
def test_parameter_counts_equal_references(name, num_classes):
    variables = abstract_init(create_model(name, num_classes=num_classes))
    assert count_params(variables) == REFERENCE_COUNTS[(name, num_classes)]


def test_available_models_lists_every_family():
    assert resnet_jax.available_models() == ALL


@pytest.mark.parametrize("name", cases(n for n in ALL if n != "preact_resnet1001"))  # 1001: counted below
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
    variables = init(model)
    logits, feats = model.apply(variables, images(), train=False, return_features=True)
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
    variables = abstract_init(model)
    assert variables["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 64)
    (_, feats), _ = jax.eval_shape(
        lambda: model.init_with_output(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False, return_features=True
        )
    )
    assert feats["stem"].shape == (1, 32, 32, 64) and feats["stage4"].shape == (1, 4, 4, 512)


def test_submodule_names_are_stable():
    params = abstract_init(create_model("resnet50"))["params"]
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


def test_keras_v2_totals_include_bn_moving_statistics():
    for name, total in KERAS_V2_TOTALS.items():
        variables = abstract_init(create_model(name))
        assert sum(x.size for x in jax.tree.leaves(variables)) == total, name


@pytest.mark.slow
def test_resnext_and_wide_counts_equal_torchvision_models():
    torch = pytest.importorskip("torch")
    models = pytest.importorskip("torchvision.models")
    for name in RESNEXT_WIDE:
        with torch.device("meta"):  # shapes only: no memory for the weights
            net = getattr(models, name)(weights=None)
        expected = sum(p.numel() for p in net.parameters())
        assert count_params(abstract_init(create_model(name))) == expected, name


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


@pytest.mark.parametrize("name", cases(PAPER_COUNTS))
def test_preact_cifar_counts_follow_the_papers(name):
    (weights, bn), millions, with_bn = PAPER_COUNTS[name]
    params = abstract_init(create_model(name))["params"]
    assert count_params({"params": params}) == weights + bn
    bn_params = sum(x.size for k, v in params.items() for x in jax.tree.leaves(v) if "bn" in str(k))
    bn_params += sum(
        x.size for b in params.values() for k, v in b.items() if "bn" in k for x in jax.tree.leaves(v)
    )
    assert bn_params == bn
    assert round((weights + bn if with_bn else weights) / 1e6, 1) == millions
    if name == "wrn28_10":
        assert weights + bn == REFERENCE_COUNTS[(name, None)]


@pytest.mark.parametrize("name", [n for n in ALL if n != "preact_resnet1001"])
def test_every_name_rebuilds_from_its_meta(name):
    import json

    from resnet_jax.checkpoint import make_meta, model_from_meta

    options = {"num_classes": 7, "zero_init_last_bn": True}
    if create_model(name).block.endswith("basic"):
        options["dropout_rate"] = 0.3
    model = create_model(name, **options)
    meta = json.loads(
        json.dumps(make_meta(name, model, preprocess=IMAGENET_SPEC, origin="resnet-jax", step=0))
    )
    assert meta["model_kwargs"] == options
    rebuilt = model_from_meta(meta)
    assert all(getattr(rebuilt, f) == getattr(model, f) for f in resnet_jax.registry.MODEL_FIELDS)


@pytest.mark.parametrize(("name", "size", "count"), [("resnet20", 32, 269_722), ("wrn16_8", 32, 10_961_370)])
def test_summary_uses_the_native_size_and_says_the_total_includes_bn_statistics(name, size, count):
    from resnet_jax.summary import native_image_size, summary

    assert native_image_size(name) == size and native_image_size("resnext50_32x4d") == 224
    text = summary(name, depth=0)
    stats = sum(x.size for x in jax.tree.leaves(abstract_init(create_model(name))["batch_stats"]))
    assert text.startswith(f"{name} on {size}x{size}x3 images.")
    assert f"BatchNorm running statistics (batch_stats: {stats:,}) included" in text
    assert f"Total Parameters: {count + stats:,}" in text
    assert text.rstrip().splitlines()[-1] == f"Trainable parameters: {count:,}"


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


@pytest.mark.parametrize(
    ("config_name", "count", "boundaries_in_epochs"),
    [("cifar10_wrn28_10", 36_479_194, (60, 120, 160)), ("cifar10_preact_resnet164", 1_703_226, None)],
)
def test_recipe_configs_build_their_models(config_name, count, boundaries_in_epochs):
    import importlib

    config = importlib.import_module(f"configs.{config_name}").get_config()
    model = create_model(config.model, num_classes=config.num_classes, **config.model_kwargs.to_dict())
    assert count_params(abstract_init(model)) == count
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
