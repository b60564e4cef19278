"""Pillow's bilinear and bicubic resize, bit for bit, in JAX; and timm's evaluation crop.

timm and torchvision evaluate their ImageNet weights on images resized by Pillow (`Image.resize`,
through torchvision's `Resize` on PIL images). `jax.image.resize` computes the same filters in float
and rounds once; Pillow works in 8-bit fixed point, one axis at a time, rounding to uint8 between the
two passes, so the two differ by one level on many pixels. This module does Pillow's arithmetic
exactly (Pillow's src/libImaging/Resample.c, `ImagingResample` for 8-bit images): the same filter
weights in float64 on the host, converted to 22-bit fixed point, applied with int32 sums on device
(exact on every backend) and shifted and clipped as Pillow does. `resize_like_pil` equals
`np.asarray(Image.fromarray(img).resize((w, h), filter))` for Pillow 13 (tests/test_resample.py; the
order of the two passes is Pillow 13's, established by those tests). Pillow 12 and older resize the
width first (from 12.2 but for images over 100 times taller than wide), which differs by one level on
some pixels only where Pillow 13 goes height first: heights reduced by more than twice the width's
reduction, never in the aspect-preserving resize of `center_crop_resize` unless the image is taller
than 2:1.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

INTERPOLATIONS = ("bilinear", "bicubic")
_PRECISION_BITS = 32 - 8 - 2  # Pillow's: 8 bits of result, 2 of headroom for negative lobes


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    # Keys' cubic with a = -0.5, in Pillow's order of operations (float64, as its C doubles).
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


_FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}


@functools.lru_cache(maxsize=256)
def pil_coefficients(in_size: int, out_size: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """The taps and fixed-point weights with which Pillow resamples one axis from in_size to out_size.

    Returns:
      (index, weight): int32 [out_size, taps]; output pixel o is
      (sum_t pixel[index[o, t]] * weight[o, t] + 2**21) >> 22, clipped to 0..255. Unused taps have
      weight 0 (and a valid index).
    """
    kernel, support = _FILTERS[interpolation]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    taps = math.ceil(support) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    # C's (int) truncates toward zero; the clip to 0 makes that the same as floor here.
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)
    count = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    t = np.arange(taps)
    w = kernel(((xmin[:, None] + t).astype(np.float64) - center[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where(t < count[:, None], w, 0.0)
    total = np.cumsum(w, axis=1)[:, -1]  # summed left to right, as Pillow does
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    one = float(1 << _PRECISION_BITS)
    fixed = np.where(w < 0, (-0.5 + w * one).astype(np.int64), (0.5 + w * one).astype(np.int64))
    index = np.minimum(xmin[:, None] + t, in_size - 1)
    return index.astype(np.int32), fixed.astype(np.int32)


def _resample_axis(x: jax.Array, axis: int, out_size: int, interpolation: str) -> jax.Array:
    index, weight = pil_coefficients(x.shape[axis], out_size, interpolation)
    taps = jnp.take(x, jnp.asarray(index), axis=axis)  # the axis becomes (out_size, taps)
    shape = [1] * taps.ndim
    shape[axis], shape[axis + 1] = weight.shape
    total = jnp.sum(taps * jnp.asarray(weight).reshape(shape), axis=axis + 1) + (1 << (_PRECISION_BITS - 1))
    return jnp.clip(total >> _PRECISION_BITS, 0, 255)


def resize_like_pil(images: jax.Array | np.ndarray, size: tuple[int, int], interpolation: str) -> jax.Array:
    """uint8 NHWC images resized to `size` exactly as Pillow's `Image.resize` resizes each image.

    Works inside `jax.jit` (the shapes are static).

    Args:
      images: uint8 [N, H, W, C].
      size: (height, width) of the result.
      interpolation: 'bilinear' or 'bicubic' (Pillow's BILINEAR and BICUBIC, antialiased when shrinking).

    Returns:
      uint8 [N, height, width, C].
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if jnp.dtype(images.dtype) != jnp.uint8:
        raise ValueError(f"resize_like_pil takes uint8 raw pixels, got {jnp.dtype(images.dtype)}")
    (in_h, in_w), (h, w) = images.shape[1:3], tuple(size)
    x = jnp.asarray(images).astype(jnp.int32)
    # Pillow >= 13 resizes the height first when it shrinks by more than twice as many pixels as the width.
    height_first = h < in_h and in_h - h > 2 * (in_w - w)
    for axis, n in ((1, h), (2, w)) if height_first else ((2, w), (1, h)):
        if n != x.shape[axis]:
            x = _resample_axis(x, axis, n, interpolation)
    return x.astype(jnp.uint8)


def center_crop_box(
    height: int, width: int, size: tuple[int, int], crop_pct: float
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where timm's evaluation transform resizes an image and which window it keeps.

    timm (`transforms_imagenet_eval`, crop_mode 'center') resizes the shorter side to
    floor(size / crop_pct) with torchvision's `Resize(int)` (the longer side becomes
    int(shorter * long / short)), then torchvision's `CenterCrop(size)` takes the window at
    round((resized - size) / 2) (Python's round: halves to even).

    Args:
      height, width: the image's size.
      size: (height, width) of the crop; square (timm's ImageNet sizes are).
      crop_pct: the fraction of the resized shorter side the crop covers, in (0, 1].

    Returns:
      ((resized_height, resized_width), (top, left)).
    """
    th, tw = size
    if th != tw:
        raise ValueError(f"the centre-crop transform takes a square size, got {size}")
    short_side = math.floor(th / crop_pct)
    short, long = (width, height) if width <= height else (height, width)
    long_side = int(short_side * long / short)
    new_h, new_w = (long_side, short_side) if width <= height else (short_side, long_side)
    return (new_h, new_w), (round((new_h - th) / 2.0), round((new_w - tw) / 2.0))


def center_crop_resize(
    images: jax.Array | np.ndarray, size: tuple[int, int], crop_pct: float, interpolation: str
) -> jax.Array:
    """timm's evaluation transform on uint8 NHWC images: resize the shorter side, crop the centre.

    Gives the pixels timm's `create_transform(**resolve_data_config(...))` gives for the same image
    (before ToTensor and Normalize); see `center_crop_box` and `resize_like_pil`. Works inside `jax.jit`.

    Args:
      images: uint8 [N, H, W, C].
      size: (height, width) of the result, square.
      crop_pct: see `center_crop_box`.
      interpolation: 'bilinear' or 'bicubic'.

    Returns:
      uint8 [N, size[0], size[1], C].
    """
    (new_h, new_w), (top, left) = center_crop_box(images.shape[1], images.shape[2], size, crop_pct)
    resized = resize_like_pil(images, (new_h, new_w), interpolation)
    return resized[:, top : top + size[0], left : left + size[1]]
