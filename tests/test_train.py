"""Train step, eval step, config validation, and a whole (tiny) training run in-process."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import smoke
from resnet_jax import ResNet
from resnet_jax.preprocess import normalize
from tests.helpers import saved_state, smoke_config
from train import optim, steps, train
from train.configuration import ConfigError, build_model, validate_config
from train.data.testing import write_fake_dataset

MEAN, STD = jnp.asarray([0.49, 0.48, 0.45]), jnp.asarray([0.25, 0.24, 0.26])


def _state_and_batch(batch_size=16):
    c = smoke.get_config()
    c.schedule, c.warmup_steps = "constant", 0  # lr 0.1 from the first step (smoke warms up from 0)
    # A tiny ResNet (the registry's smallest, resnet20, takes ~4x longer to compile on 8 CPU devices).
    model = ResNet(
        (1, 1, 1), (8, 16, 32), num_classes=10, stem_features=8, cifar_stem=True, shortcut="zero_pad"
    )
    state = steps.create_train_state(
        jax.random.PRNGKey(0), model, optim.create_optimizer(c, 100), (32, 32, 3)
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, batch_size).astype(np.int32),
    }
    return state, batch


def _one_step(devices):
    state, batch = _state_and_batch()
    mesh = steps.make_mesh(devices)
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    step = jax.jit(
        lambda s, b, r: steps.train_step(s, b, r, mean=MEAN, std=STD),
        in_shardings=(replicated, sharded, replicated),
        out_shardings=(replicated, replicated),
    )
    state, metrics = step(state, batch, jax.random.PRNGKey(1))
    return jax.device_get((state.params, state.batch_stats, metrics))


def test_eight_devices_match_one_device():
    assert jax.device_count() == 8, "conftest sets 8 CPU devices"
    one = _one_step(jax.devices()[:1])
    eight = _one_step(jax.devices())
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    # The update is not trivially zero: params moved.
    state, _ = _state_and_batch()
    moved = [
        np.abs(a - b).max()
        for a, b in zip(jax.tree.leaves(one[0]), jax.tree.leaves(state.params), strict=True)
    ]
    assert max(moved) > 1e-3


def test_train_step_learns_a_fixed_batch():
    state, batch = _state_and_batch()
    step = jax.jit(lambda s, b, r: steps.train_step(s, b, r, mean=MEAN, std=STD, pad=0, flip=False))
    losses = []
    for i in range(8):
        state, m = step(state, batch, jax.random.PRNGKey(i))
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert int(state.step) == 8


def test_cross_entropy_with_label_smoothing_matches_formula():
    logits = jnp.asarray([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    labels = jnp.asarray([0, 2])
    logp = jax.nn.log_softmax(logits)
    eps = 0.1
    target = np.full((2, 3), eps / 3) + (1 - eps) * np.eye(3)[[0, 2]]
    np.testing.assert_allclose(steps.cross_entropy(logits, labels, eps), -(target * logp).sum(-1), rtol=1e-6)
    np.testing.assert_allclose(steps.cross_entropy(logits, labels), -logp[jnp.arange(2), labels], rtol=1e-6)


def test_eval_step_ignores_padding():
    state, batch = _state_and_batch(8)
    full = steps.eval_step(state, {**batch, "mask": np.ones(8, np.float32)}, mean=MEAN, std=STD)
    first5 = steps.eval_step(
        state, {k: v[:5] for k, v in batch.items()} | {"mask": np.ones(5, np.float32)}, mean=MEAN, std=STD
    )
    padded = {"image": batch["image"].copy(), "label": batch["label"], "mask": np.r_[np.ones(5), np.zeros(3)]}
    masked = steps.eval_step(state, padded, mean=MEAN, std=STD)
    assert float(full["count"]) == 8 and float(masked["count"]) == 5
    np.testing.assert_allclose(masked["loss"], first5["loss"], rtol=1e-5)
    assert float(masked["correct"]) == float(first5["correct"])


# Per-channel statistics, and a per-pixel mean image (config normalization='per_pixel') that is not
# mirror-symmetric, so mirroring after normalising would give different inputs.
PER_PIXEL_MEAN = jnp.asarray(np.random.default_rng(1).uniform(0.3, 0.7, (32, 32, 3)), jnp.float32)


@pytest.mark.parametrize("mean", [MEAN, PER_PIXEL_MEAN], ids=["per_channel", "per_pixel"])
def test_eval_step_hflip_averages_the_softmax_of_both_views(mean):
    state, batch = _state_and_batch(16)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    views = [normalize(v, mean, STD) for v in (batch["image"], batch["image"][:, :, ::-1])]
    probs = [jax.nn.softmax(state.apply_fn(variables, v, train=False)) for v in views]
    single, averaged = np.argmax(probs[0], -1), np.argmax(probs[0] + probs[1], -1)
    # The two views disagree somewhere, so the test can tell the flip-averaged count from the single one.
    assert (single[:12] != averaged[:12]).any(), "pick a batch where the mirrored view changes a prediction"
    # Labels: the averaged prediction for the first 12, the single-view one for the last 4, so both
    # counts are known and (for this init) differ wherever the two predictions differ.
    labels = np.r_[averaged[:12], single[12:]].astype(np.int32)
    mask = np.r_[np.ones(14), np.zeros(2)].astype(np.float32)
    sums = steps.eval_step(state, {**batch, "label": labels, "mask": mask}, mean=mean, std=STD, hflip=True)
    assert float(sums["correct_hflip"]) == float(((averaged == labels) * mask).sum())
    assert float(sums["correct"]) == float(((single == labels) * mask).sum())
    assert float(sums["correct_hflip"]) >= 12
    assert "correct_hflip" not in steps.eval_step(state, {**batch, "mask": mask}, mean=MEAN, std=STD)


def test_validate_config_lists_every_problem():
    c = smoke.get_config()
    c.batch_size = 12
    c.schedule = "linear"
    c.momentum = 1.5
    with pytest.raises(ConfigError) as e:
        validate_config(c, 8)
    msg = str(e.value)
    assert "batch_size=12 must be a positive multiple of the 8 devices" in msg
    assert "schedule='linear' must be one of piecewise, cosine, onecycle, constant" in msg
    assert "momentum=1.5" in msg
    c = smoke.get_config()
    c.model_kwargs.shortcut = "bogus"
    c.model = "resnet21"
    with pytest.raises(ConfigError, match="model='resnet21' must be one of resnet18"):
        validate_config(c, 1)
    validate_config(smoke.get_config(), 8)  # the shipped configs are valid
    from configs import cifar10_fast, cifar10_resnet34, cifar10_resnet50, cifar10_resnet56, cifar10_resnet110

    for module in (cifar10_fast, cifar10_resnet34, cifar10_resnet50, cifar10_resnet56, cifar10_resnet110):
        validate_config(module.get_config(), 8)


@pytest.mark.slow
def test_half_precision_step_keeps_float32_params():
    c = smoke.get_config()
    c.half_precision = True
    model = build_model(c)
    state = steps.create_train_state(jax.random.PRNGKey(0), model, optax.sgd(0.1), (32, 32, 3))
    _, batch = _state_and_batch(4)
    state, m = jax.jit(lambda s, b, r: steps.train_step(s, b, r, mean=MEAN, std=STD))(
        state, batch, jax.random.PRNGKey(0)
    )
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
    assert np.isfinite(float(m["loss"]))
    # bf16 is really used: the same step in float32 gives other numbers.
    f32 = steps.create_train_state(
        jax.random.PRNGKey(0), build_model(smoke.get_config()), optax.sgd(0.1), (32, 32, 3)
    )
    _, m32 = jax.jit(lambda s, b, r: steps.train_step(s, b, r, mean=MEAN, std=STD))(
        f32, batch, jax.random.PRNGKey(0)
    )
    assert float(m["loss"]) != float(m32["loss"])


@pytest.mark.slow
def test_half_precision_run_trains_checkpoints_evaluates_and_resumes(tmp_path):
    from resnet_jax.checkpoint import load_checkpoint
    from train.eval import evaluate_checkpoint as evaluate

    data_dir = str(tmp_path / "data")
    write_fake_dataset(data_dir, num_train=64, num_test=20)
    c = smoke.get_config()
    c.dataset, c.data_dir, c.half_precision = "fake_cifar", data_dir, True
    c.stop_after_steps = 6
    stopped = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert stopped["step"] == 6
    c.stop_after_steps = -1
    result = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert result["step"] == 12 and np.isfinite(result["test_loss"])
    model, variables = load_checkpoint(tmp_path / "run")
    assert model.dtype == jnp.bfloat16  # the checkpoint's meta rebuilds the bf16 model
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
    assert evaluate(str(tmp_path / "run"))["accuracy"] == result["test_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        dict(normalization="per_pixel"),
        dict(num_train_steps=-1, num_epochs=0.75),  # 64 examples / batch 16: 3 steps
        dict(num_classes=100, dataset="fake_cifar100"),  # as cifar100: 100 classes
        dict(model="resnet18", model_kwargs={"norm": "group"}),  # no batch_stats to train or save
        dict(num_classes=0),  # the dataset's own: 10
    ],
    ids=["per_pixel", "num_epochs", "100_classes", "group_norm", "num_classes_0"],
)
def test_readme_options_run_end_to_end(tmp_path_factory, overrides):
    import resnet_jax

    data_dir = str(tmp_path_factory.getbasetemp() / "options_data")
    if not os.path.exists(os.path.join(data_dir, "fake_cifar100")):
        write_fake_dataset(data_dir, num_train=64, num_test=20)
        write_fake_dataset(data_dir, name="fake_cifar100", num_train=64, num_test=20, num_classes=100)
    c = smoke.get_config()
    c.dataset, c.data_dir = "fake_cifar", data_dir
    c.num_train_steps, c.eval_every_steps, c.log_every_steps = 3, -1, 1
    c.update(overrides)
    workdir = tmp_path_factory.mktemp("run")
    result = train.train_and_evaluate(c, str(workdir))
    assert result["step"] == 3 and np.isfinite(result["test_loss"])
    model, variables = resnet_jax.load_checkpoint(workdir)
    assert model.num_classes == (c.num_classes or 10)
    assert json.loads((workdir / "config.json").read_text())["num_classes"] == model.num_classes
    assert set(variables) == ({"params"} if model.norm == "group" else {"params", "batch_stats"})
    if c.normalization == "per_pixel":  # the mean image travels in the meta and predict applies it
        assert np.asarray(model.preprocess["mean"]).shape == (32, 32, 3)


@pytest.mark.slow
def test_weight_decay_on_all_also_decays_batchnorm_parameters_in_a_run(data_dir, tmp_path):
    """One step at a constant rate from the same initialisation: the kernels take the same update either
    way, and BatchNorm's scale and bias differ by exactly the decay term lr * wd * value ('all' only)."""
    lr, wd = 0.1, 0.5
    saved = {}
    for on in ("kernels", "all"):
        c = smoke_config(data_dir, num_train_steps=1, schedule="constant", warmup_steps=0, learning_rate=lr)
        c.update(weight_decay=wd, weight_decay_on=on, momentum=0.0)
        train.train_and_evaluate(c, str(tmp_path / on))
        saved[on] = saved_state(tmp_path / on, step=1)["params"]
    kernels, everything = saved["kernels"], saved["all"]
    np.testing.assert_array_equal(
        kernels["stage1_block0"]["conv1"]["kernel"], everything["stage1_block0"]["conv1"]["kernel"]
    )
    bn_kernels, bn_all = kernels["stem_bn"], everything["stem_bn"]
    # Initial scale 1 and bias 0: 'all' takes lr * wd * 1 more off the scale, and the same off the bias.
    np.testing.assert_allclose(bn_all["scale"], bn_kernels["scale"] - lr * wd * 1.0, rtol=1e-6)
    np.testing.assert_allclose(bn_all["bias"], bn_kernels["bias"], atol=1e-7)
