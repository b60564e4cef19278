"""Evaluation preprocessing equals timm's: Pillow's resize bit for bit, timm's crop, timm's logits.

References nobody here wrote: Pillow's `Image.resize`, timm's `create_transform(**resolve_data_config(...))`
and timm's models.
"""

import jax
import numpy as np
import pytest
import timm
import torch
from hub_cache import publish, timm_model
from huggingface_hub import constants
from PIL import Image

import resnet_jax
from resnet_jax.predict import resize_input
from resnet_jax.resample import center_crop_box, center_crop_resize, resize_like_pil

PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
# One compiled program per shape, as inside make_predict_fn (op by op would compile each op per shape).
resize_jit = jax.jit(resize_like_pil, static_argnums=(1, 2))
center_crop_resize_jit = jax.jit(center_crop_resize, static_argnums=(1, 2, 3))


def photo(height, width, seed=0):
    """A photo-like uint8 image: a smooth colour field with noise, so that every filter tap matters."""
    y, x = np.mgrid[0:height, 0:width]
    field = np.stack([128 + 100 * np.sin(x / 23 + c) * np.cos(y / 17 - c) for c in range(3)], -1)
    noise = np.random.default_rng(seed).normal(0, 25, (height, width, 3))
    return np.clip(field + noise, 0, 255).astype(np.uint8)


# Shrinking and enlarging each axis; heights shrunk by more than twice the width's reduction (Pillow 13
# resizes those height first); one axis unchanged; 1-pixel sides; large downscales (wide filters).
SHAPES = [
    ((375, 500), (256, 341)),
    ((500, 375), (341, 256)),
    ((97, 131), (224, 224)),
    ((300, 40), (100, 38)),
    ((600, 90), (150, 120)),
    ((120, 200), (120, 77)),
    ((1, 50), (3, 7)),
    ((480, 640), (31, 29)),
    ((33, 33), (32, 34)),
]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_resize_is_pillows_bit_for_bit(interpolation):
    for i, ((h, w), (oh, ow)) in enumerate(SHAPES):
        image = photo(h, w, seed=i)
        want = np.asarray(Image.fromarray(image).resize((ow, oh), PIL_FILTERS[interpolation]))
        got = np.asarray(resize_jit(image[None], (oh, ow), interpolation))[0]
        assert got.shape == want.shape and np.array_equal(got, want), ((h, w), (oh, ow), interpolation)


@pytest.mark.parametrize(
    "tag", ["resnet18.tv_in1k", "resnet18.a1_in1k", "resnet50.tv2_in1k", "resnet18.a3_in1k"]
)
def test_center_crop_resize_is_timms_transform(tag):
    model = timm.create_model(tag, pretrained=False)
    config = timm.data.resolve_data_config({}, model=model, use_test_size=True)
    resize_crop = timm.data.create_transform(**config).transforms[:2]  # Resize, CenterCrop (PIL in, PIL out)
    size = config["input_size"][1]
    # Landscape, portrait, smaller than the crop, exactly the crop, odd margins (round half to even).
    for h, w in [(375, 500), (500, 375), (150, 97), (size, size), (259, 401)]:
        image = photo(h, w)
        want = Image.fromarray(image)
        for t in resize_crop:
            want = t(want)
        got = center_crop_resize_jit(image[None], (size, size), config["crop_pct"], config["interpolation"])
        assert np.array_equal(np.asarray(got)[0], np.asarray(want)), (tag, h, w)
    assert center_crop_box(375, 500, (224, 224), 0.875) == ((256, 341), (16, 58))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    # huggingface_hub reads these at call time; env vars would be read only at its (earlier) import.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path


@pytest.mark.parametrize("tag", ["resnet18.tv_in1k", "resnet18.a1_in1k"])  # bilinear 224, bicubic 288
def test_predict_on_a_raw_photo_matches_timm(offline_hub, tag):
    reference = timm_model(tag)
    publish(offline_hub, tag, reference)
    config = timm.data.resolve_data_config({}, model=reference, use_test_size=True)
    image = photo(375, 500)  # a 500x375 landscape, as most ImageNet photos
    with torch.no_grad():
        want = reference(timm.data.create_transform(**config)(Image.fromarray(image))[None]).numpy()
    model, variables = resnet_jax.pretrained(tag)
    assert (model.image_size, model.crop_pct, model.interpolation) == (
        config["input_size"][1:],
        config["crop_pct"],
        config["interpolation"],
    )
    got = np.asarray(resnet_jax.make_predict_fn(model)(variables, image[None]))
    # Identical pixels, so only float summation order differs (measured: 3e-6 on logits of ~4).
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(want).max() > 1  # logits large enough for the tolerance to mean something


def test_resize_input_keeps_the_old_rule_without_crop_pct():
    image = photo(40, 50)[None]
    assert np.array_equal(resize_input(image, None), image)
    assert np.asarray(resize_input(image, (32, 32))).shape == (1, 32, 32, 3)  # whole image, as training
    assert np.array_equal(resize_input(image, (40, 50)), image)


def test_predict_names_the_dtype_it_was_given():
    spec = {"kind": "mean_std", "mean": [0.5] * 3, "std": [0.5] * 3}
    predict = resnet_jax.make_predict_fn(resnet_jax.create_model("resnet20"), spec)
    with pytest.raises(ValueError, match="got int64"):  # not the int32 jit would have made of it
        predict({}, np.zeros((1, 32, 32, 3), np.int64))
