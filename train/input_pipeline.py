"""Input pipeline for datasets that fit in device memory (CIFAR-10/100 and the like).

The whole split is read once through tensorflow-datasets as uint8 numpy arrays and put on the devices.
Each training batch is then a pure function of (seed, step): epoch e visits the examples in the order
`permutation(fold_in(key, e))` and step s takes slice `s % steps_per_epoch` of it, so a run resumed at
any step sees exactly the batches an uninterrupted run would. Cropping, flipping and normalisation
happen inside the jitted train step, so the host does no work per step.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# The archives the tfds builders fetch; when one sits in <data_dir>/downloads/manual/ tfds uses it
# instead of downloading.
MANUAL_ARCHIVES = {"cifar10": "cifar-10-binary.tar.gz", "cifar100": "cifar-100-binary.tar.gz"}
# Where those archives come from. tfds retries an unreachable host for minutes, so the host is probed
# first and an offline machine gets the message at once.
DOWNLOAD_HOSTS = {"cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu"}


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither prepared nor preparable offline; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class InMemorySplit:
    """One split on the devices.

    Attributes:
      images: uint8 [N, H, W, C] (train) or [num_batches, batch, H, W, C] (eval, padded).
      labels: int32 [N] or [num_batches, batch].
      mask: eval only: 1.0 for real examples, 0.0 for padding, shaped like labels.
      num_examples: examples in the split before any padding.
    """

    images: jax.Array
    labels: jax.Array
    mask: jax.Array | None
    num_examples: int


def _tfds():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    # TensorFlow only decodes records here; it must not grab GPU memory JAX needs.
    tf.config.set_visible_devices([], "GPU")
    return tfds


def resolve_data_dir(data_dir: str | None) -> str:
    """Where tfds reads: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    if data_dir:
        return os.path.abspath(os.path.expanduser(data_dir))
    if os.environ.get("TFDS_DATA_DIR"):
        return os.path.abspath(os.path.expanduser(os.environ["TFDS_DATA_DIR"]))
    return os.path.expanduser(os.path.join("~", "tensorflow_datasets"))


def get_builder(name: str, data_dir: str | None) -> Any:
    """A prepared tfds builder for `name`: prepared already, from a manually placed archive, or downloaded.

    Args:
      name: tfds dataset name, e.g. 'cifar10'.
      data_dir: tfds data dir; None means $TFDS_DATA_DIR or ~/tensorflow_datasets.

    Raises:
      DatasetUnavailableError: the dataset is not prepared and its download host is unreachable.
        Checked before tfds would try the network, so nothing hangs on a machine without internet.
    """
    tfds = _tfds()
    root = resolve_data_dir(data_dir)
    try:
        builder = tfds.builder(name, data_dir=root)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetUnavailableError(f"unknown tfds dataset {name!r} (looked in {root}): {e}") from None
    if builder.is_prepared():
        return builder
    manual_dir = os.path.join(root, "downloads", "manual")
    archive = MANUAL_ARCHIVES.get(name)
    if archive and os.path.exists(os.path.join(manual_dir, archive)):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        return builder
    host = DOWNLOAD_HOSTS.get(name)
    if host is None or _reachable(host):
        try:
            builder.download_and_prepare()
            return builder
        except Exception as e:  # tfds raises many kinds (network, checksums, manual download required)
            reason = f"its download failed: {type(e).__name__}: {str(e)[:300]}"
    else:
        reason = f"{host} is unreachable, so it cannot be downloaded"
    what = f"put {archive} in {manual_dir}/" if archive else "prepare it with tfds on a machine with internet"
    raise DatasetUnavailableError(
        f"dataset {name!r} is not prepared: tfds looked for {builder.data_dir} and did not find it "
        f"(data_dir {root}, from config.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets), "
        f"and {reason}. Fix either way: (1) {what} and rerun, or (2) point --config.data_dir (or "
        f"TFDS_DATA_DIR) at a directory holding a prepared copy ({name}/<version>/ inside it)."
    )


def _reachable(host: str, timeout_s: float = 5.0) -> bool:
    """Whether an HTTPS connection to `host` opens within `timeout_s` (DNS included)."""
    import socket

    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def load_split(builder: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a whole split as (uint8 images [N, H, W, C], int32 labels [N]) on the host."""
    tfds = _tfds()
    known = builder.info.splits
    if known and split.isidentifier() and split not in known:  # plain names only; "train[:90%]" is tfds's
        raise DatasetUnavailableError(
            f"split {split!r} not in {builder.info.name}; available: {', '.join(known)}"
        )
    chunks = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=10_000, shuffle_files=False)))
    images = np.concatenate([c["image"] for c in chunks]).astype(np.uint8, copy=False)
    return images, np.concatenate([c["label"] for c in chunks]).astype(np.int32)


def to_global(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Turns this process's data into a global array with `sharding` (the multi-host seam).

    For a replicated sharding `local` is the whole array (every process holds the same); for a
    sharding over 'data' it is this process's rows of the global batch.
    """
    return jax.make_array_from_process_local_data(sharding, local)


def put_train(images: np.ndarray, labels: np.ndarray, mesh: Mesh) -> InMemorySplit:
    """Puts a training split on every device (replicated: each step gathers its batch locally)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return InMemorySplit(to_global(images, replicated), to_global(labels, replicated), None, len(labels))


def put_eval(images: np.ndarray, labels: np.ndarray, batch_size: int, mesh: Mesh) -> InMemorySplit:
    """Pads an eval split to whole batches (mask 0 on the padding) and puts it on the devices.

    Every example is counted exactly once: the last batch is padded, never dropped.
    """
    n = len(labels)
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])

    def shape(a):
        return a.reshape(num_batches, batch_size, *a.shape[1:])

    replicated = NamedSharding(mesh, PartitionSpec())
    return InMemorySplit(
        to_global(shape(images), replicated),
        to_global(shape(labels), replicated),
        to_global(shape(mask), replicated),
        n,
    )


def batch_indices(key: jax.Array, step: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """Indices of training batch `step`: slice `step % steps_per_epoch` of its epoch's order.

    Args:
      key: the data-order key (from the seed).
      step: global step (traced or concrete).
      num_examples: size of the training split; the last partial batch of each epoch is dropped.
      batch_size: global batch size.
    """
    steps_per_epoch = num_examples // batch_size
    epoch, k = jnp.divmod(step, steps_per_epoch)
    order = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return jax.lax.dynamic_slice_in_dim(order, k * batch_size, batch_size)


def train_batch(
    data: InMemorySplit, key: jax.Array, step: jax.Array, batch_size: int
) -> dict[str, jax.Array]:
    """Training batch `step` as {'image': uint8 [B, H, W, C], 'label': int32 [B]}."""
    idx = batch_indices(key, step, data.num_examples, batch_size)
    return {"image": data.images[idx], "label": data.labels[idx]}


def augment(images: jax.Array, rng: jax.Array, pad: int, flip: bool) -> jax.Array:
    """The paper's augmentation on uint8 NHWC images: zero-pad by `pad`, random crop back, random h-flip."""
    b, h, w, _ = images.shape
    crop_rng, flip_rng = jax.random.split(rng)
    if pad > 0:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(crop_rng, (b, 2), 0, 2 * pad + 1)

        def crop(img, off):
            return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

        images = jax.vmap(crop)(padded, offsets)
    if flip:
        do_flip = jax.random.bernoulli(flip_rng, 0.5, (b, 1, 1, 1))
        images = jnp.where(do_flip, images[:, :, ::-1, :], images)
    return images


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """(images/255 - mean)/std in float32; mean and std broadcast ([C] or [H, W, C])."""
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def preprocess_spec(normalization: str, mean, std, train_images: np.ndarray | None = None) -> dict:
    """The checkpoint's preprocess spec (see the checkpoint contract): what the model expects.

    Args:
      normalization: 'mean_std' (per-channel `mean`) or 'per_pixel' (the training set's mean image,
        [H, W, C], computed from `train_images`), both divided by the per-channel `std`.
      mean, std: per-channel RGB values in [0, 1] units.
      train_images: uint8 training images; needed for 'per_pixel'.
    """
    if normalization == "per_pixel":
        mean_image = train_images.astype(np.float64).mean(axis=0) / 255.0
        mean = np.round(mean_image, 6).tolist()
    else:
        mean = [float(m) for m in mean]
    return {"kind": "mean_std", "mean": mean, "std": [float(s) for s in std]}
