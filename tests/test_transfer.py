"""The seed's transfer recipe: cached features, resized inputs, partial freezing, heads of every shape."""

import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import finetune_cifar10_seed, smoke
from resnet_jax import make_predict_fn
from resnet_jax.checkpoint import load_checkpoint, make_meta, save_checkpoint
from resnet_jax.preprocess import normalize, resize_images
from tests.helpers import backbone_checkpoint, finetune_config, finetune_state
from train import finetune, policy, programs, steps, train
from train.cache import memory as cache_memory
from train.configuration import ConfigError, build_model, validate_config
from train.data import memory, testing

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"

SPEC = {"kind": "mean_std", "mean": [0.5, 0.45, 0.4], "std": [0.25, 0.25, 0.25]}


_backbone = functools.partial(backbone_checkpoint, spec=SPEC)
_config = functools.partial(finetune_config, num_train_steps=4)
_state = finetune_state


def _split(n, seed, size=32):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), (np.arange(n) % 5).astype(np.int32)


def _without(tree, names):
    return {k: v for k, v in tree.items() if k not in names}


def test_cached_features_train_the_head_as_the_whole_network_does(tmp_path):
    """Same initial params, same batches, flips served from mirrored features: logits within 1e-5."""
    path, _ = _backbone(tmp_path / "backbone")
    config, state = _state(_config(path, pad=0, flip=True, head_hidden=6, learning_rate=0.5))
    mesh = steps.make_mesh()
    state = jax.device_put(state, NamedSharding(mesh, P()))  # replicated, as train_and_evaluate makes it
    mean, std = jnp.asarray(config.mean), jnp.asarray(config.std)
    key = jax.random.key(3)
    pipeline = memory.InMemoryPipeline(
        memory.put_train(*_split(24, 0), mesh),
        memory.put_eval(*_split(12, 1), 8, mesh),
        batch_size=8,
        data_key=key,
        preprocess=SPEC,
        num_classes=5,
    )
    assert policy.FineTune.from_config(config).cache(config, pipeline, state.params) == (True, None)
    model = build_model(config)
    cached = cache_memory.FeaturePipeline.build(
        pipeline, model, state, mean=mean, std=std, mesh=mesh, batch_size=8, flip=True, eval_hflip=True
    )
    assert cached.train["features"].shape == (24, 64) and cached.eval["features"].shape == (2, 8, 64)
    head = model.head_module()
    runs = {
        "images": (
            functools.partial(steps.train_step, mean=mean, std=std, pad=0, flip=True),
            pipeline,
            programs.image_eval(mesh, mean, std, hflip=True),
        ),
        "features": (
            functools.partial(steps.head_train_step, head=head, flip=True),
            cached,
            programs.head_eval(mesh, head, hflip=True),
        ),
    }
    out = {}
    for name, (step_fn, pipe, eval_fn) in runs.items():
        run = programs.make_train_fn(step_fn, mesh, pipe.device_batch, jax.random.key(7))
        s, sums, inputs = jax.tree.map(jnp.copy, state), programs.zero_sums(), next(pipe.train_inputs(0))
        for _ in range(6):  # past one epoch (3 steps): a new order
            s, sums, _ = run(s, sums, inputs)
        out[name] = (s, sums, programs.evaluate(eval_fn, s, pipe.eval_inputs()))
    (s_img, sums_img, eval_img), (s_feat, sums_feat, eval_feat) = out["images"], out["features"]
    images = _split(12, 1)[0]

    def logits_of(s):
        return s.apply_fn(
            {"params": s.params, "batch_stats": s.batch_stats}, normalize(images, mean, std), train=False
        )

    logits = [logits_of(s) for s in (s_img, s_feat)]
    assert not np.allclose(logits[0], logits_of(state), atol=1e-3)  # the head moved
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-5)
    chex.assert_trees_all_equal(
        _without(s_img.params, ("head", "head_hidden")), _without(s_feat.params, ("head", "head_hidden"))
    )
    np.testing.assert_allclose(float(sums_img["loss"]), float(sums_feat["loss"]), rtol=1e-5)
    assert eval_img["accuracy"] == eval_feat["accuracy"]
    assert eval_img["accuracy_hflip"] == eval_feat["accuracy_hflip"]
    assert eval_img["loss"] == pytest.approx(eval_feat["loss"], rel=1e-5)


def test_crop_augmentation_and_no_freeze_are_not_cached(tmp_path):
    path, _ = _backbone(tmp_path / "backbone")
    pipeline = memory.InMemoryPipeline.__new__(memory.InMemoryPipeline)
    params = {"head": {"kernel": np.zeros((64, 5))}}

    def cache(config):
        return policy.FineTune.from_config(config).cache(config, pipeline, params)

    use, notice = cache(finetune.resolve_config(_config(path, pad=4))[0])
    assert not use and "pad=4 crops at random" in notice and notice.count("\n") == 0
    assert cache(_config(path, pad=0, cache_features=False)) == (False, None)
    assert cache(_config(path, pad=0, freeze_backbone=False)) == (False, None)


def _fake_data(tmp_path, config):
    data_dir = str(tmp_path / "data")
    config.dataset = testing.write_fake_dataset(data_dir, num_train=32, num_test=12, num_classes=5)
    config.data_dir = data_dir
    for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps", "progress_bar"):
        config[field] = smoke.get_config()[field]
    return data_dir


def test_resized_run_predicts_raw_images_as_its_eval_step_did(tmp_path, capsys):
    """image_size=64 on 32x32 data: the checkpoint records 64 and make_predict_fn resizes the same way."""
    path, source = _backbone(tmp_path / "backbone")
    config = _config(path, image_size=64, pad=4)  # the crop is not cacheable: the uncached path
    data_dir = _fake_data(tmp_path, config)
    workdir = str(tmp_path / "run")
    result = train.train_and_evaluate(config, workdir)
    assert "features not cached: pad=4" in capsys.readouterr().out
    model, variables = load_checkpoint(workdir)
    assert model.image_size == (64, 64)
    chex.assert_trees_all_equal(
        _without(source["params"], ("head",)), _without(variables["params"], ("head",))
    )
    from train.data import tfds_data
    from train.eval import evaluate_checkpoint as evaluate

    images, labels = tfds_data.load_split(tfds_data.get_builder(config.dataset, data_dir), "test")
    predict = make_predict_fn(model)
    logits = np.asarray(predict(variables, images))  # raw 32x32 uint8
    x = normalize(resize_images(images, 64), jnp.asarray(SPEC["mean"]), jnp.asarray(SPEC["std"]))
    np.testing.assert_allclose(logits, model.apply(variables, x, train=False), atol=1e-5)  # eval_step's input
    np.testing.assert_array_equal(logits, np.asarray(predict(variables, resize_images(images, 64))))
    assert float(np.mean(logits.argmax(-1) == labels)) == pytest.approx(result["test_accuracy"])
    assert evaluate(workdir)["accuracy"] == result["test_accuracy"]


def test_cached_run_resumes_and_saves_the_whole_model(tmp_path):
    path, source = _backbone(tmp_path / "backbone", head_hidden=8)
    config = _config(path, pad=0, flip=True, head_hidden=8)
    _fake_data(tmp_path, config)
    whole = train.train_and_evaluate(config, str(tmp_path / "whole"))
    config.stop_after_steps = 2
    assert train.train_and_evaluate(config, str(tmp_path / "resumed"))["stopped_by"] == "stop_after_steps"
    config.stop_after_steps = -1
    resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    (_, a), (_, b) = load_checkpoint(str(tmp_path / "whole")), load_checkpoint(str(tmp_path / "resumed"))
    chex.assert_trees_all_equal(a, b)
    heads = ("head", "head_hidden")
    chex.assert_trees_all_equal(_without(source["params"], heads), _without(b["params"], heads))
    assert not np.array_equal(source["params"]["head_hidden"]["kernel"], b["params"]["head_hidden"]["kernel"])
    with open(tmp_path / "resumed" / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f if '"train"' in line] == [1, 2, 4]
    assert os.listdir(tmp_path / "resumed" / "tensorboard")


def test_partial_freeze_keeps_early_parts_bitwise_and_scales_the_backbone_rate(tmp_path):
    path, source = _backbone(tmp_path / "backbone")
    config, state = _state(_config(path, freeze_backbone=False, freeze_up_to="stage1", learning_rate=0.05))
    assert config.model_kwargs.norm_frozen_up_to == "stage1"
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), "label": np.arange(8) % 5}
    mean, std = jnp.asarray(SPEC["mean"]), jnp.asarray(SPEC["std"])
    step = jax.jit(functools.partial(steps.train_step, mean=mean, std=std, pad=0, flip=False))
    s = state
    for i in range(2):
        s, _ = step(s, batch, jax.random.key(i))
    frozen = ("stem_conv", "stem_bn", "stage1_block0", "stage1_block1", "stage1_block2")
    chex.assert_trees_all_equal({k: source["params"][k] for k in frozen}, {k: s.params[k] for k in frozen})
    stats = [k for k in frozen if k in source["batch_stats"]]
    chex.assert_trees_all_equal(
        {k: source["batch_stats"][k] for k in stats}, {k: s.batch_stats[k] for k in stats}
    )
    for path_ in (
        ("stage2_block0", "conv1", "kernel"),
        ("stage3_block2", "conv2", "kernel"),
        ("head", "kernel"),
    ):
        before, after = state.params, s.params
        for key in path_:
            before, after = before[key], after[key]
        assert not np.array_equal(before, after), path_
    moved = s.batch_stats["stage2_block0"]["bn1"]["mean"]
    assert not np.array_equal(moved, source["batch_stats"]["stage2_block0"]["bn1"]["mean"])

    # backbone_lr_multiplier: one SGD step from the same state moves the backbone 0.1 times as far.
    deltas = {}
    for m in (1.0, 0.1):
        _, state_m = _state(
            _config(path, freeze_backbone=False, backbone_lr_multiplier=m, learning_rate=0.05)
        )
        new, _ = step(state_m, batch, jax.random.key(0))
        deltas[m] = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new.params, state_m.params)
    conv = ("stage2_block0", "conv1", "kernel")
    full, scaled = (deltas[m][conv[0]][conv[1]][conv[2]] for m in (1.0, 0.1))
    assert np.abs(full).max() > 0
    np.testing.assert_allclose(scaled, 0.1 * full, rtol=1e-3, atol=1e-4 * np.abs(full).max())
    np.testing.assert_allclose(deltas[0.1]["head"]["kernel"], deltas[1.0]["head"]["kernel"], rtol=1e-5)


@pytest.mark.parametrize(("source_hidden", "target_hidden"), [(0, 0), (0, 4), (4, 0), (4, 4), (4, 6)])
def test_heads_of_every_shape_round_trip(tmp_path, source_hidden, target_hidden):
    """none -> none/hidden, hidden -> none/same/other hidden, 10 -> 5 classes: saved, loaded, predicted."""
    path, source = _backbone(tmp_path / "backbone", head_hidden=source_hidden)
    config, state = _state(_config(path, head_hidden=target_hidden))
    heads = ("head", "head_hidden")
    chex.assert_trees_all_equal(_without(source["params"], heads), _without(state.params, heads))
    assert ("head_hidden" in state.params) == bool(target_hidden)
    assert state.params["head"]["kernel"].shape == (target_hidden or 64, 5)
    if source_hidden and target_hidden:  # even of the same shape: a new head (trained for other classes)
        kernels = (state.params["head_hidden"]["kernel"], source["params"]["head_hidden"]["kernel"])
        assert kernels[0].shape != kernels[1].shape or not np.array_equal(*kernels)
    model = build_model(config)
    meta = make_meta(config.model, model, preprocess=SPEC, origin="resnet-jax", step=0, image_size=[32, 32])
    saved = save_checkpoint(
        tmp_path / "out", {"params": state.params, "batch_stats": state.batch_stats}, meta
    )
    loaded, variables = load_checkpoint(saved)
    images = _split(3, 2)[0]
    x = normalize(images, jnp.asarray(SPEC["mean"]), jnp.asarray(SPEC["std"]))
    expected = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
    np.testing.assert_allclose(make_predict_fn(loaded)(variables, images), expected, atol=1e-5)


def _rejects(tmp_path, config, match):
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=match):
        train.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_bad_fine_tuning_input_is_a_clear_error_before_anything_is_written(tmp_path):
    path, _ = _backbone(tmp_path / "backbone")
    _rejects(tmp_path, _config(tmp_path / "nope"), r"init_checkpoint: no checkpoint at .*does not exist")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "weights.bin").write_bytes(b"not a checkpoint")
    _rejects(tmp_path, _config(junk), "init_checkpoint: ")
    _rejects(
        tmp_path,
        _config(path, freeze_backbone=False, freeze_up_to="stage4"),
        r"freeze_up_to='stage4' is not a part of resnet20 \(3 stages\): choose one of none, stem, "
        "stage1, stage2, stage3, all",
    )
    _rejects(
        tmp_path, _config(path, freeze_up_to="stage2"), "freeze_backbone=True already freezes everything"
    )
    _rejects(
        tmp_path,
        _config(path, freeze_backbone=False, backbone_lr_multiplier=0.0),
        "backbone_lr_multiplier=0.0 must be > 0",
    )
    _rejects(tmp_path, _config(path, head_hidden=-5), "head_hidden=-5 must be >= 0")
    # The architecture is the checkpoint's: another model name is a mistake, said at once.
    mismatch = "model='resnet56' but init_checkpoint .* holds a resnet20"
    _rejects(tmp_path, _config(path, model="resnet56"), mismatch)
    imagenet_stem, _ = _backbone(tmp_path / "imagenet_stem", cifar_stem=False)
    _rejects(
        tmp_path,
        _config(imagenet_stem, image_size=8),
        "image_size=8 is smaller than resnet20 takes: its total stride is 16",
    )
    with pytest.raises(ConfigError, match="need a pretrained backbone"):
        config = smoke.get_config()
        config.freeze_up_to = "stem"
        validate_config(config, 1)


def test_seed_config_is_the_article_recipe():
    config = finetune_cifar10_seed.get_config()
    assert (config.image_size, config.head_hidden, config.freeze_backbone, config.cache_features) == (
        224,
        1024,
        True,
        True,
    )
    assert config.pad == 0 and config.num_classes == 10
