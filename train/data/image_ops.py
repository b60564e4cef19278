"""Host-side image ops for the streaming input pipeline: decode to uint8 RGB, crop, resize, flip.

Numpy and PIL only (no jax), so they run in grain's worker processes. Every op takes a PIL image that
may still be undecoded (`open_image` reads only the header) and returns a uint8 [H, W, 3] array. The
crop window is chosen from the header's size first; then a JPEG is decoded with `Image.draft` at the
smallest DCT scale (1/2, 1/4, 1/8) that still leaves the window at least as large as the output, and
only the window is resized (`Image.resize(box=...)`): decoding fewer pixels is the main speed lever.
Resizing is PIL's bilinear filter, antialiased (its support widens with the downscale factor), as
torchvision's `antialias=True` on PIL images.

Randomness comes from `example_rng(seed, position)`: one generator per example of the global stream,
so augmentations do not depend on worker or process counts.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

ImageData = bytes | str | os.PathLike | np.ndarray
TRANSFORMS = ("random_resized_crop", "resize_shorter_center_crop", "resize", "pad_crop_flip", "none")
# The transforms that output config.image_size (the others keep the stored size).
SIZED_TRANSFORMS = ("random_resized_crop", "resize_shorter_center_crop", "resize")


class DataError(ValueError):
    """Bad input data (missing, empty or undecodable); the message names the path and the fix."""


def describe_error(error: BaseException) -> str:
    """What went wrong reading an image, as a short phrase (PIL's own text names a BytesIO object)."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image PIL can identify"
    if isinstance(error, OSError) and error.strerror:  # the file itself: missing, a symlink loop, ...
        return error.strerror
    return str(error) or type(error).__name__


def example_rng(seed: int, position: int) -> np.random.Generator:
    """The generator of one example: a pure function of (seed, global position in the stream)."""
    return np.random.default_rng((seed, position))


def open_image(data: ImageData, name: str | None = None) -> Image.Image:
    """A PIL image with only its header read (pixels are decoded later, possibly in draft mode).

    Args:
      data: encoded bytes (JPEG, PNG, ...), a file path, or an already decoded uint8 [H, W] / [H, W, C].
      name: what to call the image in errors (a path or 'dataset[index]'); defaults to `data` for paths.

    Raises:
      DataError: the bytes or file are not an image PIL can read, naming `name`.
    """
    if isinstance(data, np.ndarray):
        return Image.fromarray(data.squeeze(-1) if data.ndim == 3 and data.shape[-1] == 1 else data)
    if name is None:
        name = "<bytes>" if isinstance(data, bytes) else os.fspath(data)
    try:
        return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        why = describe_error(e)
        raise DataError(f"cannot read image {name}: {why}; remove or replace the file") from None


def to_rgb_array(img: Image.Image, name: str = "<image>") -> np.ndarray:
    """Decodes `img` to uint8 [H, W, 3] RGB (grayscale, RGBA, palette, CMYK and 16-bit converted).

    Raises:
      DataError: the pixel data is truncated or corrupt, naming `name`.
    """
    try:
        if img.mode in ("I", "I;16", "I;16B", "F"):  # 16/32-bit grayscale: PIL's RGB conversion clips
            arr = np.asarray(img, np.float64)
            arr = np.round(255 * arr / max(arr.max(), 1)).astype(np.uint8)
            return np.repeat(arr[:, :, None], 3, axis=2)
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # PIL warns when a palette image with transparency goes to RGB
        return np.asarray(img.convert("RGB"), np.uint8)
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot decode image {name}: {e}; remove or replace the file") from None


def decode(data: ImageData, name: str | None = None) -> np.ndarray:
    """Decodes an image fully to uint8 [H, W, 3] RGB (see open_image for `data` and `name`)."""
    return to_rgb_array(open_image(data, name), name or "<image>")


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
    img: Image.Image, box: tuple[float, float, float, float], size: tuple[int, int], name: str = "<image>"
) -> np.ndarray:
    """Window `box` = (left, top, w, h) of `img` (in its header's pixels) resized to `size` = (H, W).

    Decodes a JPEG at the smallest DCT scale that keeps the window at least `size` (Image.draft), then
    resizes only the window (bilinear, antialiased). Returns uint8 [H, W, 3].
    """
    left, top, w, h = box
    out_h, out_w = size
    if img.format == "JPEG" and img.mode != "P":
        full_w, full_h = img.size
        want = (max(1, math.ceil(full_w * out_w / w)), max(1, math.ceil(full_h * out_h / h)))
        drafted = img.draft(None, want)
        if drafted is not None:
            scale = full_w / drafted[1][2]  # the DCT scale PIL chose: 1, 2, 4 or 8
            left, top, w, h = left / scale, top / scale, w / scale, h / scale
    try:
        img.load()
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot decode image {name}: {e}; remove or replace the file") from None
    if img.mode not in ("RGB", "L"):
        img = Image.fromarray(to_rgb_array(img, name))
    out = img.resize((out_w, out_h), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    return to_rgb_array(out, name)


def random_resized_crop(
    img: Image.Image,
    rng: np.random.Generator,
    size: int = 224,
    area: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    name: str = "<image>",
) -> np.ndarray:
    """Inception-style training crop: a random window (sample_crop_box) resized to `size` x `size`.

    Args:
      img: the image, header read (open_image); decoded here at reduced size when the window allows.
      rng: this example's generator (example_rng).
      size: output side in pixels.
      area: range of the window's area as a fraction of the image's.
      ratio: range of the window's aspect ratio (w / h).
      flip: also mirror left-right with probability 1/2.
      name: what to call the image in errors.

    Returns:
      uint8 [size, size, 3].
    """
    box = sample_crop_box(*img.size, rng, area, ratio)
    out = resize_box(img, box, (size, size), name)
    if flip and rng.random() < 0.5:
        out = np.ascontiguousarray(out[:, ::-1])
    return out


def resize_shorter_center_crop(
    img: Image.Image, resize: int = 256, crop: int = 224, name: str = "<image>"
) -> np.ndarray:
    """ImageNet eval view: scale the shorter side to `resize`, keep the centred `crop` x `crop` square.

    Computed as one resize of the matching window of the source (same result up to rounding of the
    window's edges, fewer pixels touched). Returns uint8 [crop, crop, 3].
    """
    width, height = img.size
    side = crop * min(width, height) / resize  # the crop's side in source pixels
    box = ((width - side) / 2, (height - side) / 2, side, side)
    return resize_box(img, box, (crop, crop), name)


def resize(img: Image.Image, size: int | Sequence[int], name: str = "<image>") -> np.ndarray:
    """The whole image resized to `size` (an int for a square, or (H, W)), aspect ratio not kept."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    return resize_box(img, (0, 0, *img.size), (out_h, out_w), name)


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
      resize_size: shorter side before the centre crop of 'resize_shorter_center_crop'; None means
        round(size * 256 / 224), ImageNet's ratio.
      pad: padding of 'pad_crop_flip'.
      area: area range of 'random_resized_crop'.
    """

    name: str
    size: int = 224
    resize_size: int | None = None
    pad: int = 4
    area: tuple[float, float] = (0.08, 1.0)

    def __post_init__(self):
        if self.name not in TRANSFORMS:
            raise ValueError(f"transform {self.name!r} must be one of {', '.join(TRANSFORMS)}")

    def __call__(self, data: Any, rng: np.random.Generator | None, name: str) -> np.ndarray:
        """Applies the transform to `data` (see open_image) with `rng`; `name` is for errors."""
        img = open_image(data, name)
        if self.name == "random_resized_crop":
            return random_resized_crop(img, rng, self.size, self.area, name=name)
        if self.name == "resize_shorter_center_crop":
            shorter = self.resize_size or round(self.size * 256 / 224)
            return resize_shorter_center_crop(img, shorter, self.size, name=name)
        if self.name == "resize":
            return resize(img, self.size, name=name)
        decoded = to_rgb_array(img, name)
        return pad_crop_flip(decoded, rng, self.pad) if self.name == "pad_crop_flip" else decoded

    @property
    def random(self) -> bool:
        return self.name in ("random_resized_crop", "pad_crop_flip")
