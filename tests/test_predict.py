"""Preprocess specs and make_predict_fn: torchvision's and Keras' normalisation, uint8 and float input,
no retracing, per-pixel means."""

import jax.numpy as jnp
import numpy as np
import pytest
from checkpoint_helpers import CIFAR_SPEC, save, uint8_images

from resnet_jax import ResNet
from resnet_jax.checkpoint import (
    load_checkpoint,
    load_meta,
)
from resnet_jax.predict import make_predict_fn
from resnet_jax.preprocess import CAFFE, IMAGENET_MEAN_STD, preprocess_images


def test_mean_std_matches_torchvision_normalize():
    torch = pytest.importorskip("torch")
    transforms = pytest.importorskip("torchvision.transforms")
    images = uint8_images(2)
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
    images = uint8_images(2)
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
def test_predict_uint8_equals_manual_normalisation_then_apply(tmp_path, spec, resnet20):
    model, variables = resnet20
    loaded_model, loaded = load_checkpoint(save(tmp_path / "c", model, variables, spec=spec))
    images = uint8_images(4)
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
        make_predict_fn(model)(variables, uint8_images(1))
    explicit = make_predict_fn(model, preprocess=CIFAR_SPEC)(variables, uint8_images(1))
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
    images = uint8_images(8, seed=1)
    full = predict(variables, images)
    for seed in range(3):  # new values, same shape: no retrace
        predict(variables, uint8_images(8, seed=seed))
    assert _CountingResNet.traces == 1
    for n in (1, 3, 5):
        part = predict(variables, images[:n])
        assert part.shape == (n, 10)
        np.testing.assert_allclose(part, full[:n], rtol=1e-5, atol=1e-5)  # eval mode: rows independent
    assert _CountingResNet.traces == 4
    predict(variables, images[:3])
    assert _CountingResNet.traces == 4


def test_per_pixel_mean_spec_round_trips_and_predicts(tmp_path, resnet20):
    model, variables = resnet20
    mean_image = np.random.default_rng(0).uniform(0.3, 0.6, (32, 32, 3)).round(6)
    spec = {"kind": "mean_std", "mean": mean_image.tolist(), "std": [0.25, 0.25, 0.25]}
    loaded_model, loaded = load_checkpoint(save(tmp_path / "c", model, variables, spec=spec))
    assert load_meta(tmp_path / "c")["preprocess"] == spec
    images = uint8_images(2)
    expected = model.apply(variables, ((images / 255.0 - mean_image) / 0.25).astype(np.float32), train=False)
    predict = make_predict_fn(loaded_model)
    np.testing.assert_allclose(predict(loaded, images), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="per-pixel mean image of shape"):
        predict(loaded, uint8_images(2, size=16))
