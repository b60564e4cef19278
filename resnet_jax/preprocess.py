"""Preprocess specs: how a checkpoint's model expects uint8 RGB images to be normalised.

A spec is a JSON-able dict stored in every checkpoint's `meta`:

  {"kind": "mean_std", "mean": [r, g, b], "std": [r, g, b]}   x = (img / 255 - mean) / std
      ("mean" may also be an [H][W][3] per-pixel mean image, the paper's CIFAR normalisation)
  {"kind": "caffe", "mean_bgr": [b, g, r]}                     x = img[..., ::-1] - mean_bgr

`mean_std` is torchvision's and this project's convention; `caffe` is Keras' ResNet50
`preprocess_input` (channels flipped to BGR, per-channel mean subtracted, no scaling).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PREPROCESS_KINDS = ("mean_std", "caffe")

# torchvision's ImageNet weights (and Normalize in its reference training recipe).
IMAGENET_MEAN_STD = {"kind": "mean_std", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# Keras applications' ResNet50/101/152 (`preprocess_input(mode='caffe')`).
CAFFE = {"kind": "caffe", "mean_bgr": [103.939, 116.779, 123.68]}

_FIELDS = {"mean_std": ("mean", "std"), "caffe": ("mean_bgr",)}


def validate_preprocess(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Checks a preprocess spec and returns it as a plain dict of tuples (hashable values).

    Args:
      spec: a dict as described in the module docstring.

    Raises:
      ValueError: naming the bad kind or field and the expected form.
    """
    if not isinstance(spec, Mapping) or spec.get("kind") not in PREPROCESS_KINDS:
        raise ValueError(
            f"preprocess spec must be a dict with 'kind' in {PREPROCESS_KINDS}, got {short_repr(spec)}; e.g. "
            f"{IMAGENET_MEAN_STD} or {CAFFE}"
        )
    kind = spec["kind"]
    fields = _FIELDS[kind]
    extra = sorted(set(spec) - {"kind", *fields})
    if extra:
        raise ValueError(f"unknown field(s) {extra} in {kind!r} preprocess spec; expected {fields}")
    out: dict[str, Any] = {"kind": kind}
    for field in fields:
        value = spec.get(field)
        try:
            array = np.asarray(value, np.float64)
        except (TypeError, ValueError):
            array = np.zeros(0)
        per_pixel = field == "mean" and array.ndim == 3 and array.shape[-1] == 3
        if not (array.shape == (3,) or per_pixel) or not np.all(np.isfinite(array)):
            shapes = "3 finite numbers" + (" or an [H][W][3] mean image" if field == "mean" else "")
            raise ValueError(f"{kind!r} preprocess spec needs {field!r}: {shapes}, got {short_repr(value)}")
        if field == "std" and array.min() <= 0:
            raise ValueError(f"'mean_std' preprocess spec needs a positive std, got {value!r}")
        out[field] = _to_tuples(array.tolist())
    return out


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def short_repr(value: Any, limit: int = 200) -> str:
    """repr(value), cut to `limit` characters: error messages quote values without pages of text."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """(images / 255 - mean) / std in float32; mean and std broadcast ([C] or [H, W, C]), in [0, 1] units."""
    return (jnp.asarray(images, jnp.float32) / 255.0 - mean) / std


def normalized_range(spec: Mapping[str, Any]) -> tuple[float, float]:
    """The lowest and highest value a 'mean_std' spec can give a pixel (0 and 255 normalised)."""
    spec = validate_preprocess(spec)
    mean, std = np.asarray(spec["mean"]), np.asarray(spec["std"])
    low, high = (0.0 - mean) / std, (1.0 - mean) / std
    return float(low.min()), float(high.max())


def preprocess_images(images: jax.Array | np.ndarray, spec: Mapping[str, Any]) -> jax.Array:
    """Normalises a batch of RGB images the way a checkpoint's model expects.

    Works on host arrays and inside `jax.jit`.

    Args:
      images: NHWC with 3 channels (RGB). uint8 images are raw pixels (0-255) and are normalised by
        `spec`. Floating images are taken as already normalised (the way training normalised them)
        and are only cast to float32; normalise float pixels in 0-255 by casting them to uint8 first.
      spec: a preprocess spec (see the module docstring).

    Returns:
      float32 images of the same shape.

    Raises:
      ValueError: for a bad spec, a shape that is not (N, H, W, 3), or a non-uint8 integer dtype.
    """
    spec = validate_preprocess(spec)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be NHWC RGB with shape (batch, height, width, 3), got {images.shape}")
    dtype = jnp.dtype(images.dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.asarray(images, jnp.float32)
    if dtype != jnp.uint8:
        raise ValueError(
            f"images must be uint8 (raw pixels 0-255) or floating (already normalised), got {dtype}"
        )
    if spec["kind"] == "mean_std":
        mean = jnp.asarray(spec["mean"], jnp.float32)
        if mean.ndim == 3 and mean.shape != images.shape[1:]:
            raise ValueError(
                f"this preprocess spec subtracts a per-pixel mean image of shape {mean.shape}; "
                f"images must be {mean.shape[0]}x{mean.shape[1]}, got shape {images.shape}"
            )
        return normalize(images, mean, jnp.asarray(spec["std"], jnp.float32))
    return jnp.asarray(images, jnp.float32)[..., ::-1] - jnp.asarray(spec["mean_bgr"], jnp.float32)


def as_mean_std(spec: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, bool]:
    """A spec as `(img' / 255 - mean) / std` where img' is img with its channels reversed if the flag says.

    Lets a pipeline that normalises with a mean and a std (on uint8 RGB batches) serve every kind:
    'caffe' is img_bgr - mean_bgr = (img_bgr / 255 - mean_bgr / 255) / (1 / 255).

    Returns:
      (mean, std, reverse_channels): float64 mean ([3] or [H, W, 3]) and std ([3]) in [0, 1] units.
    """
    spec = validate_preprocess(spec)
    if spec["kind"] == "mean_std":
        return np.asarray(spec["mean"], np.float64), np.asarray(spec["std"], np.float64), False
    return np.asarray(spec["mean_bgr"], np.float64) / 255.0, np.full(3, 1.0 / 255.0), True


def resize_images(images: jax.Array | np.ndarray, size: int | tuple[int, int]) -> jax.Array:
    """uint8 NHWC images resized to `size`, bilinear with antialiasing, rounded back to uint8.

    The one resize of this project: training resizes every in-memory batch with it (after augmentation,
    before normalisation) and `make_predict_fn` resizes raw images of another size with it, so a model
    sees the same pixels in both. Antialiasing matters only when shrinking (it averages over the
    source pixels a target pixel covers instead of sampling four); enlarging (CIFAR-10 32 -> 224) is
    plain bilinear interpolation. The result is rounded to uint8, which is what a dataset stored at
    that size would hold, so every consumer normalises uint8 pixels the same way afterwards.

    Args:
      images: uint8 [N, H, W, C] raw pixels; works inside `jax.jit`.
      size: output side, or (height, width).

    Returns:
      uint8 [N, size_h, size_w, C]; the input itself when it already has that size.
    """
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if jnp.dtype(images.dtype) != jnp.uint8:
        raise ValueError(f"resize_images takes uint8 raw pixels, got {jnp.dtype(images.dtype)}")
    if tuple(images.shape[1:3]) == (h, w):
        return jnp.asarray(images)
    shape = (images.shape[0], h, w, images.shape[3])
    out = jax.image.resize(jnp.asarray(images, jnp.float32), shape, method="bilinear", antialias=True)
    return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)
