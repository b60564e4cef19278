"""What the options do inside the network: shortcuts, strides, BatchNorm in train and eval mode, dtypes,
conv biases, zero-init, pre-activation layouts, dropout, GroupNorm and frozen BatchNorm."""

import functools

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import (
    abstract_init,
    factories,
    images,
    init,
    small_wrn,
)

import resnet_jax
from resnet_jax import BasicBlock, ResidualBlock, create_model, layers
from resnet_jax.summary import count_params


def test_option_a_has_no_shortcut_parameters_and_option_b_has():
    a = abstract_init(create_model("resnet20"))["params"]
    assert not [
        p for p in jax.tree_util.tree_flatten_with_path(a)[0] if "shortcut" in jax.tree_util.keystr(p[0])
    ]
    b = abstract_init(create_model("resnet20", shortcut="projection"))["params"]
    assert set(b["stage2_block0"]) >= {"shortcut_conv", "shortcut_bn"}
    assert b["stage2_block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 16, 32)
    assert "shortcut_conv" not in b["stage1_block0"]  # identity where shapes match


@pytest.mark.parametrize("shortcut", ["zero_pad", "projection"])
def test_shortcut_semantics_with_zeroed_residual_branch(shortcut):
    # With the last BN scale at zero the residual branch outputs exactly zero, so the block is
    # relu(shortcut(x)): option A must be stride-2 subsampling with zero channels appended.
    block = BasicBlock(
        8, stride=2, shortcut=layers.SHORTCUTS[shortcut], zero_init_last=True, **factories(train=False)
    )
    x = jnp.abs(images(2, 6))
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
    block = ResidualBlock(2, stride=1, shortcut=layers.zero_pad_shortcut, **factories(train=False))
    with pytest.raises(ValueError, match="cannot reduce channels"):
        block.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)), train=False)


@pytest.mark.parametrize(("stride_in_1x1", "conv1_hw", "conv2_hw"), [(False, 8, 4), (True, 4, 4)])
def test_bottleneck_stride_placement(stride_in_1x1, conv1_hw, conv2_hw):
    model = create_model("resnet50", stride_in_1x1=stride_in_1x1)
    x = jnp.zeros((1, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))  # shapes only
    apply = functools.partial(model.apply, train=False, capture_intermediates=True, mutable=["intermediates"])
    _, state = jax.eval_shape(apply, variables, x)
    block = state["intermediates"]["stage2_block0"]
    assert block["conv1"]["__call__"][0].shape[1] == conv1_hw
    assert block["conv2"]["__call__"][0].shape[1] == conv2_hw


def test_train_mode_updates_batch_stats_with_pytorch_momentum():
    model = create_model("resnet20")
    variables = init(model)
    x = images()
    # jitted: op by op, the two passes take longer than compiling them
    capture = functools.partial(
        model.apply, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    _, inter = jax.jit(capture)(variables, x)
    _, updates = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(variables, x)
    stats = updates["batch_stats"]
    assert not jax.tree.all(jax.tree.map(jnp.array_equal, stats, variables["batch_stats"]))
    # PyTorch momentum 0.1 == Flax 0.9: new running mean = 0.9 * 0 + 0.1 * batch mean.
    stem_out = inter["intermediates"]["stem_conv"]["__call__"][0]
    np.testing.assert_allclose(stats["stem_bn"]["mean"], 0.1 * stem_out.mean(axis=(0, 1, 2)), atol=1e-6)


def test_eval_mode_uses_running_stats_changes_nothing_and_is_deterministic():
    model = create_model("resnet20")
    variables = init(model)
    x = images()
    logits, updates = model.apply(variables, x, train=False, mutable=["batch_stats"])
    chex.assert_trees_all_equal(updates["batch_stats"], variables["batch_stats"])
    np.testing.assert_array_equal(logits, model.apply(variables, x, train=False))
    # Running statistics: an example's logits do not depend on the rest of the batch.
    np.testing.assert_allclose(model.apply(variables, x[:1], train=False), logits[:1], rtol=1e-5, atol=1e-6)
    train_logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(train_logits, logits)


def test_train_is_keyword_only_and_required():
    model = create_model("resnet20")
    variables = init(model)
    with pytest.raises(TypeError):
        model.apply(variables, images())
    with pytest.raises(TypeError):
        model.apply(variables, images(), True)
    with pytest.raises(flax.errors.ModifyScopeVariableError):
        model.apply(variables, images(), train=True)  # train mode must be given a mutable batch_stats


def test_jit_and_eager_agree():
    model = create_model("resnet20")
    variables = init(model)
    x = images()
    eager = model.apply(variables, x, train=False)
    jitted = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_state_and_logits():
    f32 = create_model("resnet20")
    bf16 = create_model("resnet20", dtype=jnp.bfloat16)
    variables = init(f32)
    x = images()
    logits, updates = bf16.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.dtype == jnp.float32
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(updates["batch_stats"]))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(init(bf16)["params"]))
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
    params = abstract_init(model)["params"]
    assert params["stage1_block0"]["conv1"]["bias"].shape == (64,)
    assert params["stage3_block0"]["shortcut_conv"]["bias"].shape == (1024,)
    variables = init(model, batch=1)
    x = images(2)
    _, inter = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    conv_out = inter["intermediates"]["stem_conv"]["__call__"][0]
    bn_out = inter["intermediates"]["stem_bn"]["__call__"][0]
    # Fresh running stats (mean 0, var 1): eval-mode BN is x / sqrt(1 + epsilon).
    np.testing.assert_allclose(bn_out, conv_out / np.sqrt(1.5), rtol=1e-5, atol=1e-6)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(
        updates["batch_stats"]["stem_bn"]["mean"], 0.01 * conv_out.mean(axis=(0, 1, 2)), atol=1e-6
    )


@pytest.mark.slow
def test_zero_init_last_bn():
    params = init(create_model("resnet18", zero_init_last_bn=True))["params"]
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


def test_seed_transfer_head():
    # The seed article's head: Dense(1024) + ReLU + Dense(num_classes) on the pooled features.
    model = create_model("resnet50", num_classes=10, head_hidden=1024)
    params = abstract_init(model)["params"]
    assert params["head_hidden"]["kernel"].shape == (2048, 1024)
    assert params["head"]["kernel"].shape == (1024, 10)
    assert count_params({"params": params}) == 23_528_522 - 20_490 + 2048 * 1024 + 1024 + 1024 * 10 + 10
    small = create_model("resnet20", head_hidden=8)
    variables = init(small)
    logits, feats = small.apply(variables, images(), train=False, return_features=True)
    p = variables["params"]
    hidden = jax.nn.relu(feats["pooled"] @ p["head_hidden"]["kernel"] + p["head_hidden"]["bias"])
    np.testing.assert_allclose(logits, hidden @ p["head"]["kernel"] + p["head"]["bias"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="head_hidden must be a non-negative integer"):
        create_model("resnet20", head_hidden=-1)


def test_preact_and_keras_v2_layouts():
    p = abstract_init(create_model("preact_resnet164"))["params"]
    assert "stem_bn" not in p and p["post_bn"]["scale"].shape == (256,)
    # The first unit follows the bare stem conv: no preact BN; later units have one.
    assert set(p["stage1_block0"]) == {"conv1", "bn1", "conv2", "bn2", "conv3", "shortcut_conv"}
    assert set(p["stage1_block1"]) == {"preact_bn", "conv1", "bn1", "conv2", "bn2", "conv3"}
    assert set(p["stage2_block0"]) == {"preact_bn", "conv1", "bn1", "conv2", "bn2", "conv3", "shortcut_conv"}
    w = abstract_init(create_model("wrn16_8"))["params"]
    assert set(w["stage1_block0"]) == {"preact_bn", "conv1", "bn1", "conv2", "shortcut_conv"}
    assert w["stage1_block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 16, 128)
    assert "shortcut_conv" not in w["stage1_block1"]
    # Keras puts biases on the convs no BN follows: stem, last conv of a unit, projection.
    v2 = abstract_init(create_model("resnet50v2"))["params"]
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
    r = abstract_init(create_model("resnext50_32x4d"))["params"]
    assert r["stage1_block0"]["conv2"]["kernel"].shape == (3, 3, 4, 128)  # 32 groups of 4 channels
    assert abstract_init(create_model("wide_resnet50_2"))["params"]["stage4_block0"]["conv2"][
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
    x = images(2, 6)
    for features, stride, expected in ((8, 1, x), (8, 2, x[:, ::2, ::2]), (16, 2, None)):
        xin = jnp.concatenate([x, x, x[..., :2]], -1)  # 8 channels
        m = block(features, stride=stride, zero_init_last=True, **factories(train=False))
        variables = m.init(jax.random.key(0), xin, train=False)
        y = m.apply(variables, xin, train=False)
        if expected is None:
            kernel = variables["params"]["shortcut_conv"]["kernel"][0, 0]
            p = jax.nn.relu(xin / jnp.sqrt(1 + 1e-5))[:, ::2, ::2]
            np.testing.assert_allclose(y, p @ kernel, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(y, jnp.concatenate([expected, expected, expected[..., :2]], -1))


@pytest.mark.slow
def test_dropout_needs_an_rng_only_in_training():
    model = small_wrn(dropout_rate=0.3)
    variables = init(model)
    x = images()
    # No dropout parameters: the same variables as without dropout.
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, init(small_wrn()))
    eval_logits = model.apply(variables, x, train=False)  # no rng needed
    np.testing.assert_array_equal(eval_logits, small_wrn().apply(variables, x, train=False))
    with pytest.raises(flax.errors.InvalidRngError):
        model.apply(variables, x, train=True, mutable=["batch_stats"])
    runs = [
        model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(k)})[0]
        for k in (0, 0, 1)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])
    no_dropout, _ = small_wrn().apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(runs[0], no_dropout)


@pytest.mark.slow
def test_group_norm_is_one_factory_change():
    model = create_model("resnet18", num_classes=10, norm="group")
    variables = init(model)
    assert set(variables) == {"params"}  # GroupNorm keeps no running statistics
    assert set(variables["params"]["stem_bn"]) == {"scale", "bias"}
    x = images()
    logits = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(logits, model.apply(variables, x, train=True))  # no batch dependence
    np.testing.assert_allclose(model.apply(variables, x[:1], train=False), logits[:1], rtol=1e-5, atol=1e-5)
    # Same parameter names and shapes as the BatchNorm model.
    bn = abstract_init(create_model("resnet18", num_classes=10))["params"]
    assert jax.tree.map(jnp.shape, bn) == jax.tree.map(jnp.shape, variables["params"])


def test_frozen_batch_on_a_preact_net_keeps_statistics():
    model, frozen = small_wrn(), small_wrn(norm="frozen_batch")
    variables = init(model)
    x = images()
    logits, updates = frozen.apply(variables, x, train=True, mutable=["batch_stats"])
    chex.assert_trees_all_equal(updates["batch_stats"], variables["batch_stats"])
    np.testing.assert_array_equal(logits, model.apply(variables, x, train=False))
