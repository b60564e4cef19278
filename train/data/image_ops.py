"""Host-side image ops for the streaming input pipeline: crop, resize, flip, on the library's decoder.

Numpy and PIL only (no jax), so they run in grain's worker processes. Decoding is resnet_jax.images's (one
decoder for training, evaluation and prediction): every op takes a PIL image whose header only has been
read (`open_image`), works in its stored orientation and turns the result upright by its EXIF
orientation last, and returns a uint8 [H, W, 3] array.

- Training crops (`random_resized_crop`, `resize`): the window is chosen from the header's size first;
  then a JPEG is decoded with `Image.draft` at the smallest DCT scale (1/2, 1/4, 1/8) that still leaves the
  window at least as large as the output, and only the window is resized (`Image.resize(box=...)`):
  decoding fewer pixels is the main speed lever.
- The evaluation view (`resize_shorter_center_crop`) is timm's exactly: the whole image decoded, the
  shorter side resized to floor(size / crop_pct), the centre crop (resnet_jax.resample.center_crop_box), so
  it gives the pixels `make_predict_fn` gives for a checkpoint that records the same crop_pct.

Resizing is PIL's `interpolation` filter ('bilinear' or 'bicubic'), antialiased (its support widens with
the downscale factor), as torchvision's and timm's PIL transforms. Randomness comes from
`example_rng(seed, position)`: one generator per example of the global stream, so augmentations do not
depend on worker or process counts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from resnet_jax.images import (
    DataError,
    apply_orientation,
    decode,
    describe_error,
    exif_orientation,
    open_image,
    to_rgb_array,
)
from resnet_jax.resample import INTERPOLATIONS, center_crop_box

__all__ = [
    "SIZED_TRANSFORMS",
    "TRANSFORMS",
    "DataError",
    "Transform",
    "decode",
    "describe_error",
    "example_rng",
    "open_image",
]

TRANSFORMS = ("random_resized_crop", "resize_shorter_center_crop", "resize", "pad_crop_flip", "none")
# The transforms that output config.image_size (the others keep the stored size).
SIZED_TRANSFORMS = ("random_resized_crop", "resize_shorter_center_crop", "resize")
_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def example_rng(seed: int, position: int) -> np.random.Generator:
    """The generator of one example: a pure function of (seed, global position in the stream)."""
    return np.random.default_rng((seed, position))


def _upright(img: Image.Image, name: str) -> np.ndarray:
    return apply_orientation(to_rgb_array(img, name), exif_orientation(img))


def sample_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop window (left, top, w, h) in pixels of a `width` x `height` image.

    Up to 10 tries of an area fraction uniform in `area` and an aspect ratio log-uniform in `ratio`;
    if none fits, the largest centred window with the ratio clamped to `ratio`.
    """
    total = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = total * rng.uniform(area[0], area[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def resize_box(
    img: Image.Image,
    box: tuple[float, float, float, float],
    size: tuple[int, int],
    name: str = "<image>",
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Window `box` = (left, top, w, h) of `img` (in its stored pixels) resized to `size` = (H, W) of the
    stored orientation, then turned upright.

    Decodes a JPEG at the smallest DCT scale that keeps the window at least `size` (Image.draft), then
    resizes only the window. Returns uint8 [H', W', 3] (H', W' = size, swapped by a 90-degree turn).
    """
    left, top, w, h = box
    out_h, out_w = size
    orientation = exif_orientation(img)
    if img.format == "JPEG" and img.mode != "P":
        full_w, full_h = img.size
        want = (max(1, math.ceil(full_w * out_w / w)), max(1, math.ceil(full_h * out_h / h)))
        drafted = img.draft(None, want)
        if drafted is not None:
            scale = full_w / drafted[1][2]  # the DCT scale PIL chose: 1, 2, 4 or 8
            left, top, w, h = left / scale, top / scale, w / scale, h / scale
    rgb = img if img.mode in ("RGB", "L") else Image.fromarray(to_rgb_array(img, name))
    try:
        out = rgb.resize((out_w, out_h), _FILTERS[interpolation], box=(left, top, left + w, top + h))
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt pixel data, found when decoded
        raise DataError(f"cannot decode image {name}: {e}; remove or replace the file") from None
    return apply_orientation(to_rgb_array(out, name), orientation)


def random_resized_crop(
    img: Image.Image,
    rng: np.random.Generator,
    size: int = 224,
    area: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    name: str = "<image>",
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Inception-style training crop: a random window (sample_crop_box) resized to `size` x `size`.

    Args:
      img: the image, header read (open_image); decoded here at reduced size when the window allows.
      rng: this example's generator (example_rng).
      size: output side in pixels.
      area: range of the window's area as a fraction of the image's.
      ratio: range of the window's aspect ratio (w / h), in the stored orientation.
      flip: also mirror left-right with probability 1/2.
      name: what to call the image in errors.
      interpolation: 'bilinear' or 'bicubic'.

    Returns:
      uint8 [size, size, 3].
    """
    box = sample_crop_box(*img.size, rng, area, ratio)
    out = resize_box(img, box, (size, size), name, interpolation)
    if flip and rng.random() < 0.5:
        out = np.ascontiguousarray(out[:, ::-1])
    return out


def resize_shorter_center_crop(
    img: Image.Image,
    size: int = 224,
    crop_pct: float = 0.875,
    name: str = "<image>",
    interpolation: str = "bilinear",
) -> np.ndarray:
    """The ImageNet evaluation view, timm's exactly: the shorter side resized to floor(size / crop_pct) with
    `interpolation`, then the centre `size` x `size` crop. Returns uint8 [size, size, 3]."""
    upright = _upright(img, name)
    (new_h, new_w), (top, left) = center_crop_box(upright.shape[0], upright.shape[1], (size, size), crop_pct)
    resized = Image.fromarray(upright).resize((new_w, new_h), _FILTERS[interpolation])
    return np.asarray(resized, np.uint8)[top : top + size, left : left + size]


def resize(
    img: Image.Image, size: int | Sequence[int], name: str = "<image>", interpolation: str = "bilinear"
) -> np.ndarray:
    """The whole image resized to `size` (an int for a square, or (H, W) as shown), aspect ratio not kept."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if exif_orientation(img) in (5, 6, 7, 8):  # the stored image is turned by 90 degrees
        out_h, out_w = out_w, out_h
    return resize_box(img, (0, 0, *img.size), (out_h, out_w), name, interpolation)


def pad_crop_flip(img: np.ndarray, rng: np.random.Generator, pad: int = 4, flip: bool = True) -> np.ndarray:
    """CIFAR augmentation: zero-pad by `pad` pixels, take a random window of the original size, and
    mirror left-right with probability 1/2 (if `flip`). `img` is uint8 [H, W, C]; so is the result."""
    h, w = img.shape[:2]
    if pad > 0:
        padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
        y, x = rng.integers(0, 2 * pad + 1, size=2)
        img = padded[y : y + h, x : x + w]
    if flip and rng.random() < 0.5:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


@dataclasses.dataclass(frozen=True)
class Transform:
    """One named host-side transform from a record's image to uint8 [H, W, 3] (picklable for workers).

    Attributes:
      name: one of TRANSFORMS. 'none' keeps the decoded image (every image must have the same size).
      size: output side for 'random_resized_crop', 'resize_shorter_center_crop' and 'resize'.
      crop_pct: 'resize_shorter_center_crop': the crop's share of the resized shorter side (timm's
        crop_pct; 0.875 = 224/256, ImageNet's usual view).
      interpolation: the resize filter of the sized transforms, 'bilinear' or 'bicubic'.
      pad: padding of 'pad_crop_flip'.
      area: area range of 'random_resized_crop'.
    """

    name: str
    size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    pad: int = 4
    area: tuple[float, float] = (0.08, 1.0)

    def __post_init__(self):
        if self.name not in TRANSFORMS:
            raise ValueError(f"transform {self.name!r} must be one of {', '.join(TRANSFORMS)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation {self.interpolation!r} must be one of {', '.join(INTERPOLATIONS)}"
            )
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct={self.crop_pct} must be in (0, 1]")

    def __call__(self, data: Any, rng: np.random.Generator | None, name: str) -> np.ndarray:
        """Applies the transform to `data` (see open_image) with `rng`; `name` is for errors."""
        img = open_image(data, name)
        if self.name == "random_resized_crop":
            return random_resized_crop(
                img, rng, self.size, self.area, name=name, interpolation=self.interpolation
            )
        if self.name == "resize_shorter_center_crop":
            return resize_shorter_center_crop(img, self.size, self.crop_pct, name, self.interpolation)
        if self.name == "resize":
            return resize(img, self.size, name=name, interpolation=self.interpolation)
        decoded = _upright(img, name)
        return pad_crop_flip(decoded, rng, self.pad) if self.name == "pad_crop_flip" else decoded

    @property
    def random(self) -> bool:
        return self.name in ("random_resized_crop", "pad_crop_flip")
