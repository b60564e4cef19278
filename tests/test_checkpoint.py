"""Checkpoint library: save/load round trips, path resolution, errors, predict, restore_matching."""

import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import ResNet, create_model
from resnet_jax.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_meta,
    make_meta,
    model_from_meta,
    restore_matching,
    save_checkpoint,
)
from resnet_jax.predict import make_predict_fn
from resnet_jax.preprocess import CAFFE, IMAGENET_MEAN_STD, preprocess_images

CIFAR_SPEC = {"kind": "mean_std", "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}


def _variables(model, seed=0):
    """Initialised variables with random (non-default) batch statistics, so restores are meaningful."""
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)), train=False)
    leaves, treedef = jax.tree.flatten(variables["batch_stats"])
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    stats = [jax.random.uniform(k, x.shape, x.dtype, 0.5, 1.5) for k, x in zip(keys, leaves, strict=True)]
    return {"params": variables["params"], "batch_stats": jax.tree.unflatten(treedef, stats)}


def _assert_bitwise(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for path, x in jax.tree_util.tree_leaves_with_path(a):
        y = b
        for key in path:
            y = y[key.key]
        assert x.dtype == y.dtype, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


@pytest.fixture(scope="module")
def resnet20():
    model = create_model("resnet20")
    return model, _variables(model)


def _save(directory, model, variables, step=0, spec=CIFAR_SPEC, name="resnet20", **extra):
    meta = make_meta(name, model, preprocess=spec, origin="resnet-jax", step=step)
    return save_checkpoint(directory, {**variables, **extra}, meta)


def test_round_trip_is_bitwise_and_drops_training_state(tmp_path, resnet20):
    model, variables = resnet20
    opt_state = {"mu": jnp.ones(4), "count": jnp.array(7)}
    path = _save(tmp_path / "ckpt", model, variables, step=7, opt_state=opt_state, step_count=7)
    assert path.is_absolute()
    loaded_model, loaded = load_checkpoint(path)
    _assert_bitwise(variables, loaded)
    assert set(loaded) == {"params", "batch_stats"}
    assert isinstance(loaded_model, ResNet)
    assert dict(loaded_model.preprocess) == {k: tuple(v) for k, v in CIFAR_SPEC.items() if k != "kind"} | {
        "kind": "mean_std"
    }
    # Same architecture: the loaded model applies to the loaded variables exactly as the original.
    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
    np.testing.assert_array_equal(
        model.apply(variables, x, train=False), loaded_model.apply(loaded, x, train=False)
    )
    meta = load_meta(path)
    assert meta["model"] == "resnet20" and meta["step"] == 7 and meta["origin"] == "resnet-jax"
    assert meta["preprocess"] == CIFAR_SPEC


def test_round_trip_bfloat16_params_and_dtype_strings(tmp_path):
    model = create_model("resnet20", num_classes=4, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    variables = _variables(model)
    path = _save(tmp_path / "bf16", model, variables)
    meta = load_meta(path)
    assert meta["model_kwargs"] == {"num_classes": 4, "dtype": "bfloat16", "param_dtype": "bfloat16"}
    loaded_model, loaded = load_checkpoint(path)
    assert loaded_model.param_dtype == jnp.bfloat16 and loaded_model.num_classes == 4
    _assert_bitwise(variables, loaded)


@pytest.mark.slow
def test_group_norm_model_saves_loads_and_predicts_without_batch_stats(tmp_path):
    """GroupNorm keeps no statistics: the checkpoint holds params only and loads and predicts as saved."""
    model = create_model("resnet18", num_classes=4, norm="group")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    assert set(variables) == {"params"}
    with pytest.raises(ValueError, match=r"must contain \('params',\) for resnet18; missing \['params'\]"):
        _save(tmp_path / "none", model, {}, name="resnet18")
    # A training state carries an empty batch_stats: saved without it.
    path = _save(tmp_path / "gn", model, {**variables, "batch_stats": {}}, name="resnet18")
    loaded_model, loaded = load_checkpoint(path)
    assert loaded_model.norm == "group" and set(loaded) == {"params"}
    _assert_bitwise(variables, loaded)
    images = _uint8_images(3)
    np.testing.assert_allclose(  # jitted vs eager: float rounding only
        make_predict_fn(loaded_model)(loaded, images),
        model.apply(variables, preprocess_images(images, CIFAR_SPEC), train=False),
        rtol=1e-5,
        atol=1e-5,
    )
    # Fine-tuning's restore into a new head.
    target = create_model("resnet18", num_classes=2, norm="group").init(
        jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False
    )
    restored = restore_matching({**target, "batch_stats": {}}, loaded, skip=("head",))
    assert set(restored) == {"params"} and restored["params"]["head"]["kernel"].shape == (512, 2)


def test_model_from_meta_decodes_kwargs():
    meta = {
        "model": "resnet50",
        "model_kwargs": {"num_classes": 5, "stride_in_1x1": True, "conv_bias": True, "dtype": "bfloat16"},
        "preprocess": CAFFE,
        "origin": "keras",
        "step": 0,
    }
    model = model_from_meta(meta)
    assert (model.num_classes, model.stride_in_1x1, model.conv_bias) == (5, True, True)
    assert model.dtype == jnp.bfloat16 and tuple(model.stage_sizes) == (3, 4, 6, 3)
    assert model.preprocess["kind"] == "caffe"


def test_make_meta_rejects_a_model_the_name_cannot_build():
    tiny = ResNet((1, 1, 1), (8, 16, 32), stem_features=8, cifar_stem=True, shortcut="zero_pad")
    with pytest.raises(ValueError, match=r"not a resnet20.*stage_sizes"):
        make_meta("resnet20", tiny, preprocess=CIFAR_SPEC, origin="resnet-jax", step=0)


def test_save_rejects_bad_meta_mismatched_variables_and_existing_dir(tmp_path, resnet20):
    model, variables = resnet20
    meta = make_meta("resnet20", model, preprocess=CIFAR_SPEC, origin="resnet-jax", step=0)
    with pytest.raises(ValueError, match="'origin' must be one of"):
        save_checkpoint(tmp_path / "a", variables, {**meta, "origin": "tf"})
    with pytest.raises(ValueError, match="preprocess spec"):
        bad_spec = {"kind": "mean_std", "mean": [0.5]}
        save_checkpoint(tmp_path / "a", variables, {**meta, "preprocess": bad_spec})
    wrong = {**meta, "model_kwargs": {"num_classes": 5}}
    with pytest.raises(ValueError, match=r"params/head/kernel: model \(64, 5\) vs variables \(64, 10\)"):
        save_checkpoint(tmp_path / "a", variables, wrong)
    assert not (tmp_path / "a").exists()
    save_checkpoint(tmp_path / "a", variables, meta)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_checkpoint(tmp_path / "a", variables, meta)
    save_checkpoint(tmp_path / "a", variables, {**meta, "step": 1}, overwrite=True)
    assert load_meta(tmp_path / "a")["step"] == 1
    # overwrite=True replaces a checkpoint, never a folder of anything else.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"refusing to replace .*mine: it holds files that are not"):
        save_checkpoint(tmp_path / "mine", variables, meta, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_workdir_checkpoints_dir_and_step_dir_resolve(tmp_path, resnet20):
    model, v1 = resnet20
    v3 = _variables(model, seed=3)
    workdir = tmp_path / "workdir"
    _save(workdir / "checkpoints" / "1", model, v1, step=1)
    _save(workdir / "checkpoints" / "3", model, v3, step=3)
    for path in (workdir, workdir / "checkpoints", workdir / "checkpoints" / "3", str(workdir)):
        _, loaded = load_checkpoint(path)
        _assert_bitwise(v3, loaded)
    step1 = workdir / "checkpoints" / "1"
    for path, step in ((workdir, 1), (step1, None), (step1, 1)):
        _, loaded = load_checkpoint(path, step=step)
        _assert_bitwise(v1, loaded)
    assert load_meta(workdir)["step"] == 3 and load_meta(workdir, step=1)["step"] == 1
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 2 .* steps \[1, 3\]"):
        load_checkpoint(workdir, step=2)
    with pytest.raises(FileNotFoundError, match="step 1, not step 3"):
        load_checkpoint(workdir / "checkpoints" / "1", step=3)


def test_missing_path_and_empty_directory_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope")) + ".*does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    empty = re.escape(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no finalized checkpoint in " + empty):
        load_checkpoint(tmp_path / "empty")


def test_temporary_uncommitted_step_dir_is_ignored(tmp_path, resnet20):
    model, variables = resnet20
    checkpoints = tmp_path / "checkpoints"
    _save(checkpoints / "1", model, variables, step=1)
    # What a save killed mid-write leaves: orbax's temporary directory, never renamed to "2".
    _save(tmp_path / "unfinished", model, _variables(model, seed=9), step=2)
    temporary = checkpoints / "2.orbax-checkpoint-tmp-1700000000000000"
    shutil.move(tmp_path / "unfinished", temporary)
    (temporary / "commit_success.txt").unlink()
    _, loaded = load_checkpoint(tmp_path)
    _assert_bitwise(variables, loaded)
    assert load_meta(tmp_path)["step"] == 1
    with pytest.raises(FileNotFoundError, match="temporary, uncommitted"):
        load_checkpoint(temporary)
    shutil.rmtree(checkpoints / "1")
    with pytest.raises(FileNotFoundError, match=r"no finalized checkpoint .*only unfinished saves: 2\.orbax"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("damage", ["truncate_data", "delete_meta"])
def test_corrupted_checkpoint_names_path_step_and_older_steps(tmp_path, resnet20, damage):
    model, variables = resnet20
    checkpoints = tmp_path / "checkpoints"
    _save(checkpoints / "1", model, variables, step=1)
    _save(checkpoints / "2", model, variables, step=2)
    _save(checkpoints / "3", model, variables, step=3)
    if damage == "truncate_data":
        files = [f for f in (checkpoints / "3" / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
        assert files
        for f in files:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        shutil.rmtree(checkpoints / "3" / "meta")
    where = re.escape(str(checkpoints))
    expected = (
        rf"checkpoint step 3 at {where}/3 is unusable.*Older checkpoints in {where}: "
        rf"steps \[1, 2\]; load one with load_checkpoint\('{where}', step=2\)"
    )
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(checkpoints / "3")
    _, loaded = load_checkpoint(tmp_path, step=2)
    _assert_bitwise(variables, loaded)


def test_state_that_does_not_fit_its_meta_lists_keys(tmp_path, resnet20):
    model, variables = resnet20
    path = _save(tmp_path / "ckpt", model, variables)
    other = create_model("resnet20", num_classes=3)
    meta = make_meta("resnet20", other, preprocess=CIFAR_SPEC, origin="resnet-jax", step=0)
    shutil.rmtree(path / "meta")
    # Rewrite meta alone (as a careless conversion script might) so it disagrees with the state.
    save_checkpoint(tmp_path / "donor", _variables(other), meta)
    shutil.copytree(tmp_path / "donor" / "meta", path / "meta")
    with pytest.raises(CheckpointError, match=r"params/head/bias: model \(3,\) vs checkpoint \(10,\)"):
        load_checkpoint(path)


def test_restore_from_8_devices_onto_1_and_back(tmp_path, resnet20):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 host devices"
    model, variables = resnet20
    mesh8 = Mesh(np.array(jax.devices()), ("data",))

    def spread(x):  # shard the leading axis over 8 devices where it divides, else replicate
        spec = P("data") if x.ndim and x.shape[0] % 8 == 0 else P()
        return jax.device_put(x, NamedSharding(mesh8, spec))

    sharded = jax.tree.map(spread, variables)
    assert any(
        len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
        for x in jax.tree.leaves(sharded)
    )
    _save(tmp_path / "on8", model, sharded)

    one = NamedSharding(Mesh(np.array(jax.devices()[:1]), ("data",)), P())
    _, on1 = load_checkpoint(tmp_path / "on8", sharding=one)
    _assert_bitwise(variables, on1)
    assert all(x.sharding.device_set == {jax.devices()[0]} for x in jax.tree.leaves(on1))

    _save(tmp_path / "on1", model, on1)
    shardings = jax.tree.map(lambda x: x.sharding, sharded)
    _, back = load_checkpoint(tmp_path / "on1", sharding=shardings)
    _assert_bitwise(variables, back)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(sharded), strict=True):
        assert x.sharding == y.sharding

    _, default = load_checkpoint(tmp_path / "on8")
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(default))


# ----------------------------------------------------------------------------------------------
# preprocess and predict


def _uint8_images(n, seed=0, size=32):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_mean_std_matches_torchvision_normalize():
    torch = pytest.importorskip("torch")
    transforms = pytest.importorskip("torchvision.transforms")
    images = _uint8_images(2)
    reference = (
        torch.stack(
            [
                transforms.Normalize(IMAGENET_MEAN_STD["mean"], IMAGENET_MEAN_STD["std"])(
                    transforms.ToTensor()(im)
                )
                for im in images
            ]
        )
        .permute(0, 2, 3, 1)
        .numpy()
    )
    np.testing.assert_allclose(preprocess_images(images, IMAGENET_MEAN_STD), reference, rtol=1e-6, atol=1e-6)


def test_caffe_matches_keras_preprocess_input():
    keras_resnet = pytest.importorskip("tensorflow.keras.applications.resnet50")
    images = _uint8_images(2)
    reference = keras_resnet.preprocess_input(images.astype(np.float32))
    np.testing.assert_allclose(preprocess_images(images, CAFFE), reference, rtol=1e-6, atol=1e-4)


def test_preprocess_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"\(batch, height, width, 3\)"):
        preprocess_images(np.zeros((32, 32, 3), np.uint8), CAFFE)
    with pytest.raises(ValueError, match=r"uint8 .* or floating"):
        preprocess_images(np.zeros((1, 8, 8, 3), np.int32), CAFFE)
    with pytest.raises(ValueError, match="'kind' in"):
        preprocess_images(np.zeros((1, 8, 8, 3), np.uint8), {"kind": "inception"})
    floats = np.random.default_rng(0).normal(size=(1, 4, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(preprocess_images(floats, CAFFE), floats)  # already normalised


@pytest.mark.parametrize("spec", [CIFAR_SPEC, CAFFE], ids=["mean_std", "caffe"])
def test_predict_uint8_equals_manual_normalisation_then_apply(tmp_path, resnet20, spec):
    model, variables = resnet20
    loaded_model, loaded = load_checkpoint(_save(tmp_path / "c", model, variables, spec=spec))
    images = _uint8_images(4)
    if spec["kind"] == "mean_std":
        manual = (images / 255.0 - np.array(spec["mean"])) / np.array(spec["std"])
    else:
        manual = images[..., ::-1] - np.array(spec["mean_bgr"])
    expected = model.apply(variables, manual.astype(np.float32), train=False)
    logits = make_predict_fn(loaded_model)(loaded, images)
    assert logits.dtype == jnp.float32 and logits.shape == (4, 10)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    # Float input is taken as already normalised.
    np.testing.assert_allclose(
        make_predict_fn(loaded_model)(loaded, manual.astype(np.float32)), expected, rtol=1e-5, atol=1e-5
    )


def test_predict_needs_a_spec_for_uint8(resnet20):
    model, variables = resnet20
    with pytest.raises(ValueError, match="uint8 images need a preprocess spec"):
        make_predict_fn(model)(variables, _uint8_images(1))
    explicit = make_predict_fn(model, preprocess=CIFAR_SPEC)(variables, _uint8_images(1))
    assert explicit.shape == (1, 10)


class _CountingResNet(ResNet):
    """Counts how often the network is traced (its __call__ runs only while tracing under jit)."""

    def __call__(self, x, *, train, return_features=False):
        _CountingResNet.traces += 1
        return super().__call__(x, train=train, return_features=return_features)


def test_predict_does_not_retrace_same_shape_and_takes_any_batch_size(resnet20):
    _, variables = resnet20
    counting = _CountingResNet(
        (3, 3, 3), (16, 32, 64), num_classes=10, stem_features=16, cifar_stem=True, shortcut="zero_pad"
    )
    predict = make_predict_fn(counting, preprocess=CIFAR_SPEC)
    _CountingResNet.traces = 0
    images = _uint8_images(8, seed=1)
    full = predict(variables, images)
    for seed in range(3):  # new values, same shape: no retrace
        predict(variables, _uint8_images(8, seed=seed))
    assert _CountingResNet.traces == 1
    for n in (1, 3, 5):
        part = predict(variables, images[:n])
        assert part.shape == (n, 10)
        np.testing.assert_allclose(part, full[:n], rtol=1e-5, atol=1e-5)  # eval mode: rows independent
    assert _CountingResNet.traces == 4
    predict(variables, images[:3])
    assert _CountingResNet.traces == 4


# ----------------------------------------------------------------------------------------------
# restore_matching


def test_restore_matching_copies_backbone_and_keeps_new_head(resnet20):
    _, source = resnet20
    target_model = create_model("resnet20", num_classes=3)
    target = _variables(target_model, seed=5)
    restored = restore_matching(target, source, skip=("head",))
    np.testing.assert_array_equal(restored["params"]["head"]["kernel"], target["params"]["head"]["kernel"])
    assert restored["params"]["head"]["kernel"].shape == (64, 3)
    backbone = {k: v for k, v in restored["params"].items() if k != "head"}
    _assert_bitwise({k: v for k, v in source["params"].items() if k != "head"}, backbone)
    _assert_bitwise(source["batch_stats"], restored["batch_stats"])
    target_model.apply(restored, _uint8_images(1).astype(np.float32), train=False)


def test_restore_matching_lists_every_mismatched_missing_and_unexpected_key(resnet20):
    _, source = resnet20
    target = _variables(create_model("resnet20", num_classes=3))
    source = jax.tree.map(lambda x: x, source)  # a copy we may edit
    del source["params"]["stage2_block1"]["conv1"]
    source["params"]["stage3_block2"]["conv2"]["kernel"] = jnp.zeros((3, 3, 64, 32))
    source["batch_stats"]["extra_bn"] = {"mean": jnp.zeros(4)}
    with pytest.raises(ValueError) as info:
        restore_matching(target, source)
    message = str(info.value)
    for line in (
        "shape mismatch params/head/kernel: target (64, 3) vs source (64, 10)",
        "shape mismatch params/head/bias: target (3,) vs source (10,)",
        "shape mismatch params/stage3_block2/conv2/kernel: target (3, 3, 64, 64) vs source (3, 3, 64, 32)",
        "missing from source: params/stage2_block1/conv1/kernel (3, 3, 32, 32)",
        "unexpected in source: batch_stats/extra_bn/mean (4,)",
    ):
        assert line in message
    # Skipping the head removes only the head lines; the rest still fails.
    with pytest.raises(ValueError) as info:
        restore_matching(target, source, skip=("params/head",))
    assert "head" not in str(info.value).replace("skipping 'params/head'", "")
    assert "stage3_block2/conv2/kernel" in str(info.value)


def test_restore_matching_error_counts_every_key_and_lists_ten_of_each_kind(resnet20):
    _, source = resnet20
    deeper = _variables(create_model("resnet56", num_classes=3))  # 9 blocks a stage where source has 3
    with pytest.raises(ValueError) as info:
        restore_matching(deeper, source)
    lines = str(info.value).splitlines()
    # 18 blocks more, 10 arrays each: unabridged, 183 lines.
    assert lines[0] == "cannot restore source into target: 2 shape mismatch, 180 missing from source"
    assert len(lines) == 1 + 2 + 10 + 1 and lines[-1] == "  ... and 170 more missing from source"


def test_restore_matching_rejects_a_skip_prefix_that_matches_nothing(resnet20):
    _, source = resnet20
    with pytest.raises(ValueError, match="skip prefix 'haed' matches no key"):
        restore_matching(source, source, skip=("haed",))
    with pytest.raises(ValueError, match="skip prefix 'stage1' matches no key"):
        restore_matching(source, source, skip=("stage1",))  # components, not string prefixes


def test_per_pixel_mean_spec_round_trips_and_predicts(tmp_path, resnet20):
    model, variables = resnet20
    mean_image = np.random.default_rng(0).uniform(0.3, 0.6, (32, 32, 3)).round(6)
    spec = {"kind": "mean_std", "mean": mean_image.tolist(), "std": [0.25, 0.25, 0.25]}
    loaded_model, loaded = load_checkpoint(_save(tmp_path / "c", model, variables, spec=spec))
    assert load_meta(tmp_path / "c")["preprocess"] == spec
    images = _uint8_images(2)
    expected = model.apply(variables, ((images / 255.0 - mean_image) / 0.25).astype(np.float32), train=False)
    predict = make_predict_fn(loaded_model)
    np.testing.assert_allclose(predict(loaded, images), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="per-pixel mean image of shape"):
        predict(loaded, _uint8_images(2, size=16))
