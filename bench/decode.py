"""Host decode throughput of the streaming input: 224-px random-resized crops from ImageNet-sized JPEGs.

Makes ~500 JPEGs of about 400x350 (ImageNet's typical size) from the offline CIFAR-10 JPEG tree
(upscaled, re-encoded at quality 90), then times, in one process on one core, each lever in turn:

  plain        full decode, resize the whole image so the window is 224 px, then cut the window
  draft        as plain, but the JPEG decoded at the smallest DCT scale that keeps the window >= 224
  crop-first   full decode, then resize only the window (PIL resize with box=)
  draft+crop   both: what train/image_ops.random_resized_crop does
  simplejpeg   (if importable) libjpeg-turbo via simplejpeg with DCT scaling, then crop-first in PIL

and the whole grain pipeline (train/data/streaming.py: read, shuffle, decode, crop, batch) with 1 worker
process and with 2. Prints a markdown table; img/s per worker process and host cores per 3,000 img/s.

    python bench/decode.py [--images 500] [--size 400 350] [--seconds 3] [--out /tmp/decode_bench]
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ARCHIVE = SHARED / "data" / "cifar10-jpeg.tar.xz"
GPU_IMG_S = 3000  # ResNet-50 training on one GPU, the rate the host must feed


def make_images(out: Path, n: int, size=(400, 350), quality: int = 90) -> Path:
    """Writes `n` JPEGs of `size` (w, h) to out/<class>/ from the CIFAR-10 tree; returns out.

    Already there (as many files): nothing is done.
    """
    if out.is_dir() and sum(1 for _ in out.rglob("*.jpg")) >= n:
        return out
    if not ARCHIVE.exists():
        raise SystemExit(f"needs the offline CIFAR-10 archive at {ARCHIVE} (../shared beside the repo)")
    every = max(1, 50_000 // n)  # spread over the classes (the archive is sorted by class)
    with tarfile.open(ARCHIVE, "r:xz") as tar:
        written = seen = 0
        for member in tar:
            if written >= n:
                break
            if not (member.isfile() and member.name.startswith("train/")):
                continue
            seen += 1
            if seen % every:
                continue
            cls = member.name.split("/")[1]
            img = Image.open(tar.extractfile(member)).convert("RGB").resize(size, Image.Resampling.BICUBIC)
            (out / cls).mkdir(parents=True, exist_ok=True)
            img.save(out / cls / f"{written:04d}.jpg", quality=quality)
            written += 1
    return out


# The levers. Each takes (encoded bytes, rng) and returns a uint8 [224, 224, 3] crop.


def _box(size, rng):
    from train.data import image_ops

    return image_ops.sample_crop_box(*size, rng)


def _resize_then_cut(img: Image.Image, box, scale_from) -> np.ndarray:
    """Resizes the whole image so that the window becomes 224 px, then cuts the window (no box= trick)."""
    left, top, w, h = (v / scale_from for v in box)
    sx, sy = 224 / w, 224 / h
    big = img.resize((max(224, round(img.width * sx)), max(224, round(img.height * sy))), Image.BILINEAR)
    x, y = round(left * sx), round(top * sy)
    return np.asarray(big.crop((x, y, x + 224, y + 224)))


def plain(data: bytes, rng) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return _resize_then_cut(img, _box(img.size, rng), 1)


def draft(data: bytes, rng) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    box = _box(img.size, rng)
    want = (math.ceil(img.width * 224 / box[2]), math.ceil(img.height * 224 / box[3]))
    full_w = img.width
    img.draft("RGB", want)
    return _resize_then_cut(img.convert("RGB"), box, full_w / img.width)


def crop_first(data: bytes, rng) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    left, top, w, h = _box(img.size, rng)
    return np.asarray(img.resize((224, 224), Image.BILINEAR, box=(left, top, left + w, top + h)))


def draft_crop(data: bytes, rng) -> np.ndarray:
    from train.data import image_ops

    return image_ops.random_resized_crop(image_ops.open_image(data), rng, 224, flip=False)


def simplejpeg_crop(data: bytes, rng) -> np.ndarray:
    import simplejpeg

    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    left, top, bw, bh = _box((w, h), rng)
    arr = simplejpeg.decode_jpeg(data, min_width=math.ceil(w * 224 / bw), min_height=math.ceil(h * 224 / bh))
    s = w / arr.shape[1]
    box = (left / s, top / s, (left + bw) / s, (top + bh) / s)
    return np.asarray(Image.fromarray(arr).resize((224, 224), Image.BILINEAR, box=box))


def time_lever(fn: Callable, files: list[bytes], seconds: float) -> float:
    """img/s of `fn` over `files` in this process, after one warm-up pass over 50 files."""
    from train.data import image_ops

    for i, data in enumerate(files[:50]):
        fn(data, image_ops.example_rng(0, i))
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i, data in enumerate(files):
            assert fn(data, image_ops.example_rng(0, done + i)).shape == (224, 224, 3)
        done += len(files)
    return done / (time.perf_counter() - start)


def time_pipeline(root: Path, workers: int, batches: int) -> float:
    """img/s of StreamingPipeline.local_train_batches (host side) with `workers` grain processes."""
    from train.data import streaming
    from train.data.image_folder import ImageFolder
    from train.steps import make_mesh

    src = ImageFolder(root)
    pipe = streaming.StreamingPipeline(
        src, src, mesh=make_mesh(), batch_size=64, eval_batch_size=64, seed=0, num_workers=workers,
        read_threads=1,
    )  # fmt: skip
    it = iter(pipe.local_train_batches(0))
    next(it)  # workers started and warm
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * 64 / (time.perf_counter() - start)
    it.close()
    return rate


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing window of each lever")
    parser.add_argument("--batches", type=int, default=24, help="batches of 64 timed per pipeline run")
    parser.add_argument("--size", type=int, nargs=2, default=(400, 350), metavar=("W", "H"))
    parser.add_argument("--out", default="/tmp/decode_bench", help="where the JPEGs are written")
    args = parser.parse_args(argv)
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    root = make_images(Path(args.out), args.images, tuple(args.size))
    files = [p.read_bytes() for p in sorted(root.rglob("*.jpg"))]
    sizes = {Image.open(io.BytesIO(f)).size for f in files}
    print(f"{len(files)} JPEGs {sorted(sizes)[:3]}, {sum(map(len, files)) / len(files) / 1e3:.0f} kB each")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, Pillow {Image.__version__}\n")
    levers = {"plain": plain, "draft": draft, "crop-first": crop_first, "draft+crop": draft_crop}
    try:
        import simplejpeg

        levers[f"simplejpeg {simplejpeg.__version__} (DCT scaling) + crop-first"] = simplejpeg_crop
    except ImportError:
        print("(simplejpeg not importable: lever skipped)")
    print("| lever | img/s per process | host cores for 3,000 img/s |\n|---|---|---|")
    for name, fn in levers.items():
        rate = time_lever(fn, files, args.seconds)
        print(f"| {name} | {rate:,.0f} | {GPU_IMG_S / rate:.1f} |", flush=True)
    for workers in (1, 2):
        rate = time_pipeline(root, workers, args.batches)
        print(
            f"| grain pipeline, {workers} worker process(es) (total) | {rate:,.0f} "
            f"({rate / workers:,.0f} per worker) | {GPU_IMG_S / (rate / workers):.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
