"""Host image ops of the streaming pipeline: every mode to uint8 RGB, torchvision's crop bounds, draft-mode
decoding, timm's eval view pixel for pixel, EXIF orientation, CIFAR augmentation, errors naming the image."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers import encode_image, smooth_image
from train.data import image_ops


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA"])
def test_every_mode_decodes_to_uint8_rgb(mode):
    img = Image.new(mode, (20, 10), 7 if mode in ("L", "P", "I;16") else None)
    data = io.BytesIO()
    img.save(data, "JPEG" if mode == "CMYK" else "PNG")
    out = image_ops.decode(data.getvalue())
    assert out.dtype == np.uint8 and out.shape == (10, 20, 3)
    if mode == "L":
        assert np.all(out == 7), "grey must be replicated to the three channels"
    rng = image_ops.example_rng(0, 1)
    crop = image_ops.random_resized_crop(image_ops.open_image(data.getvalue()), rng, 8)
    assert crop.shape == (8, 8, 3) and crop.dtype == np.uint8


def test_crop_boxes_follow_torchvision_bounds():
    area, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    for i in range(500):
        left, top, w, h = image_ops.sample_crop_box(400, 350, image_ops.example_rng(1, i), area, ratio)
        assert left >= 0 and left + w <= 400 and top >= 0 and top + h <= 350
        assert 0.08 * 0.97 <= w * h / (400 * 350) <= 1.0
        assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03
    # A 100:1 strip fits no window of ratio <= 4/3 and area >= 8%: the centred fallback, ratio clamped.
    assert image_ops.sample_crop_box(1000, 10, image_ops.example_rng(0, 0)) == (493, 0, 13, 10)


def test_draft_mode_crop_matches_a_full_decode():
    data = encode_image(smooth_image(700, 800), quality=95)
    full = Image.fromarray(image_ops.decode(data))  # not a JPEG object any more: no draft
    for i in range(5):
        fast = image_ops.random_resized_crop(image_ops.open_image(data), image_ops.example_rng(0, i), 64)
        slow = image_ops.random_resized_crop(full, image_ops.example_rng(0, i), 64)
        diff = np.abs(fast.astype(int) - slow.astype(int)).mean()
        assert diff < 3, f"draft decode of draw {i} is off by {diff:.1f} grey levels on average"
    again = image_ops.random_resized_crop(image_ops.open_image(data), image_ops.example_rng(0, 0), 64)
    first = image_ops.random_resized_crop(image_ops.open_image(data), image_ops.example_rng(0, 0), 64)
    np.testing.assert_array_equal(again, first)


@pytest.mark.parametrize(("interpolation", "crop_pct"), [("bilinear", 0.875), ("bicubic", 0.95)])
def test_eval_view_is_timms_eval_transform_pixel_for_pixel(interpolation, crop_pct):
    """resize_shorter_center_crop gives the pixels of timm's own eval transform (before ToTensor)."""
    timm_data = pytest.importorskip("timm.data")
    arr = smooth_image(300, 400, seed=2)
    out = image_ops.Transform("resize_shorter_center_crop", 224, crop_pct, interpolation)(arr, None, "x")
    pipeline = timm_data.create_transform(
        input_size=(3, 224, 224), interpolation=interpolation, crop_pct=crop_pct
    )
    reference = pipeline.transforms[0](Image.fromarray(arr))  # Resize(floor(224 / crop_pct))
    reference = np.asarray(pipeline.transforms[1](reference))  # CenterCrop(224)
    np.testing.assert_array_equal(out, reference)
    assert image_ops.resize(Image.fromarray(arr), (30, 50)).shape == (30, 50, 3)


def test_exif_rotated_files_are_cropped_upright():
    """A photo stored sideways with EXIF orientation 6 gives the pixels of the same photo stored upright."""
    upright = smooth_image(40, 60, seed=3)  # shown 40 high, 60 wide
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="PNG", exif=exif)
    for name, size in (("none", 0), ("resize_shorter_center_crop", 24)):
        transform = image_ops.Transform(name, size)
        np.testing.assert_array_equal(transform(buf.getvalue(), None, "r"), transform(upright, None, "u"))
    # Training's resize works on the stored (draft-decoded) window and turns last: Pillow then resizes the
    # axes in the other order, which moves some pixels by one level.
    transform = image_ops.Transform("resize", 16)
    turned, direct = transform(buf.getvalue(), None, "r"), transform(upright, None, "u")
    assert turned.shape == direct.shape == (16, 16, 3)
    assert np.abs(turned.astype(int) - direct.astype(int)).max() <= 1


def test_pad_crop_flip_is_a_window_of_the_padded_image():
    img = np.random.default_rng(0).integers(1, 256, (8, 8, 3), dtype=np.uint8)
    padded = np.pad(img, ((2, 2), (2, 2), (0, 0)))
    kinds = set()
    for i in range(40):
        out = image_ops.pad_crop_flip(img, image_ops.example_rng(0, i), pad=2)
        windows = [padded[y : y + 8, x : x + 8] for y in range(5) for x in range(5)]
        plain = any(np.array_equal(w, out) for w in windows)
        mirrored = any(np.array_equal(w[:, ::-1], out) for w in windows)
        assert plain or mirrored
        kinds.add((plain, mirrored))
    assert (False, True) in kinds and (True, False) in kinds, "40 draws should include both"


def test_corrupt_bytes_name_the_image():
    with pytest.raises(image_ops.DataError, match=r"cannot read image ds\[3\]"):
        image_ops.decode(b"not an image", name="ds[3]")
    data = encode_image(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    truncated = data[: len(data) // 2]
    with pytest.raises(image_ops.DataError, match=r"cannot decode image x\.jpg"):
        image_ops.decode(truncated, name="x.jpg")
