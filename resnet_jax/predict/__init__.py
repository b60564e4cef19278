"""`make_predict_fn`: a jitted eval-mode forward pass that takes raw uint8 images or normalised floats."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.checkpoint.trees import VARIABLE_COLLECTIONS
from resnet_jax.preprocess import normalized_range, preprocess_images, resize_images, validate_preprocess
from resnet_jax.resample import center_crop_resize


def resize_input(
    images: jax.Array | np.ndarray,
    image_size: tuple[int, int] | None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
) -> jax.Array:
    """Raw uint8 NHWC images of any size brought to a model's input size, as its checkpoint says.

    Works on host arrays and inside `jax.jit`.

    Args:
      images: uint8 [N, H, W, 3] raw pixels.
      image_size: (H, W) the model is evaluated at (the checkpoint's `image_size`); None: unchanged.
      crop_pct: set (the checkpoint's `crop_pct`, e.g. timm's weights): timm's evaluation transform,
        the shorter side resized to floor(size / crop_pct) with `interpolation` exactly as Pillow does,
        then the centre crop (`resnet_jax.resample.center_crop_resize`), whatever the images' size.
        None: the whole image resized to image_size with `resnet_jax.preprocess.resize_images` (the
        resize training used) when its size differs.
      interpolation: 'bilinear' (default) or 'bicubic'; only with crop_pct.

    Returns:
      uint8 [N, image_size[0], image_size[1], 3] (the input itself when nothing is to be done).
    """
    if image_size is None:
        return jnp.asarray(images)
    size = (int(image_size[0]), int(image_size[1]))
    if crop_pct is not None:
        return center_crop_resize(images, size, crop_pct, interpolation or "bilinear")
    return resize_images(images, size)


def check_float_images(images: Any, spec: Mapping[str, Any] | None) -> None:
    """Rejects float images that cannot be normalised input: non-finite, or plainly raw 0-255 pixels.

    Args:
      images: a concrete (not traced) float array.
      spec: the preprocess spec the model expects; None skips the range check.

    Raises:
      ValueError: naming what is wrong and how to pass the images instead.
    """
    x = images if isinstance(images, np.ndarray) else jnp.asarray(images)
    lo, hi, finite, integral = (
        float(v) for v in jax.device_get((x.min(), x.max(), jnp.isfinite(x).all(), (x == jnp.round(x)).all()))
    )
    if not finite:
        raise ValueError("images contain NaN or infinite values")
    raw = "; raw pixels must be passed as uint8 (images.astype(np.uint8)), which are normalised for you"
    if spec is None:
        return
    if spec["kind"] == "caffe":
        # Caffe-normalised values are pixel - mean_bgr with fractional means: never all whole numbers.
        if integral and lo >= 0 and hi > 1:
            raise ValueError(
                f"float images hold whole numbers in [{lo:g}, {hi:g}], not normalised input{raw}"
            )
        return
    low, high = normalized_range(spec)
    if lo < low - 1e-3 or hi > high + 1e-3:
        raise ValueError(
            f"float images span [{lo:.4g}, {hi:.4g}], outside [{low:.4g}, {high:.4g}] where this model's "
            f"normalised pixels lie{raw}"
        )


def make_predict_fn(
    model: nn.Module,
    preprocess: Mapping[str, Any] | None = None,
    *,
    check_inputs: bool = True,
    image_size: tuple[int, int] | None = None,
    resize: bool = True,
) -> Callable[[Mapping[str, Any], jax.Array | np.ndarray], jax.Array]:
    """A `predict(variables, images) -> float32 logits` in eval mode, jitted.

    Args:
      model: the model, e.g. from `load_checkpoint`.
      preprocess: the spec for uint8 images; default `model.preprocess` (set by `load_checkpoint`).
      check_inputs: check float images before the jitted call (see below). Under an outer `jax.jit`
        the images are traced and only their dtype and shape are checked.
      image_size: (H, W) the model is evaluated at; default `model.image_size` (set by `load_checkpoint`
        and `resnet_jax.pretrained` from the checkpoint meta: for weights whose training and test
        sizes differ, such as timm's, the test size); None: no resizing.
      resize: bring uint8 images to `image_size` (see below); False: take them as they are (already
        resized, e.g. one by one with `resize_input` on the host).

    The returned function takes variables {'params', 'batch_stats'} (other entries are ignored) and
    NHWC RGB images of any batch size, either
      - uint8 raw pixels (0-255), resized inside the jit by `resize_input` with the model's
        `crop_pct` and `interpolation`: for timm's and torchvision's weights (`resnet_jax.pretrained`)
        their evaluation transform, resize the shorter side and crop the centre, matching timm's
        pixels exactly, whatever the images' size; for this project's checkpoints (no crop_pct) the
        whole image is resized to `image_size` when its H, W differ (with
        `resnet_jax.preprocess.resize_images`, the function training resized with); then normalised
        by the spec, or
      - floats already normalised the way training normalised them. Float images with NaN or
        infinite values, or outside the range normalised pixels can take (e.g. floats in 0-255), are
        a ValueError: pass raw pixels as uint8. Float images are never resized (resizing normalised
        values would not match training, which resizes raw pixels).
    It compiles once per input shape and dtype; repeated calls with the same shape do not retrace.

    Raises (when called):
      ValueError: for uint8 images and no spec, images that are not (N, H, W, 3), a dtype neither
        uint8 nor floating, or bad floats.
    """
    spec = preprocess if preprocess is not None else getattr(model, "preprocess", None)
    if spec is not None:
        spec = validate_preprocess(spec)
    size = tuple(image_size) if image_size is not None else getattr(model, "image_size", None)
    crop_pct, interpolation = getattr(model, "crop_pct", None), getattr(model, "interpolation", None)

    @jax.jit
    def forward(variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
        if resize and images.dtype == jnp.uint8:
            images = resize_input(images, size, crop_pct, interpolation)
        if spec is not None:
            images = preprocess_images(images, spec)
        collections = {c: variables[c] for c in VARIABLE_COLLECTIONS if c in variables}
        return model.apply(collections, images, train=False)

    def predict(variables: Mapping[str, Any], images: jax.Array | np.ndarray) -> jax.Array:
        if getattr(images, "ndim", None) != 4 or images.shape[-1] != 3:
            raise ValueError(
                "images must be NHWC RGB, shape (batch, height, width, 3), "
                f"got {getattr(images, 'shape', None)}"
            )
        dtype = jnp.dtype(images.dtype)  # before jit turns int64 into int32: the error names what was passed
        if dtype != jnp.uint8 and not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"images must be uint8 (raw pixels 0-255) or floating (already normalised), got {dtype}"
            )
        if dtype == jnp.uint8 and spec is None:
            raise ValueError(
                "uint8 images need a preprocess spec: pass make_predict_fn(model, preprocess=spec), "
                "load the model with load_checkpoint, or pass images already normalised as floats"
            )
        if check_inputs and jnp.issubdtype(dtype, jnp.floating) and not isinstance(images, jax.core.Tracer):
            check_float_images(images, spec)
        return forward(variables, images)

    return predict
