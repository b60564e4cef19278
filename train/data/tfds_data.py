"""Reading tensorflow-datasets splits into host memory, and failing fast and clearly when that cannot work.

Offline, tfds would retry a download for minutes: an unprepared dataset whose download host is
unreachable is an error at once, saying how to provide the data.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

# The archives the tfds builders fetch; when one sits in <data_dir>/downloads/manual/ tfds uses it
# instead of downloading.
MANUAL_ARCHIVES = {"cifar10": "cifar-10-binary.tar.gz", "cifar100": "cifar-100-binary.tar.gz"}
# Where those archives come from. tfds retries an unreachable host for minutes, so the host is probed
# first and an offline machine gets the message at once.
DOWNLOAD_HOSTS = {"cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu"}


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither prepared nor preparable offline; the message says how to fix it."""


def _tfds():
    # Imported on first use: tfds takes seconds to import and only the tfds paths need it.
    import tensorflow_datasets as tfds

    return tfds


def _tensorflow_off_the_gpus() -> None:
    """Imports TensorFlow, which reading or preparing TFRecords needs, and keeps it off the GPUs: it only
    decodes records here, and JAX needs the memory. Called just before the first TensorFlow use, so runs
    that never read a TFRecord (image folders, ArrayRecord) never import TensorFlow."""
    import tensorflow as tf  # the optional TFRecord path: tensorflow-datasets reads those through it

    tf.config.set_visible_devices([], "GPU")


def resolve_data_dir(data_dir: str | None) -> str:
    """Where tfds reads: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    if data_dir:
        return os.path.abspath(os.path.expanduser(data_dir))
    if os.environ.get("TFDS_DATA_DIR"):
        return os.path.abspath(os.path.expanduser(os.environ["TFDS_DATA_DIR"]))
    return os.path.expanduser(os.path.join("~", "tensorflow_datasets"))


def open_builder(name: str, root: str) -> Any:
    """tfds's builder for `name` in `root`, prepared or not; creates nothing and downloads nothing.

    Raises:
      DatasetUnavailableError: an unknown name (and no prepared copy), or damaged metadata.
    """
    tfds = _tfds()
    try:
        return tfds.builder(name, data_dir=root)
    except tfds.core.registered.DatasetNotFoundError as e:
        del e  # its text lists every registered dataset: hundreds of lines
        raise DatasetUnavailableError(
            f"unknown tfds dataset {name!r}: it is not a registered tfds dataset and {root} holds no "
            f"prepared copy ({name}/<version>/); check the name, or point --config.data_dir at one"
        ) from None
    except Exception as e:  # a damaged dataset_info.json or features.json: JSON or protobuf errors
        raise DatasetUnavailableError(
            f"cannot read the prepared {name!r} in {root} ({type(e).__name__}: {str(e)[:200]}): its "
            "metadata is damaged; delete that dataset directory and prepare it again"
        ) from None


@contextlib.contextmanager
def quiet_absl_warnings() -> Iterator[None]:
    """Holds back absl's warnings, through which tfds logs that a dataset's files are missing: the
    caller's error says what is missing and how to provide it."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(level)


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
    builder = open_builder(name, root)
    with quiet_absl_warnings():
        if builder.is_prepared():
            return builder
    manual_dir = os.path.join(root, "downloads", "manual")
    archive = MANUAL_ARCHIVES.get(name)
    if archive and os.path.exists(os.path.join(manual_dir, archive)):
        _tensorflow_off_the_gpus()
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        return builder
    host = DOWNLOAD_HOSTS.get(name)
    if os.environ.get("RESNET_JAX_OFFLINE") == "1":  # air-gapped machines: never try a download
        reason = "RESNET_JAX_OFFLINE=1 forbids downloading it"
    elif host is None or _reachable(host):
        try:
            _tensorflow_off_the_gpus()
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


def label_info(builder: Any) -> tuple[int | None, tuple[str, ...] | None]:
    """(number of classes, class names) of a builder's 'label' feature, (None, None) if it has none."""
    try:
        label = builder.info.features["label"]
    except (KeyError, TypeError):
        return None, None
    if not hasattr(label, "num_classes"):
        return None, None
    names = tuple(label.names) if getattr(label, "names", None) else None
    return label.num_classes, names


def load_split(builder: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a whole split as (uint8 images [N, H, W, C], int32 labels [N]) on the host.

    Raises:
      DatasetUnavailableError: an unknown split, or records that cannot be read (a damaged copy).
    """
    tfds = _tfds()
    known = builder.info.splits
    if known and split.isidentifier() and split not in known:  # plain names only; "train[:90%]" is tfds's
        raise DatasetUnavailableError(
            f"split {split!r} not in {builder.info.name}; available: {', '.join(known)}"
        )
    _tensorflow_off_the_gpus()
    try:
        dataset = builder.as_dataset(split=split, batch_size=10_000, shuffle_files=False)
        chunks = list(tfds.as_numpy(dataset))
    except Exception as e:  # TensorFlow raises DataLossError, InvalidArgumentError, ... on damaged records
        raise DatasetUnavailableError(
            f"cannot read split {split!r} of {builder.info.name} in {builder.data_dir} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}): the prepared copy is damaged; "
            "delete that directory and prepare the dataset again"
        ) from None
    images = np.concatenate([c["image"] for c in chunks]).astype(np.uint8, copy=False)
    return images, np.concatenate([c["label"] for c in chunks]).astype(np.int32)
