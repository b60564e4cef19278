"""Streaming input: the image-folder source and its errors, and the grain pipeline (batches a pure
function of (seed, step), per-process rows, eval coverage, workers, device arrays)."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from jax.sharding import PartitionSpec

from tests.helpers import encode_image, smooth_image
from train.data import image_check, image_folder, image_ops, sources, streaming
from train.steps import make_mesh

REPO = Path(__file__).resolve().parents[1]


def _write_tree(root: Path, counts: dict[str, int], size=(24, 20)) -> None:
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = smooth_image(*size, seed=100 * c + i)
            (root / name / f"{i:03d}.jpg").write_bytes(encode_image(arr, quality=90))


def _listing(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*"))


def test_image_folder_sorts_classes_and_files(tmp_path):
    _write_tree(tmp_path, {"zebra": 2, "ant": 3, "moth": 1})
    (tmp_path / "README.txt").write_text("files at the root are not classes")
    folder = image_folder.ImageFolder(tmp_path)
    assert folder.class_names == ("ant", "moth", "zebra") and len(folder) == 6
    assert folder.labels.tolist() == [0, 0, 0, 1, 2, 2]
    assert folder.paths[:3] == ("ant/000.jpg", "ant/001.jpg", "ant/002.jpg")
    item = folder[5]
    assert item["label"] == 2 and item["path"] == str(tmp_path / "zebra" / "001.jpg")
    assert image_ops.decode(item["image"]).shape == (24, 20, 3)
    assert image_check.check_folders([(folder, "train_transform", "none")]) == ([folder], None)


def _error(fn, *args) -> str:
    with pytest.raises(image_folder.DataError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg, "one line"
    return msg


def test_image_folder_errors_name_the_path_and_write_nothing(tmp_path):
    assert str(tmp_path / "nope") in _error(image_folder.ImageFolder, tmp_path / "nope")
    (tmp_path / "empty_root").mkdir()
    assert "no images found under" in _error(image_folder.ImageFolder, tmp_path / "empty_root")
    _write_tree(tmp_path / "a", {"cat": 2, "dog": 1})
    (tmp_path / "a" / "emu").mkdir()
    msg = _error(image_folder.ImageFolder, tmp_path / "a")
    assert f"class folder {tmp_path / 'a' / 'emu'} holds no images" in msg
    (tmp_path / "a" / "emu").rmdir()
    (tmp_path / "a" / "dog" / "notes.txt").write_text("x")
    assert str(tmp_path / "a" / "dog" / "notes.txt") in _error(image_folder.ImageFolder, tmp_path / "a")
    (tmp_path / "a" / "dog" / "notes.txt").unlink()
    (tmp_path / "a" / "dog" / "bad.jpg").write_bytes(b"this is no jpeg")
    _write_tree(tmp_path / "b", {"cat": 1, "eel": 1})
    before = _listing(tmp_path)
    folder = image_folder.ImageFolder(tmp_path / "a")  # listed by name: fine until read
    msg = _error(image_check.check_folders, [(folder, "train_transform", "none")])

    assert "1 of 4 files" in msg and str(tmp_path / "a" / "dog" / "bad.jpg") in msg
    t = image_ops.Transform("resize", 8)
    item = folder[folder.paths.index("dog/bad.jpg")]
    assert str(tmp_path / "a" / "dog" / "bad.jpg") in _error(t, item["image"], None, item["path"])
    msg = _error(image_folder.check_same_classes, folder, image_folder.ImageFolder(tmp_path / "b"))
    assert "only in train: ['dog']" in msg and "only in test: ['eel']" in msg and str(tmp_path / "b") in msg
    msg = _error(image_folder.check_num_classes, folder.class_names, 10, folder.root)
    assert "has 2 classes but num_classes=10" in msg and "--config.num_classes=2" in msg
    assert _listing(tmp_path) == before, "checks must not write"


def _indexed_source(n: int, size: int = 6) -> list[dict]:
    """In-memory records whose label is their index, so batches show which examples they hold."""
    rng = np.random.default_rng(0)
    return [{"image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "label": i} for i in range(n)]


def _pipeline(train, test=None, **kw) -> streaming.StreamingPipeline:
    args = dict(
        mesh=make_mesh(),
        batch_size=16,
        eval_batch_size=8,
        seed=0,
        train_transform="pad_crop_flip",
        eval_transform="none",
        num_classes=100,
    )
    return streaming.StreamingPipeline(train, train if test is None else test, **(args | kw))


def _take(it, n: int) -> list[dict[str, np.ndarray]]:
    return [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(n)]


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_batches_depend_only_on_seed_and_step():
    src = _indexed_source(40)  # 2 steps of 16 per epoch, 8 examples dropped per epoch
    p = _pipeline(src)
    assert p.steps_per_epoch == 2 and p.image_shape == (6, 6, 3) and p.num_classes == 100
    ref = _take(iter(p.local_train_batches(0)), 6)
    assert ref[0]["image"].dtype == np.uint8 and ref[0]["image"].shape == (16, 6, 6, 3)
    assert ref[0]["label"].dtype == np.int32
    for e in range(3):
        epoch = np.concatenate([b["label"] for b in ref[2 * e : 2 * e + 2]])
        assert len(set(epoch.tolist())) == 32, f"epoch {e} repeats an example"
    assert not np.array_equal(ref[0]["label"], ref[2]["label"]), "each epoch has its own order"
    for k in (1, 3, 4):  # within the first epoch, and later epochs
        _assert_same(_take(iter(p.local_train_batches(k)), 6 - k), ref[k:])
    _assert_same(_take(iter(_pipeline(src).local_train_batches(0)), 6), ref)
    other = _take(iter(_pipeline(src, seed=1).local_train_batches(0)), 2)
    assert not np.array_equal(other[0]["label"], ref[0]["label"])
    # The same example at two positions gets two different augmentations (rng from the position).
    pos = {int(lab): i for i, lab in enumerate(ref[0]["label"])}
    later = {int(lab): i for i, lab in enumerate(ref[2]["label"])}
    both = sorted(set(pos) & set(later))
    assert any(not np.array_equal(ref[0]["image"][pos[x]], ref[2]["image"][later[x]]) for x in both)


def test_process_rows_concatenate_to_the_single_process_batch():
    src = _indexed_source(40)
    one = _pipeline(src)
    parts = [_pipeline(src, process_index=i, process_count=2) for i in range(2)]
    assert parts[1].local_batch_size == 8
    train = [_take(iter(p.local_train_batches(1)), 3) for p in parts]
    evals = [list(p.local_eval_batches()) for p in parts]
    for k, batch in enumerate(_take(iter(one.local_train_batches(1)), 3)):
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([t[k][key] for t in train]), batch[key])
    for k, batch in enumerate(one.local_eval_batches()):
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([e[k][key] for e in evals]), batch[key])


def test_eval_covers_every_example_once_padded_with_mask_zero():
    train, test = _indexed_source(40), _indexed_source(21)
    batches = list(_pipeline(train, test).local_eval_batches())
    assert len(batches) == 3  # 21 examples in batches of 8
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert mask.dtype == np.float32 and mask.sum() == 21 and np.all(mask[21:] == 0)
    np.testing.assert_array_equal(labels[:21], np.arange(21))
    images = np.concatenate([b["image"] for b in batches])
    np.testing.assert_array_equal(images[:21], np.stack([r["image"] for r in test]))
    assert not images[21:].any()


def test_device_batches_are_sharded_and_close_stops_the_threads():
    src = _indexed_source(40)
    threads = threading.active_count()
    with _pipeline(src, eval_batch_size=16) as p:
        it = p.train_inputs(2)
        batch = next(it)
        assert batch["image"].shape == (16, 6, 6, 3) and batch["label"].dtype == np.int32
        sharding = batch["image"].sharding
        assert sharding.spec == PartitionSpec("data") and len(sharding.device_set) == 8
        host = iter(p.local_train_batches(2))
        np.testing.assert_array_equal(batch["image"], next(host)["image"])
        host.close()
        ev = list(p.eval_inputs())
        assert len(ev) == 3 and ev[0]["image"].shape == (1, 16, 6, 6, 3) and ev[0]["mask"].shape == (1, 16)
        assert ev[0]["label"].sharding.spec == PartitionSpec(None, "data")
        assert sum(float(e["mask"].sum()) for e in ev) == 40
    with pytest.raises(StopIteration):
        next(it)
    deadline = time.monotonic() + 5  # grain shuts its thread pools down without waiting
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads, [t.name for t in threading.enumerate()]


@pytest.mark.slow
def test_image_folder_with_two_workers_gives_the_in_process_batches(tmp_path):
    _write_tree(tmp_path / "train", {"a": 12, "b": 10})
    _write_tree(tmp_path / "test", {"a": 3, "b": 2}, size=(30, 26))
    train, test = image_folder.image_folder_sources(tmp_path / "train", tmp_path / "test")
    kw = dict(
        mesh=make_mesh(),
        batch_size=8,
        eval_batch_size=8,
        seed=3,
        train_transform="random_resized_crop",
        eval_transform="resize_shorter_center_crop",
        image_size=16,
        num_classes=None,
    )
    ref_pipe = streaming.StreamingPipeline(train, test, **kw)
    assert ref_pipe.class_names == ("a", "b") and ref_pipe.num_classes == 2
    ref = _take(iter(ref_pipe.local_train_batches(1)), 4)
    assert ref[0]["image"].shape == (8, 16, 16, 3)
    with streaming.StreamingPipeline(train, test, num_workers=2, **kw) as p:
        _assert_same(_take(p.train_inputs(1), 4), ref)
        got = [{k: np.asarray(v)[0] for k, v in b.items()} for b in p.eval_inputs()]
    _assert_same(got, list(ref_pipe.local_eval_batches()))


def test_tfds_data_source_under_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=40):
        train, test = sources.tfds_sources("cifar10", None)
        assert isinstance(train[0]["image"], bytes), "images must stay encoded for the workers"
        p = _pipeline(train, test, num_classes=10, eval_transform="none")
        assert p.image_shape == (32, 32, 3) and p.class_names is not None and len(p.class_names) == 10
        first = _take(iter(p.local_train_batches(0)), 3)
        _assert_same(_take(iter(p.local_train_batches(2)), 1), first[2:])
        mask = np.concatenate([b["mask"] for b in p.local_eval_batches()])
    assert mask.sum() == 40


@pytest.mark.slow
def test_interpreter_exit_with_open_workers_does_not_hang(tmp_path):
    _write_tree(tmp_path / "d", {"a": 4, "b": 4})
    code = f"""
from train.data import streaming
from train.steps import make_mesh
from train.data.image_folder import ImageFolder
src = ImageFolder({str(tmp_path / "d")!r})
p = streaming.StreamingPipeline(src, src, mesh=make_mesh(), batch_size=8, eval_batch_size=8, seed=0,
    image_size=8, num_workers=1)
it = p.train_inputs(0)
print(next(it)["image"].shape)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(8, 8, 8, 3)" in out.stdout
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr[-2000:]


def test_releasing_shared_memory_never_waits_long_on_grains_unlink_thread(monkeypatch):
    # At interpreter exit grain's unlink pool may take the task and never run it: bench/throughput.py
    # hung there once. A pool whose only thread stays busy for 3 s stands in for it.
    from multiprocessing.pool import ThreadPool

    from grain._src.python.ipc import shared_memory_array

    from train.data import grain_processes

    pool, busy = ThreadPool(1), threading.Event()
    pool.apply_async(busy.wait)
    threading.Timer(3.0, busy.set).start()
    monkeypatch.setattr(shared_memory_array.SharedMemoryArray, "_del_thread_pool", pool, raising=False)
    monkeypatch.setattr(grain_processes, "UNLINK_WAIT_S", 0.5)
    t0 = time.monotonic()
    grain_processes.release_shared_memory()
    assert time.monotonic() - t0 < 2.0
    busy.set()
    pool.close()
    pool.join()
