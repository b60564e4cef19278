"""The checkpoint meta's evaluation resize (crop_pct, interpolation, train_image_size): optional, checked,
carried onto the model, and absent from older checkpoints, which behave as before."""

import json
from pathlib import Path

import numpy as np
import pytest

import resnet_jax
from resnet_jax.checkpoint import make_meta, model_from_meta, validate_meta
from resnet_jax.predict import resize_input

FIXTURE = Path(__file__).parent / "fixtures" / "resnet20_v0" / "checkpoint"
SPEC = {"kind": "mean_std", "mean": [0.5] * 3, "std": [0.25] * 3}


def base_meta(**extra):
    return {"model": "resnet20", "model_kwargs": {}, "preprocess": SPEC, "origin": "timm", "step": 0, **extra}


def test_checkpoints_without_resize_fields_behave_as_before():
    # The fixture was written before these fields existed (and has no image_size: no resizing at all).
    meta = resnet_jax.load_meta(FIXTURE)
    assert not {"crop_pct", "interpolation", "train_image_size", "image_size"} & set(meta)
    model, variables = resnet_jax.load_checkpoint(FIXTURE)
    assert model.crop_pct is None and model.interpolation is None
    # Same pixels into the model either way; the programs fuse differently (measured: up to 2.3e-6).
    predict = resnet_jax.make_predict_fn(model)
    image = np.random.default_rng(0).integers(0, 256, (1, 45, 60, 3), dtype=np.uint8)
    normalized = resnet_jax.preprocess.preprocess_images(image, model.preprocess)
    np.testing.assert_allclose(predict(variables, image), predict(variables, normalized), rtol=0, atol=1e-5)
    # With image_size but no crop_pct (every CIFAR run records that): the whole image is resized.
    run = model_from_meta({**meta, "image_size": [32, 32]})
    squashed = np.asarray(resnet_jax.preprocess.resize_images(image, (32, 32)))
    predict = resnet_jax.make_predict_fn(run)
    np.testing.assert_allclose(predict(variables, image), predict(variables, squashed), rtol=0, atol=1e-5)


def test_resize_fields_reach_the_model_and_make_predict_fn():
    meta = base_meta(image_size=[32, 32], crop_pct=0.5, interpolation="bicubic", train_image_size=[24, 24])
    validate_meta(json.loads(json.dumps(meta)))  # JSON round trip, as the checkpoint stores it
    model = model_from_meta(meta)
    assert (model.image_size, model.crop_pct, model.interpolation) == ((32, 32), 0.5, "bicubic")
    assert model_from_meta({**meta, "interpolation": None}).interpolation == "bilinear"  # the default
    _, variables = resnet_jax.load_checkpoint(FIXTURE)  # a ResNet-20's (initialising one compiles for 30 s)
    image = np.random.default_rng(1).integers(0, 256, (1, 75, 45, 3), dtype=np.uint8)
    cropped = np.asarray(resize_input(image, (32, 32), 0.5, "bicubic"))  # shorter side 64, centre 32
    squashed = np.asarray(resnet_jax.preprocess.resize_images(image, (32, 32)))  # the old whole-image rule
    predict, as_given = resnet_jax.make_predict_fn(model), resnet_jax.make_predict_fn(model, resize=False)
    logits = np.asarray(predict(variables, image))
    np.testing.assert_allclose(logits, as_given(variables, cropped), rtol=0, atol=1e-6)
    assert np.abs(logits - np.asarray(as_given(variables, squashed))).max() > 1e-3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"image_size": [64, 64], "crop_pct": 0}, r"'crop_pct' must be a number in \(0, 1\]"),
        ({"image_size": [64, 64], "crop_pct": 1.5}, r"'crop_pct' must be a number in \(0, 1\]"),
        ({"image_size": [64, 64], "crop_pct": True}, r"'crop_pct' must be a number"),
        ({"crop_pct": 0.9}, r"'crop_pct' needs a square 'image_size'"),
        ({"image_size": [64, 48], "crop_pct": 0.9}, r"'crop_pct' needs a square 'image_size'"),
        (
            {"image_size": [64, 64], "interpolation": "bicubic"},
            r"'interpolation' must be one of .* with 'crop_pct'",
        ),
        (
            {"image_size": [64, 64], "crop_pct": 0.9, "interpolation": "lanczos"},
            r"'interpolation' must be one of",
        ),
        ({"train_image_size": [0, 5]}, r"'train_image_size' must be \[height, width\]"),
    ],
)
def test_bad_resize_fields_are_named(extra, message):
    with pytest.raises(ValueError, match=message):
        validate_meta(base_meta(**extra))


def test_make_meta_takes_a_model_restored_with_its_contract():
    meta = base_meta(image_size=[32, 32], crop_pct=0.875, interpolation="bilinear", class_names=["a"] * 10)
    restored = model_from_meta(meta)
    again = make_meta("resnet20", restored, preprocess=SPEC, origin="timm", step=0)  # no contract needed
    assert again["model_kwargs"] == {"num_classes": 10} and "crop_pct" not in again
