"""Input pipeline: (seed, step)-determined batches, augmentation, eval padding, tfds loading and errors."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.preprocess import normalize
from train.data import memory, tfds_data
from train.steps import make_mesh


def test_batches_cover_each_epoch_once_and_depend_only_on_step():
    key = jax.random.PRNGKey(3)
    n, b = 50, 8  # 6 batches per epoch, 2 examples dropped
    epoch0 = np.concatenate([np.asarray(memory.batch_indices(key, s, n, b)) for s in range(6)])
    assert len(set(epoch0.tolist())) == 48 and epoch0.min() >= 0 and epoch0.max() < n
    epoch1 = np.concatenate([np.asarray(memory.batch_indices(key, s, n, b)) for s in range(6, 12)])
    assert len(set(epoch1.tolist())) == 48
    assert not np.array_equal(epoch0, epoch1), "each epoch must have its own order"
    jitted = jax.jit(memory.batch_indices, static_argnums=(2, 3))
    for s in (0, 5, 7, 100):
        np.testing.assert_array_equal(jitted(key, jnp.int32(s), n, b), memory.batch_indices(key, s, n, b))
    assert not np.array_equal(
        memory.batch_indices(jax.random.PRNGKey(4), 0, n, b),
        memory.batch_indices(key, 0, n, b),
    )


def test_augment_is_a_window_of_the_zero_padded_image_maybe_mirrored():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (16, 8, 8, 3), dtype=np.uint8)  # no zeros, so padding is visible
    out = np.asarray(memory.augment(jnp.asarray(images), jax.random.PRNGKey(1), pad=2, flip=True))
    assert out.dtype == np.uint8 and out.shape == images.shape
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    shifted = flipped = 0
    for i in range(len(images)):
        windows = [padded[i, y : y + 8, x : x + 8] for y in range(5) for x in range(5)]
        plain = [w for w in windows if np.array_equal(w, out[i])]
        mirrored = [w for w in windows if np.array_equal(w[:, ::-1], out[i])]
        assert plain or mirrored, f"image {i} is not a crop of its padded source"
        shifted += not np.array_equal(out[i], images[i]) and not np.array_equal(out[i], images[i][:, ::-1])
        flipped += bool(mirrored) and not plain
    assert shifted > 0 and flipped > 0, "16 draws should include shifted and flipped crops"
    same = memory.augment(jnp.asarray(images), jax.random.PRNGKey(1), pad=0, flip=False)
    np.testing.assert_array_equal(same, images)


def test_normalize_matches_numpy():
    img = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.247, 0.2435, 0.2616])
    got = normalize(jnp.asarray(img), jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32))
    np.testing.assert_allclose(got, (img / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


def test_eval_split_is_padded_and_counts_every_example_once():
    mesh = make_mesh()
    images = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
    labels = np.arange(10, dtype=np.int32)
    split = memory.put_eval(images, labels, batch_size=8, mesh=mesh)
    assert split.images.shape == (2, 8, 2, 2, 3) and split.num_examples == 10
    mask = np.asarray(split.mask).reshape(-1)
    assert mask.sum() == 10 and np.all(mask[:10] == 1) and np.all(mask[10:] == 0)
    np.testing.assert_array_equal(np.asarray(split.labels).reshape(-1)[:10], labels)
    np.testing.assert_array_equal(np.asarray(split.images).reshape(-1, 2, 2, 3)[:10], images)


def test_per_pixel_spec_is_the_mean_image():
    imgs = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    spec = memory.preprocess_spec("per_pixel", (0.5,) * 3, (0.25,) * 3, imgs)
    assert spec["kind"] == "mean_std" and np.asarray(spec["mean"]).shape == (4, 4, 3)
    np.testing.assert_allclose(spec["mean"], imgs.mean(0) / 255.0, atol=1e-6)
    assert memory.preprocess_spec("mean_std", (0.1, 0.2, 0.3), (1, 1, 1))["mean"] == [0.1, 0.2, 0.3]


def test_load_split_under_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        builder = tfds.builder("cifar10")
        images, labels = tfds_data.load_split(builder, "train")
    assert images.dtype == np.uint8 and images.shape == (12, 32, 32, 3)
    assert labels.dtype == np.int32 and labels.shape == (12,) and labels.min() >= 0 and labels.max() < 10


def test_missing_dataset_names_what_where_and_both_fixes(tmp_path, monkeypatch):
    # As on a machine without internet, whether or not this one has it.
    monkeypatch.setattr(tfds_data, "_reachable", lambda host, timeout_s=5.0: False)
    start = time.perf_counter()
    with pytest.raises(tfds_data.DatasetUnavailableError) as e:
        tfds_data.get_builder("cifar10", str(tmp_path))
    msg = str(e.value)
    assert time.perf_counter() - start < 30, "must fail fast, not try a download"
    assert "cifar10" in msg and str(tmp_path) in msg
    assert f"cifar-10-binary.tar.gz in {tmp_path}/downloads/manual" in msg
    assert "TFDS_DATA_DIR" in msg and "data_dir" in msg


def test_tfds_data_dir_env_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_JAX_OFFLINE", "1")  # never download, whatever the network
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env_dir"))
    assert tfds_data.resolve_data_dir(None) == str(tmp_path / "env_dir")
    assert tfds_data.resolve_data_dir(str(tmp_path / "cfg")) == str(tmp_path / "cfg")
    with pytest.raises(tfds_data.DatasetUnavailableError, match="env_dir"):
        tfds_data.get_builder("cifar10", None)


@pytest.fixture(scope="session")
def real_cifar10(offline_cifar10):
    return offline_cifar10("tfds")


@pytest.mark.slow
def test_real_cifar10_offline_copy(real_cifar10):
    builder = tfds_data.get_builder("cifar10", real_cifar10)
    train_images, train_labels = tfds_data.load_split(builder, "train")
    test_images, test_labels = tfds_data.load_split(builder, "test")
    assert train_images.shape == (50_000, 32, 32, 3) and test_images.shape == (10_000, 32, 32, 3)
    assert (
        np.bincount(train_labels).tolist() == [5000] * 10 and np.bincount(test_labels).tolist() == [1000] * 10
    )
    # Channel means of CIFAR-10 (0.4914, 0.4822, 0.4465), shifted a little by the JPEG round trip.
    np.testing.assert_allclose(train_images.mean((0, 1, 2)) / 255, [0.4914, 0.4822, 0.4465], atol=0.005)
    mesh = make_mesh()
    split = memory.put_eval(test_images, test_labels, 1024, mesh)
    assert float(split.mask.sum()) == 10_000 and split.images.shape[0] == 10


def test_reachability_probe_distinguishes_open_and_closed_ports(monkeypatch):
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        real = socket.create_connection
        monkeypatch.setattr(
            socket, "create_connection", lambda addr, timeout: real(("127.0.0.1", port), timeout)
        )
        assert tfds_data._reachable("example.invalid")
    monkeypatch.undo()
    assert not tfds_data._reachable("host.invalid", timeout_s=2)  # .invalid never resolves (RFC 6761)
