"""The check of an image folder's files before training starts: every header, read by a pool of threads.

What it finds, naming each file and why: files PIL cannot identify as an image (text, empty, a
scrambled header), files that cannot be opened (deleted, no permission, a symbolic link that loops), and
JPEG or PNG files that lack their end marker and then fail to decode (truncated copies; a file that
only lacks the marker but decodes passes). It also reads every image's size, so that transforms that
keep the stored size ('none', 'pad_crop_flip') can require one size. Pixel data damaged inside a
complete file passes (decoding every image would cost 2-3 ms per ImageNet JPEG instead of 0.06 ms);
it is found when training decodes it, and the run then stops with one line naming the file.

Cost (bench/folder_check.py on the 60,000-file CIFAR-10 JPEG folder, 2-core development machine shared
with other jobs, load 8-11, warm page cache): 54 us of CPU per file read serially; 8-16 threads checked
the folder in 5.0-5.7 s (10,500-12,000 files/s), serial reading took 9.9 s, and a pool of 2 spawned
processes 24 s (each must start an interpreter and import JAX through train.data before its first file;
and forking a process that runs JAX's threads risks deadlocks). PIL's header parsing holds the GIL, so
threads gain from overlapping file reads (a network disk's latency most), not from more cores.

The check always runs, at every start and resume, whatever the folder's size: at ImageNet scale (1.28M
training files) that is about 70 CPU-seconds, about 110 s of wall time at the rate measured here. That
buys a start that writes nothing on bad data, every bad file listed at once, and skip_bad_images.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from collections.abc import Sequence

from PIL import Image

from train.data.image_folder import ImageFolder
from train.data.image_ops import SIZED_TRANSFORMS, DataError, describe_error

# Threads reading headers: the parsing is GIL-bound, the file reads are not (more threads overlap more
# of a network disk's latency).
THREADS = min(32, 8 * (os.cpu_count() or 1))
_CHUNK = 256  # paths per task: one future per file would cost as much as a header
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82"}


def inspect(path: str) -> tuple[int, int] | str:
    """(width, height) of the image at `path`, or why it cannot be used (a short phrase)."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return "empty file"
            with Image.open(f) as img:
                size, marker = img.size, _END_MARKERS.get(img.format)
            if marker and not _ends_with(f, marker):
                f.seek(0)
                with Image.open(f) as img:
                    img.load()  # decides: decoders accept some files with data after the marker
            return size
    except Exception as e:  # any failure is the finding (PIL raises many types)
        return describe_error(e)


def _ends_with(f, marker: bytes) -> bool:
    f.seek(0, os.SEEK_END)
    if f.tell() < len(marker):
        return False
    f.seek(-len(marker), os.SEEK_END)
    return f.read() == marker


def inspect_all(paths: Sequence[str], threads: int = THREADS) -> list[tuple[int, int] | str]:
    """inspect() of every path, in order, on `threads` threads."""
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="image-check") as pool:
        return [r for chunk in pool.map(lambda c: [inspect(p) for p in c], chunks) for r in chunk]


def _listing(items: Sequence[str], max_listed: int) -> str:
    more = f" and {len(items) - max_listed} more" if len(items) > max_listed else ""
    return ", ".join(items[:max_listed]) + more


def check_folders(
    folders: Sequence[tuple[ImageFolder, str, str]], *, skip_bad: bool = False, max_listed: int = 10
) -> tuple[list[ImageFolder], str | None]:
    """Checks every file of each folder (see the module docstring) before anything is written.

    Args:
      folders: (folder, the config field naming its transform, the transform) for each split; a
        transform that keeps the stored size needs every image of its folder to have one size.
      skip_bad: leave the bad files out (the returned warning counts them) instead of raising.
      max_listed: how many files a message names.

    Returns:
      (the folders, without their bad files when skip_bad; one warning line counting them, or None).

    Raises:
      DataError: naming the bad files of all folders (the first `max_listed`, each with its reason, and
        their count), unless skip_bad; or naming an image whose size differs from most, with the fix.
    """
    found = []  # per folder: (folder, field, transform, the sizes of its good files, its bad files)
    for folder, field, transform in folders:
        results = inspect_all([os.path.join(folder.root, p) for p in folder.paths])
        bad = [(p, r) for p, r in zip(folder.paths, results, strict=True) if isinstance(r, str)]
        found.append((folder, field, transform, [r for r in results if not isinstance(r, str)], bad))
    named = [f"{os.path.join(f.root, p)} ({why})" for f, _, _, _, bad in found for p, why in bad]
    warning = None
    if named:
        where = ", ".join(f"{len(bad)} under {f.root}" for f, _, _, _, bad in found if bad)
        what = f"{len(named)} of {sum(len(f) for f, *_ in found)} files ({where}) are not readable images"
        if not skip_bad:
            raise DataError(
                f"{what}: {_listing(named, max_listed)}; remove or replace them, or pass "
                "--config.skip_bad_images=True to train without them"
            )
        warning = f"warning: {what}; training without them (skip_bad_images): {_listing(named, max_listed)}"
    checked = []
    for folder, field, transform, sizes, bad in found:
        folder = folder.without({p for p, _ in bad}) if bad else folder
        if transform not in SIZED_TRANSFORMS:
            _check_one_size(folder, sizes, field, transform)
        checked.append(folder)
    return checked, warning


def _check_one_size(folder: ImageFolder, sizes: list, field: str, transform: str) -> None:
    counts = collections.Counter(sizes)
    if len(counts) < 2:
        return
    (w, h), common = counts.most_common(1)[0]
    odd = next(i for i, s in enumerate(sizes) if s != (w, h))
    ow, oh = sizes[odd]
    raise DataError(
        f"{len(sizes) - common} of {len(sizes)} images under {folder.root} are not {w}x{h} pixels like "
        f"the other {common} (e.g. {os.path.join(folder.root, folder.paths[odd])} is {ow}x{oh}), but "
        f"{field}={transform!r} keeps each image's size: pass --config.image_size=N with a sized "
        f"--config.{field} ({', '.join(SIZED_TRANSFORMS)})"
    )
