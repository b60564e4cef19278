"""Checkpoints: bitwise round trips, meta, errors that name what is wrong, corruption, resharding, and
restore_matching."""

import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checkpoint_helpers import CIFAR_SPEC, assert_bitwise, random_variables, save, uint8_images
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
from resnet_jax.preprocess import CAFFE, preprocess_images


def test_round_trip_is_bitwise_and_drops_training_state(tmp_path, resnet20):
    model, variables = resnet20
    opt_state = {"mu": jnp.ones(4), "count": jnp.array(7)}
    path = save(tmp_path / "ckpt", model, variables, step=7, opt_state=opt_state, step_count=7)
    assert path.is_absolute()
    loaded_model, loaded = load_checkpoint(path)
    assert_bitwise(variables, loaded)
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


@pytest.mark.slow
def test_round_trip_bfloat16_params_and_dtype_strings(tmp_path):
    model = create_model("resnet20", num_classes=4, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    variables = random_variables(model)
    path = save(tmp_path / "bf16", model, variables)
    meta = load_meta(path)
    assert meta["model_kwargs"] == {"num_classes": 4, "dtype": "bfloat16", "param_dtype": "bfloat16"}
    loaded_model, loaded = load_checkpoint(path)
    assert loaded_model.param_dtype == jnp.bfloat16 and loaded_model.num_classes == 4
    assert_bitwise(variables, loaded)


@pytest.mark.slow
def test_group_norm_model_saves_loads_and_predicts_without_batch_stats(tmp_path):
    """GroupNorm keeps no statistics: the checkpoint holds params only and loads and predicts as saved."""
    model = create_model("resnet18", num_classes=4, norm="group")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    assert set(variables) == {"params"}
    with pytest.raises(ValueError, match=r"must contain \('params',\) for resnet18; missing \['params'\]"):
        save(tmp_path / "none", model, {}, name="resnet18")
    # A training state carries an empty batch_stats: saved without it.
    path = save(tmp_path / "gn", model, {**variables, "batch_stats": {}}, name="resnet18")
    loaded_model, loaded = load_checkpoint(path)
    assert loaded_model.norm == "group" and set(loaded) == {"params"}
    assert_bitwise(variables, loaded)
    images = uint8_images(3)
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


def test_make_meta_rejects_a_model_the_name_cannot_build(resnet20):
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
    v3 = random_variables(model, seed=3)
    workdir = tmp_path / "workdir"
    save(workdir / "checkpoints" / "1", model, v1, step=1)
    save(workdir / "checkpoints" / "3", model, v3, step=3)
    for path in (workdir, workdir / "checkpoints", workdir / "checkpoints" / "3", str(workdir)):
        _, loaded = load_checkpoint(path)
        assert_bitwise(v3, loaded)
    step1 = workdir / "checkpoints" / "1"
    for path, step in ((workdir, 1), (step1, None), (step1, 1)):
        _, loaded = load_checkpoint(path, step=step)
        assert_bitwise(v1, loaded)
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
    save(checkpoints / "1", model, variables, step=1)
    # What a save killed mid-write leaves: orbax's temporary directory, never renamed to "2".
    save(tmp_path / "unfinished", model, random_variables(model, seed=9), step=2)
    temporary = checkpoints / "2.orbax-checkpoint-tmp-1700000000000000"
    shutil.move(tmp_path / "unfinished", temporary)
    (temporary / "commit_success.txt").unlink()
    _, loaded = load_checkpoint(tmp_path)
    assert_bitwise(variables, loaded)
    assert load_meta(tmp_path)["step"] == 1
    with pytest.raises(FileNotFoundError, match="temporary, uncommitted"):
        load_checkpoint(temporary)
    shutil.rmtree(checkpoints / "1")
    with pytest.raises(FileNotFoundError, match=r"no finalized checkpoint .*only unfinished saves: 2\.orbax"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("damage", ["truncate_data", "delete_meta"])
def test_corrupted_checkpoint_names_path_step_and_older_steps(tmp_path, damage, resnet20):
    model, variables = resnet20
    checkpoints = tmp_path / "checkpoints"
    save(checkpoints / "1", model, variables, step=1)
    save(checkpoints / "2", model, variables, step=2)
    save(checkpoints / "3", model, variables, step=3)
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
    assert_bitwise(variables, loaded)


def test_state_that_does_not_fit_its_meta_lists_keys(tmp_path, resnet20):
    model, variables = resnet20
    path = save(tmp_path / "ckpt", model, variables)
    other = create_model("resnet20", num_classes=3)
    meta = make_meta("resnet20", other, preprocess=CIFAR_SPEC, origin="resnet-jax", step=0)
    shutil.rmtree(path / "meta")
    # Rewrite meta alone (as a careless conversion script might) so it disagrees with the state.
    save_checkpoint(tmp_path / "donor", random_variables(other), meta)
    shutil.copytree(tmp_path / "donor" / "meta", path / "meta")
    with pytest.raises(CheckpointError, match=r"params/head/bias: model \(3,\) vs checkpoint \(10,\)"):
        load_checkpoint(path)


@pytest.mark.slow
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
    save(tmp_path / "on8", model, sharded)

    one = NamedSharding(Mesh(np.array(jax.devices()[:1]), ("data",)), P())
    _, on1 = load_checkpoint(tmp_path / "on8", sharding=one)
    assert_bitwise(variables, on1)
    assert all(x.sharding.device_set == {jax.devices()[0]} for x in jax.tree.leaves(on1))

    save(tmp_path / "on1", model, on1)
    shardings = jax.tree.map(lambda x: x.sharding, sharded)
    _, back = load_checkpoint(tmp_path / "on1", sharding=shardings)
    assert_bitwise(variables, back)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(sharded), strict=True):
        assert x.sharding == y.sharding

    _, default = load_checkpoint(tmp_path / "on8")
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(default))


def test_restore_matching_copies_backbone_and_keeps_new_head(resnet20):
    _, source = resnet20
    target_model = create_model("resnet20", num_classes=3)
    target = random_variables(target_model, seed=5)
    restored = restore_matching(target, source, skip=("head",))
    np.testing.assert_array_equal(restored["params"]["head"]["kernel"], target["params"]["head"]["kernel"])
    assert restored["params"]["head"]["kernel"].shape == (64, 3)
    backbone = {k: v for k, v in restored["params"].items() if k != "head"}
    assert_bitwise({k: v for k, v in source["params"].items() if k != "head"}, backbone)
    assert_bitwise(source["batch_stats"], restored["batch_stats"])
    target_model.apply(restored, uint8_images(1).astype(np.float32), train=False)


def test_restore_matching_lists_every_mismatched_missing_and_unexpected_key(resnet20):
    _, source = resnet20
    target = random_variables(create_model("resnet20", num_classes=3))
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
    deeper = random_variables(create_model("resnet56", num_classes=3))  # 9 blocks a stage where source has 3
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
