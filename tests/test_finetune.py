"""Fine-tuning: frozen backbone stays bitwise, the head trains, restores fail loudly, Keras stems flip."""

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import finetune_cifar10, smoke
from resnet_jax import create_model, make_predict_fn
from resnet_jax.checkpoint import load_checkpoint, make_meta, save_checkpoint
from resnet_jax.preprocess import CAFFE
from tests.helpers import backbone_checkpoint, finetune_config, finetune_state
from train import finetune, policy, steps, train
from train.configuration import ConfigError, build_model, validate_config
from train.data import testing
from train.eval import evaluate_checkpoint as evaluate

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"

CIFAR_SPEC = {"kind": "mean_std", "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}


_backbone = functools.partial(backbone_checkpoint, spec=CIFAR_SPEC)
_config = functools.partial(finetune_config, num_train_steps=6, learning_rate=0.1)
_state = finetune_state


def _steps(config, state, n=6):
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), "label": np.arange(8) % 5}
    step = jax.jit(
        functools.partial(
            steps.train_step, mean=jnp.asarray(config.mean), std=jnp.asarray(config.std), pad=0, flip=False
        )
    )
    losses = []
    for i in range(n):
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    return state, losses


def _backbone_of(tree):
    return {k: v for k, v in tree.items() if k != "head"}


def test_frozen_backbone_is_bitwise_unchanged_and_the_head_trains(tmp_path):
    path, source = _backbone(tmp_path / "backbone")
    config, state = _state(_config(path))
    assert config.model == "resnet20" and tuple(config.mean) == tuple(CIFAR_SPEC["mean"])
    assert state.params["head"]["kernel"].shape == (64, 5)
    chex.assert_trees_all_equal(_backbone_of(source["params"]), _backbone_of(state.params))  # restored
    head_before = np.asarray(state.params["head"]["kernel"])
    state, losses = _steps(config, state)
    chex.assert_trees_all_equal(_backbone_of(source["params"]), _backbone_of(state.params))
    chex.assert_trees_all_equal(source["batch_stats"], state.batch_stats)
    assert not np.array_equal(head_before, state.params["head"]["kernel"])
    assert losses[-1] < losses[0]


def test_seed_head_dense_relu_dense_trains_on_a_frozen_backbone(tmp_path):
    path, source = _backbone(tmp_path / "backbone")
    config, state = _state(_config(path, head_hidden=16))
    assert set(policy.FineTune.from_config(config).head) == {"head", "head_hidden"}
    assert state.params["head_hidden"]["kernel"].shape == (64, 16)
    assert state.params["head"]["kernel"].shape == (16, 5)
    before = {k: np.asarray(state.params[k]["kernel"]) for k in ("head", "head_hidden")}
    state, losses = _steps(config, state)
    backbone = {k: v for k, v in state.params.items() if k not in before}
    chex.assert_trees_all_equal(_backbone_of(source["params"]), backbone)
    chex.assert_trees_all_equal(source["batch_stats"], state.batch_stats)
    for k, kernel in before.items():
        assert not np.array_equal(kernel, state.params[k]["kernel"]), k
    assert losses[-1] < losses[0]


def test_fine_tuning_everything_changes_backbone_and_statistics(tmp_path):
    path, source = _backbone(tmp_path / "backbone")
    config, state = _state(_config(path, freeze_backbone=False, learning_rate=0.01))
    state, _ = _steps(config, state, n=2)
    kernel = state.params["stage1_block0"]["conv1"]["kernel"]
    assert not np.array_equal(kernel, source["params"]["stage1_block0"]["conv1"]["kernel"])
    mean = state.batch_stats["stem_bn"]["mean"]
    assert not np.array_equal(mean, source["batch_stats"]["stem_bn"]["mean"])


@pytest.mark.parametrize(
    "source, overrides, norm, frozen_up_to",
    [
        ("frozen_batch", dict(freeze_backbone=False, freeze_up_to="stage1"), "batch", "stage1"),
        ("frozen_batch", dict(freeze_backbone=False), "batch", "none"),
        ("group", dict(freeze_backbone=True), "group", "none"),
        ("group", dict(freeze_backbone=False, freeze_up_to="stage2"), "group", "none"),
    ],
)
def test_the_norm_follows_the_checkpoint_and_what_is_frozen(tmp_path, source, overrides, norm, frozen_up_to):
    """A frozen run's backbone fine-tunes with live BatchNorm where unfrozen; GroupNorm stays GroupNorm."""
    name = "resnet18" if source == "group" else "resnet20"
    model = create_model(name, norm=source)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    meta = make_meta(name, model, preprocess=CIFAR_SPEC, origin="resnet-jax", step=0)
    path = save_checkpoint(tmp_path / "backbone", variables, meta)
    config, init, tune = finetune.resolve_config(_config(path, **overrides))
    built = build_model(config)
    assert (built.norm, built.norm_frozen_up_to) == (norm, frozen_up_to)
    if source == "group":  # params restored, no statistics expected or made up
        fresh = steps.create_train_state(jax.random.key(1), built, optax.sgd(0.1), (32, 32, 3))
        state = finetune.initialize(tune, fresh, init)
        assert state.batch_stats == {}
        chex.assert_trees_all_equal(_backbone_of(variables["params"]), _backbone_of(state.params))


def test_mismatched_restore_fails_listing_the_keys(tmp_path):
    path, _ = _backbone(tmp_path / "backbone")
    with pytest.raises(ValueError) as info:
        _state(_config(path, head_modules=()))  # keep the 10-class head: it cannot fit 5 classes
    assert "shape mismatch params/head/kernel: target (64, 5) vs source (64, 10)" in str(info.value)
    assert "shape mismatch params/head/bias: target (5,) vs source (10,)" in str(info.value)
    with pytest.raises(ValueError, match="skip prefix 'classifier' matches no key"):
        _state(_config(path, head_modules=("head", "classifier")))


def test_missing_or_unset_init_checkpoint_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="init_checkpoint is not set"):
        validate_config(finetune_cifar10.get_config(), 8)
    with pytest.raises(ConfigError, match=r"init_checkpoint: no checkpoint at .*does not exist"):
        finetune.resolve_config(_config(tmp_path / "nope"))


def test_keras_caffe_backbone_is_fed_rgb_with_a_flipped_stem(tmp_path):
    path, _ = _backbone(tmp_path / "keras", spec=CAFFE, origin="keras")
    model, variables = load_checkpoint(path)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    expected = make_predict_fn(model)(variables, images)  # BGR, minus mean_bgr, original stem

    config, state = _state(_config(path, num_classes=10, head_modules=()))
    np.testing.assert_allclose(config.mean, np.array(CAFFE["mean_bgr"][::-1]) / 255, rtol=1e-6)
    x = (images / 255.0 - np.asarray(config.mean)) / np.asarray(config.std)  # what train_step feeds: RGB
    got = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_fine_tune_run_end_to_end(tmp_path):
    """train_and_evaluate with a fine-tune config: frozen backbone in every checkpoint, eval reproduces."""
    path, source = _backbone(tmp_path / "backbone")
    data_dir = str(tmp_path / "data")
    config = _config(path)
    for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps", "progress_bar"):
        config[field] = smoke.get_config()[field]
    config.dataset = testing.write_fake_dataset(data_dir, num_train=64, num_test=20, num_classes=5)
    config.data_dir = data_dir
    config.eval_batch_size = 8
    config.num_train_steps = 8
    workdir = str(tmp_path / "run")
    result = train.train_and_evaluate(config, workdir)
    assert result["step"] == 8
    model, variables = load_checkpoint(workdir)
    assert model.num_classes == 5
    chex.assert_trees_all_equal(_backbone_of(source["params"]), _backbone_of(variables["params"]))
    chex.assert_trees_all_equal(source["batch_stats"], variables["batch_stats"])
    assert evaluate(workdir)["accuracy"] == result["test_accuracy"]
    assert os.path.exists(os.path.join(workdir, "config.json"))
    # Independently of the eval program: the checkpoint alone, on raw uint8 test images, counted in numpy.
    from train.data import tfds_data

    images, labels = tfds_data.load_split(tfds_data.get_builder(config.dataset, data_dir), "test")
    logits = np.asarray(make_predict_fn(model)(variables, images))
    assert float(np.mean(logits.argmax(-1) == labels)) == pytest.approx(result["test_accuracy"])
