"""resnet_jax.images: one decoder for prediction and training, by the rules in its docstring."""

import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps

from resnet_jax.images import DataError, apply_orientation, decode, exif_orientation, open_image, to_rgb_array


def encoded(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def test_16bit_grayscale_png_is_scaled_to_the_full_8bit_range(tmp_path):
    levels = np.array([[0, 1, 128, 129, 257, 1000], [32767, 32768, 65278, 65279, 65534, 65535]], np.uint16)
    path = tmp_path / "depth.png"
    Image.fromarray(levels).save(path)
    assert Image.open(path).mode.startswith("I")  # Pillow reads it as 16-bit, not 8
    out = decode(path)
    # round(v / 257), halves up: 128/257 = 0.498 -> 0, 129/257 = 0.502 -> 1, 65278/257 = 254.0 -> 254 ...
    want = np.array([[0, 0, 0, 1, 1, 4], [127, 128, 254, 254, 255, 255]], np.uint8)
    assert out.dtype == np.uint8 and out.shape == (2, 6, 3)
    assert np.array_equal(out, np.repeat(want[:, :, None], 3, axis=2))
    # An 8-bit image stored as 16-bit (v * 257) comes back exactly.
    eight = np.arange(256, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(eight * 257).save(path)
    assert np.array_equal(decode(path)[..., 0], eight)
    # What Pillow's own convert("RGB") does to such a file, and so what this decoder fixes.
    clipped = np.asarray(Image.open(path).convert("RGB"))[..., 0]
    assert (clipped == 255).mean() > 0.99


def test_palette_with_transparency_keeps_its_colours_without_warning():
    palette = Image.new("P", (4, 2))
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    palette.putdata([0, 1, 2, 0, 1, 2, 0, 1])
    data = encoded(palette, "PNG", transparency=1)  # green is transparent
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns when such an image goes straight to RGB
        out = decode(data)
    want = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 0, 0]], np.uint8)
    assert np.array_equal(out[0], want)  # alpha dropped, the colour under it kept
    assert np.array_equal(out, np.asarray(Image.open(io.BytesIO(data)).convert("RGBA").convert("RGB")))


def test_rgba_and_la_drop_alpha():
    rgba = np.random.default_rng(0).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    assert np.array_equal(decode(encoded(Image.fromarray(rgba), "PNG")), rgba[..., :3])
    la = Image.fromarray(rgba[..., :2], "LA")
    assert np.array_equal(decode(encoded(la, "PNG")), np.repeat(rgba[..., :1], 3, axis=2))


def test_cmyk_jpeg_is_converted_as_pillow_converts_it():
    cmyk = Image.new("CMYK", (16, 8), (255, 0, 0, 0))  # pure cyan
    cmyk.paste((0, 0, 0, 255), (8, 0, 16, 8))  # black on the right half
    data = encoded(cmyk, "JPEG", quality=95)
    out = decode(data)
    assert out.shape == (8, 16, 3)
    assert np.array_equal(out, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert np.abs(out[:, :6].astype(int) - [0, 255, 255]).max() <= 8  # cyan, up to JPEG's error
    assert out[:, 10:].max() <= 8  # black


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_is_seen_upright(orientation):
    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:10, :20] = 255  # a white block in the top-left corner
    # The file stores the pixels turned the other way and says how to turn them back.
    stored = {3: np.rot90(upright, 2), 6: np.rot90(upright, 1), 8: np.rot90(upright, -1)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(Image.fromarray(np.ascontiguousarray(stored)), "JPEG", quality=95, exif=exif.tobytes())
    img = open_image(data, "phone.jpg")
    assert exif_orientation(img) == orientation and img.size == stored.shape[1::-1]  # header: stored size
    assert to_rgb_array(img).shape == stored.shape  # decoded as stored; decode turns it
    out = decode(data)
    assert out.shape == upright.shape
    assert out[:10, :20].min() > 200 and out[15:, 25:].max() < 50
    assert np.array_equal(out, np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))))


def test_apply_orientation_is_exif_transpose_for_all_eight():
    image = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = encoded(Image.fromarray(image), "PNG", exif=exif.tobytes())
        want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
        assert np.array_equal(apply_orientation(image, orientation), want), orientation
        assert np.array_equal(decode(data), want), orientation


def test_arrays_bytes_and_paths_give_the_same_pixels(tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    for source in (image, path, str(path), path.read_bytes()):
        assert np.array_equal(decode(source), image)
    assert np.array_equal(decode(image[..., :1]), np.repeat(image[..., :1], 3, axis=2))


def test_bad_inputs_are_one_line_errors_naming_the_image(tmp_path):
    with pytest.raises(DataError, match=r"^cannot read image ds\[3\]: ") as e:
        decode(b"not an image", name="ds[3]")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=f"cannot read image {tmp_path / 'missing.png'}"):
        decode(tmp_path / "missing.png")
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise), "JPEG")
    truncated = data[: len(data) // 2]  # the header reads, the pixels end early
    with pytest.raises(DataError, match=r"^cannot decode image x\.jpg: "):
        decode(truncated, name="x.jpg")
    with pytest.raises(DataError, match=r"float pixels have no known range"):
        to_rgb_array(Image.fromarray(np.zeros((4, 4), np.float32)), "depth.tif")
    with pytest.raises(DataError, match=r"is not an image"):
        decode(np.zeros((4, 4, 3), np.complex64))
