"""Image files to uint8 RGB arrays: the one decoder of resnet-jax (prediction, and training's input pipeline).

    array = decode("cat.jpg")                 # uint8 [H, W, 3] RGB, as a photo viewer shows it
    img = open_image(data, name)              # header only: stored size known, pixels not decoded yet
    img.draft("RGB", (w, h))                  # (JPEG) decode at a reduced DCT scale, if wanted
    array = to_rgb_array(img, name)           # RGB, as stored
    array = apply_orientation(array, exif_orientation(img))   # as shown (what decode does)

The rules, for every format Pillow reads:
  - 8-bit grayscale, RGB, YCbCr, 1-bit: Pillow's RGB conversion.
  - 16-bit grayscale ('I;16*', and 'I', taken as 0-65535): scaled to the full 8-bit range,
    round(v / 257), so 65535 -> 255 and an 8-bit image stored as 16-bit (v * 257) comes back exactly.
    (Pillow's own RGB conversion clips every value above 255 to white.) 32-bit float images are
    refused: their range is unknown.
  - Alpha (RGBA, LA, palette with transparency): dropped, keeping the colour under it, as Pillow's
    convert('RGB') and so timm's and torchvision's loaders do.
  - CMYK: Pillow's conversion (no ICC colour management, like timm's and torchvision's loaders).
  - EXIF orientation: `decode` applies it, so a phone photo taken sideways is seen upright, as every
    viewer shows it. timm's and torchvision's PIL loaders ignore it; results differ from theirs only
    for files whose Orientation tag is not 1. `open_image` and `to_rgb_array` work in the stored
    orientation (`img.size` is the stored size), so code that crops a header-only image computes its
    window in stored pixels and turns the result last: `apply_orientation(crop, exif_orientation(img))`.

Pillow is optional (the `predict` extra): imported when an image is read.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

ImageData = bytes | str | os.PathLike | np.ndarray
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_EXIF_ORIENTATION = 0x0112


class DataError(ValueError):
    """An image that cannot be read or decoded; the message names it and the way out."""


def _pil():
    try:
        from PIL import Image  # optional dependency: the `predict` extra (training's `train` extra has it)
    except ImportError:
        raise ImportError("reading image files needs Pillow: pip install pillow") from None
    return Image


def describe_error(error: BaseException) -> str:
    """What went wrong reading an image, as a short phrase (Pillow's own text names a BytesIO object)."""
    if type(error).__name__ == "UnidentifiedImageError":
        return "not an image Pillow can identify"
    if isinstance(error, OSError) and error.strerror:  # the file itself: missing, a symlink loop, ...
        return error.strerror
    return str(error) or type(error).__name__


def open_image(data: ImageData, name: str | None = None) -> Image.Image:
    """A PIL image with only its header read (pixels are decoded later, possibly in draft mode).

    Args:
      data: encoded bytes (JPEG, PNG, ...), a file path, or an already decoded uint8 or uint16
        [H, W] / [H, W, 1] / [H, W, 3] / [H, W, 4] array.
      name: what to call the image in errors (a path or 'dataset[index]'); defaults to `data` for paths.

    Raises:
      DataError: the bytes or file are not an image Pillow can read, naming `name`.
    """
    Image = _pil()
    if isinstance(data, np.ndarray):
        try:
            return Image.fromarray(data.squeeze(-1) if data.ndim == 3 and data.shape[-1] == 1 else data)
        except (TypeError, ValueError) as e:
            raise DataError(
                f"cannot read image {name or '<array>'}: an array of shape {data.shape} and dtype "
                f"{data.dtype} is not an image ({e}); pass uint8 [H, W] or [H, W, 3]"
            ) from None
    if name is None:
        name = "<bytes>" if isinstance(data, bytes) else os.fspath(data)
    try:
        return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (Image.UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(
            f"cannot read image {name}: {describe_error(e)}; remove or replace the file"
        ) from None


def exif_orientation(img: Image.Image) -> int:
    """The EXIF Orientation of `img` (1-8; 1, upright, where the file has none or a bad one)."""
    try:
        value = int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except (OSError, ValueError, TypeError, SyntaxError):  # malformed EXIF: shown as stored
        return 1
    return value if 1 <= value <= 8 else 1


# EXIF orientation -> the turn that shows the image upright (Pillow's exif_transpose: 2 FLIP_LEFT_RIGHT,
# 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90).
_TURNS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """`array` ([H, W, ...]) turned as EXIF `orientation` says, as Pillow's ImageOps.exif_transpose does."""
    turn = _TURNS.get(orientation)
    return np.ascontiguousarray(turn(array)) if turn else array


def to_rgb_array(img: Image.Image, name: str = "<image>") -> np.ndarray:
    """Decodes `img` to uint8 [H, W, 3] RGB by the rules of the module docstring, in stored orientation.

    Raises:
      DataError: the pixel data is truncated or corrupt, or its mode has no RGB meaning, naming `name`.
    """
    try:
        img.load()
        if img.mode in _SIXTEEN_BIT:
            levels = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
            gray = ((levels + 128) // 257).astype(np.uint8)  # round(v / 257), halves up
            array = np.repeat(gray[:, :, None], 3, axis=2)
        elif img.mode == "F":
            raise DataError(
                f"cannot decode image {name}: 32-bit float pixels have no known range; "
                "save it with 8 or 16 bits per channel"
            )
        else:
            if img.mode in ("P", "PA") and ("transparency" in img.info or img.mode == "PA"):
                img = img.convert("RGBA")  # Pillow warns when a palette image with transparency goes to RGB
            array = np.asarray(img.convert("RGB"), np.uint8)
    except (OSError, ValueError, SyntaxError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot decode image {name}: {e}; remove or replace the file") from None
    return array


def decode(data: ImageData, name: str | None = None) -> np.ndarray:
    """Decodes an image fully to uint8 [H, W, 3] RGB, turned upright by its EXIF orientation.

    See `open_image` for `data` and `name`.
    """
    if name is None:
        name = "<bytes>" if isinstance(data, bytes) else "<array>" if isinstance(data, np.ndarray) else None
        name = name or os.fspath(data)
    img = open_image(data, name)
    array = to_rgb_array(img, name)  # loads the pixels, and with them a PNG's EXIF (stored after them)
    return apply_orientation(array, exif_orientation(img))
