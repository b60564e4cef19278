"""Faults in the input data of pipeline='grain': each case makes the fault happen and checks what a user sees.

Through the CLI (`python -m train` with configs/smoke.py on a 4-class folder of 64 + 20 PNGs, or on a
fake tfds dataset): the exit status, exactly one `error:` line on stderr (no traceback), and nothing
written: every file of the workdir (which holds an unrelated file) and of the data hashes the same
before and after. Runs that fail mid-run (tests/test_data_faults_runs.py) check instead that the
checkpoints written before the fault are bitwise intact.

Cases: what is done -> exit status: the stderr line (D the data folder, W the workdir, ... elided).

- a text file named .png -> 1: error: 1 of 84 files (1 under D/train) are not readable images:
  D/train/cat/004.png (not an image Pillow can identify); remove or replace them, or pass
  --config.skip_bad_images=True to train without them
- 0-byte files in train and test -> 1: error: 2 of 84 files (1 under D/train, 1 under D/test) are not
  readable images: D/train/dog/005.png (empty file), D/test/dog/001.png (empty file); ...
- a scrambled JPEG (bytes after the first 40 shuffled) -> 1: error: ... D/train/dog/x.jpg (not an image
  PIL can identify); ...
- a truncated JPEG (cut in half: no end marker) -> 1: error: ... D/train/dog/x.jpg (image file is
  truncated (N bytes not processed)); ...
- a self-looping symlink in a class folder -> 1: error: ... D/train/cat/loop.png (Too many levels of
  symbolic links); ...
- 12 bad files (Python) -> the message names 10 of them and says "and 2 more"
- a self-looping symlink among the class folders (Python) -> DataError: D/train/zebra cannot be read (Too
  many levels of symbolic links): remove it or fix the link
- an image of another size with image_size=0 and pad_crop_flip -> 1: error: 1 of 64 images under D/train
  are not 32x32 pixels like the other 63 (e.g. D/train/frog/010.png is 30x28), but
  train_transform='pad_crop_flip' keeps each image's size: pass --config.image_size=N with a sized
  --config.train_transform (random_resized_crop, resize_shorter_center_crop, resize)
- skip_bad_images=True (Python) -> one line: warning: 2 of 84 files (2 under D/train) are not readable
  images; training without them (skip_bad_images): ...; batches equal those of the folder without them
- grain over tfds, data_dir empty or missing -> 1 within 30 s, nothing created: error: dataset 'cifar10'
  is not prepared: tfds looked for DIR/cifar10/3.0.2 and did not find it (...). pipeline='grain' reads
  an ArrayRecord copy and downloads nothing: prepare one (tfds build cifar10
  --file_format=array_record --data_dir=DIR) or point --config.data_dir at a directory holding one
- a truncated ArrayRecord file -> 1: error: cannot read record 0 of FILE (RuntimeError: Corrupted
  Riegeli/records file: ...): the ArrayRecord file is damaged; rebuild the dataset: delete DIR and
  prepare it again (tfds build fake_cifar --file_format=array_record --data_dir=ROOT)
- an ArrayRecord file damaged inside (Python) -> reading its records raises DataError with that line
- runs file: skip_bad_images=True, num_workers=2, a whole run -> 0: warning: 1 of 84 files ...; and no
  "leaked shared_memory" on stderr
- runs file: training files deleted mid-run -> 1: error: cannot read image PATH: No such file or
  directory; restore or remove the file. The N checkpoint(s) in W/checkpoints are kept: rerun the same
  command to resume from step S
- runs file: training files truncated mid-run, num_workers=2 -> 1: error: cannot decode image PATH:
  image file is truncated; remove or replace the file. The N checkpoint(s) ...
- runs file: kill -9 of a run with num_workers=2 -> -9: no child process of the run is alive 10 s later
"""

import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, write_image_folder
from train.data import DataError, image_check, image_folder, sources, stream_order
from train.data.create import create_streaming
from train.data.image_ops import Transform
from train.steps import make_mesh


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root (folders too), with the sha256 of each file's bytes."""
    out = {}
    for p in sorted(root.rglob("*")) if root.exists() else []:
        key = str(p.relative_to(root))
        out[key] = (
            "link" if p.is_symlink() else "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        )
    return out


def cli(workdir: Path, *flags: str, timeout: int = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "train", "--config", str(REPO / "configs" / "smoke.py"),
               f"--workdir={workdir}", "--config.pipeline=grain", *flags]  # fmt: skip
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def folder_flags(root: Path) -> tuple[str, ...]:
    return ("--config.data_source=folder", f"--config.train_dir={root / 'train'}",
            f"--config.eval_dir={root / 'test'}", "--config.num_classes=4")  # fmt: skip


def the_error_line(out: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a run that exited 1 without a traceback."""
    assert out.returncode == 1, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    return errors[0]


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    write_image_folder(root)
    return root


@pytest.fixture
def folder(clean_folder, tmp_path) -> Path:
    """A fresh copy of the clean folder for one case to damage."""
    return Path(shutil.copytree(clean_folder, tmp_path / "data", symlinks=True))


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A workdir holding an unrelated file: a failed run must leave it exactly as it was."""
    path = tmp_path / "run"
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    return path


def _jpeg(seed: int = 0, size: int = 32) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _scrambled(data: bytes) -> bytes:
    body = bytearray(data[40:])
    np.random.default_rng(0).shuffle(body)
    return data[:40] + bytes(body)


def _damage(root: Path, case: str) -> list[str]:
    """Applies `case` to the folder; returns what the error line must contain."""
    train = root / "train"
    if case == "text file named .png":
        (train / "cat" / "004.png").write_text("this is not an image")
        return [
            "1 of 84 files",
            f"{train}/cat/004.png (not an image Pillow can identify)",
            "skip_bad_images=True",
        ]
    if case == "0-byte files in train and test":
        (train / "dog" / "005.png").write_bytes(b"")
        (root / "test" / "dog" / "001.png").write_bytes(b"")
        return [
            "2 of 84 files",
            "1 under",
            f"{train}/dog/005.png (empty file)",
            "test/dog/001.png (empty file)",
        ]
    if case == "scrambled JPEG":
        (train / "dog" / "x.jpg").write_bytes(_scrambled(_jpeg()))
        return ["1 of 85 files", f"{train}/dog/x.jpg (not an image Pillow can identify)"]
    if case == "truncated JPEG":
        data = _jpeg(size=256)
        (train / "dog" / "x.jpg").write_bytes(data[: len(data) // 2])
        return ["1 of 85 files", f"{train}/dog/x.jpg (image file is truncated"]
    if case == "self-looping symlink":
        os.symlink("loop.png", train / "cat" / "loop.png")
        return ["1 of 85 files", f"{train}/cat/loop.png (Too many levels of symbolic links)"]
    assert case == "an image of another size"
    Image.fromarray(np.zeros((28, 30, 3), np.uint8)).save(train / "frog" / "010.png")
    return ["1 of 64 images under", "not 32x32 pixels like the other 63", f"{train}/frog/010.png is 30x28",
            "train_transform='pad_crop_flip'", "--config.image_size=N"]  # fmt: skip


# Two cases in the fast tier, every case in the full tier: each is a CLI run of its own (~3 s).
@pytest.mark.parametrize(
    "case",
    ["text file named .png", "0-byte files in train and test",
     *(pytest.param(c, marks=pytest.mark.slow)
       for c in ("scrambled JPEG", "truncated JPEG", "self-looping symlink", "an image of another size"))],
)  # fmt: skip
def test_a_bad_folder_is_one_error_line_and_writes_nothing(folder, workdir, case):
    expected = _damage(folder, case)
    data_before, work_before = snapshot(folder), snapshot(workdir)
    line = the_error_line(cli(workdir, *folder_flags(folder)))
    assert all(text in line for text in expected), line
    assert snapshot(workdir) == work_before and snapshot(folder) == data_before


def test_a_bad_file_list_names_ten_and_counts_the_rest(folder):
    for i in range(12):
        (folder / "train" / "ship" / f"bad{i:02d}.png").write_bytes(b"")
    train = image_folder.ImageFolder(folder / "train")
    with pytest.raises(DataError) as e:
        image_check.check_folders([(train, "train_transform", "pad_crop_flip")])
    message = str(e.value)
    assert "12 of 76 files" in message and message.count("(empty file)") == 10 and "and 2 more" in message
    assert "\n" not in message


def test_a_looping_symlink_among_the_class_folders_is_one_line(folder):
    os.symlink("zebra", folder / "train" / "zebra")
    with pytest.raises(
        DataError, match=rf"^{folder}/train/zebra cannot be read \(Too many levels of symbolic"
    ):
        image_folder.ImageFolder(folder / "train")


def _config(root: Path, **overrides):
    from configs import smoke

    c = smoke.get_config()
    c.pipeline, c.data_source, c.num_classes = "grain", "folder", 4
    c.train_dir, c.eval_dir = str(root / "train"), str(root / "test")
    for k, v in overrides.items():
        c[k] = v
    return c


def _batches(pipeline, n: int = 6) -> list[dict[str, np.ndarray]]:
    it = iter(pipeline.local_train_batches(0))
    try:
        return [next(it) for _ in range(n)]
    finally:
        pipeline.close()


def test_skipped_bad_files_are_one_warning_and_left_out_of_the_batches(folder, tmp_path, capsys):
    (folder / "train" / "cat" / "004.png").write_text("not an image")
    (folder / "train" / "dog" / "005.png").write_bytes(b"")
    pipeline = create_streaming(_config(folder, skip_bad_images=True), make_mesh())
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: 2 of 84 files") and "training without them" in err[0]
    assert pipeline.num_train_examples == 62
    # Batches are a pure function of (seed, step) over the remaining files: the same as the folder's
    # without them.
    without = Path(shutil.copytree(folder, tmp_path / "without"))
    (without / "train" / "cat" / "004.png").unlink()
    (without / "train" / "dog" / "005.png").unlink()
    expected = _batches(create_streaming(_config(without), make_mesh()))
    for a, b in zip(_batches(pipeline), expected, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


@pytest.mark.parametrize("missing", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_grain_over_tfds_without_a_prepared_copy_fails_at_once_creating_nothing(workdir, tmp_path, missing):
    data_dir = tmp_path / "tfds"
    if not missing:
        data_dir.mkdir()
    work_before = snapshot(workdir)
    start = time.monotonic()
    out = cli(workdir, "--config.data_source=tfds", f"--config.data_dir={data_dir}", timeout=60)
    elapsed = time.monotonic() - start
    line = the_error_line(out)
    assert "dataset 'cifar10' is not prepared" in line and "--file_format=array_record" in line, line
    assert elapsed < 30, f"took {elapsed:.0f} s"
    assert data_dir.exists() != missing and snapshot(data_dir) == {}
    assert snapshot(workdir) == work_before


@pytest.fixture(scope="module")
def array_record_dir(tmp_path_factory) -> Path:
    """A tfds data_dir holding `fake_cifar` as ArrayRecord files (64 train, 20 test images)."""
    from train.data.testing import write_fake_dataset

    path = tmp_path_factory.mktemp("fake_array_record")
    write_fake_dataset(str(path), num_train=64, num_test=20, file_format="array_record")
    return path


def _damaged_copy(array_record_dir: Path, tmp_path: Path, damage) -> tuple[Path, Path]:
    """A copy of the dataset whose train file went through damage(bytes) -> bytes: (data_dir, file)."""
    data_dir = Path(shutil.copytree(array_record_dir, tmp_path / "tfds"))
    (file,) = (data_dir / "fake_cifar" / "1.0.0").glob("fake_cifar-train.array_record-*")
    file.write_bytes(damage(file.read_bytes()))
    return data_dir, file


def test_a_truncated_array_record_file_is_one_line_naming_it(array_record_dir, workdir, tmp_path):
    data_dir, file = _damaged_copy(array_record_dir, tmp_path, lambda b: b[: len(b) // 2])
    data_before, work_before = snapshot(data_dir), snapshot(workdir)
    out = cli(workdir, "--config.dataset=fake_cifar", f"--config.data_dir={data_dir}")
    line = the_error_line(out)
    assert f"cannot read record 0 of {file}" in line and "the ArrayRecord file is damaged" in line, line
    assert "tfds build fake_cifar --file_format=array_record" in line
    assert snapshot(workdir) == work_before and snapshot(data_dir) == data_before


def test_a_record_damaged_inside_its_file_names_the_file(array_record_dir, tmp_path):
    def zero_a_third_in(data: bytes) -> bytes:
        third = len(data) // 3
        return data[:third] + bytes(200) + data[third + 200 :]

    data_dir, file = _damaged_copy(array_record_dir, tmp_path, zero_a_third_in)
    train, _ = sources.tfds_sources("fake_cifar", str(data_dir))
    sources.check_record_files(train)  # the file's index is intact: found only when the record is read
    messages = []
    for i in range(len(train)):
        try:
            stream_order.read_example(train, "train", i, Transform("none"), None)
        except DataError as e:
            messages.append(str(e))
    assert messages, "some record must be unreadable"
    assert all(
        f"of {file} (RuntimeError: Corrupted Riegeli" in m and "rebuild the dataset" in m for m in messages
    )
