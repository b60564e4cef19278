"""Cached features over the streaming pipeline: an image-folder fine-tune trains its head on the batches an
uncached run sees, resumes, and falls back (saying why) where host augmentation is random."""

import json

import chex
import numpy as np
import pytest

from resnet_jax.checkpoint import load_checkpoint
from tests.helpers import CLASSES, backbone_checkpoint, finetune_config, saved_state, write_image_folder
from train import finetune, policy, steps, train
from train.cache.streaming import StreamingFeaturePipeline
from train.data import image_ops, streaming
from train.data.image_folder import image_folder_sources

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"

SPEC = {"kind": "mean_std", "mean": [0.5, 0.45, 0.4], "std": [0.25, 0.25, 0.25]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    write_image_folder(root, num_train=40, num_test=12)  # 12 test images: one padded eval batch of 8
    return root


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return backbone_checkpoint(tmp_path_factory.mktemp("backbone") / "0", SPEC)


def _config(folder, backbone_path, **overrides):
    c = finetune_config(backbone_path, num_classes=len(CLASSES), num_train_steps=6, learning_rate=0.5)
    c.pipeline, c.data_source = "grain", "folder"
    c.train_dir, c.eval_dir = str(folder / "train"), str(folder / "test")
    c.train_transform = c.eval_transform = "none"  # deterministic: cacheable
    c.eval_hflip = True
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps, c.progress_bar = 1, 3, 3, False
    c.update(overrides)
    return c


def _pipeline(folder, train_transform, seed=0):
    sources = image_folder_sources(str(folder / "train"), str(folder / "test"))
    return streaming.StreamingPipeline(
        *sources, mesh=steps.make_mesh(), batch_size=8, eval_batch_size=8, seed=seed,
        train_transform=train_transform, eval_transform="none",
    )  # fmt: skip


def test_cached_run_equals_uncached_and_resumes(folder, backbone, tmp_path, monkeypatch):
    path, source = backbone
    built = []
    original = StreamingFeaturePipeline.build.__func__
    spy = classmethod(lambda cls, *a, **k: built.append(1) or original(cls, *a, **k))
    monkeypatch.setattr(StreamingFeaturePipeline, "build", spy)
    uncached_dir, cached_dir = str(tmp_path / "uncached"), str(tmp_path / "cached")
    uncached = train.train_and_evaluate(_config(folder, path, cache_features=False), uncached_dir)
    assert built == []
    stopped = train.train_and_evaluate(_config(folder, path, stop_after_steps=4), cached_dir)
    assert stopped["step"] == 4 and built == [1]
    cached = train.train_and_evaluate(_config(folder, path), cached_dir)  # resumes at 4, caches again
    assert cached["step"] == 6 and built == [1, 1]
    assert cached["test_accuracy"] == uncached["test_accuracy"]
    assert cached["test_accuracy_hflip"] == uncached["test_accuracy_hflip"]
    assert cached["test_loss"] == pytest.approx(uncached["test_loss"], rel=1e-5)
    a, b = saved_state(uncached_dir, 6), saved_state(cached_dir, 6)
    chex.assert_trees_all_close(a["params"], b["params"], rtol=1e-5, atol=1e-6)
    # The backbone is the checkpoint's, bitwise; the head moved.
    _, variables = load_checkpoint(cached_dir)
    chex.assert_trees_all_equal(
        {k: v for k, v in source["params"].items() if k != "head"},
        {k: v for k, v in variables["params"].items() if k != "head"},
    )
    chex.assert_trees_all_equal(source["batch_stats"], variables["batch_stats"])
    assert variables["params"]["head"]["kernel"].shape == (64, len(CLASSES))


def test_step_rows_are_the_streaming_pipelines_rows(folder):
    """The cached batch of a step holds the examples the streaming pipeline decodes for that step."""
    base = _pipeline(folder, "none", seed=3)
    cached = StreamingFeaturePipeline(base, train={}, eval_stack={})
    source = base.train_source
    images = np.stack([image_ops.decode(source[i]["image"]) for i in range(len(source))])
    for step in (0, 4, 5, 11):  # 5 steps an epoch: epochs 0, 0, 1, 2
        batch = next(iter(base.local_train_batches(step)))
        np.testing.assert_array_equal(batch["image"], images[cached.step_indices(step)])
    base.close()


def test_random_host_augmentation_is_not_cached_and_says_why(folder, backbone):
    path, _ = backbone
    config, _, tune = finetune.resolve_config(_config(folder, path, train_transform="pad_crop_flip"))
    base = _pipeline(folder, "pad_crop_flip")
    params = {"head": {"kernel": np.zeros((64, 4))}}
    use, notice = tune.cache(config, base, params)
    assert not use and "train_transform='pad_crop_flip' augments at random on the host" in notice
    assert "--config.cache_features=False to silence this" in notice
    base.train_transform = image_ops.Transform("none", 0)
    assert tune.cache(config, base, params) == (True, None)
    base.close()
    # ImageNet at ResNet-50 on a 16 GiB device: 9.8 GiB of features do not fit; 10,000 images do.
    assert policy.fits_on_device(1_281_167, 2048, bytes_limit=16 * 2**30) == (
        False,
        "9.8 GiB of features exceed half a device's 16.0 GiB",
    )
    assert policy.fits_on_device(10_000, 2048, bytes_limit=16 * 2**30) == (True, "")


def test_folder_recipe_takes_the_class_count_from_the_folders_and_caches(folder, backbone, tmp_path, capsys):
    """configs/finetune_folder.py as a user runs it, at 32 px for CPU time: 4 class folders, a 4-way head."""
    from configs import finetune_folder

    c = finetune_folder.get_config()
    c.init_checkpoint, c.train_dir, c.eval_dir = str(backbone[0]), str(folder / "train"), str(folder / "test")
    c.update(image_size=32, batch_size=8, eval_batch_size=8, num_train_steps=3, num_workers=0)
    c.progress_bar = False
    result = train.train_and_evaluate(c, str(tmp_path))
    assert result["step"] == 3 and "features not cached" not in capsys.readouterr().out
    model, _ = load_checkpoint(tmp_path)
    assert model.num_classes == len(CLASSES) and tuple(model.class_names) == CLASSES
    assert json.loads((tmp_path / "config.json").read_text())["num_classes"] == len(CLASSES)
