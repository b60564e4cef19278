"""Reading tensorflow-datasets splits into host memory, and failing fast and clearly when that cannot work.

A copy prepared as ArrayRecord (`file_format='array_record'`, what `pipeline='grain'` reads) is read with
`tfds.data_source` and its PNG/JPEG bytes decoded by resnet_jax.images (Pillow): TensorFlow is never
imported. A TFRecord copy (tfds's default) is read through TensorFlow, which tfds also needs to prepare
any dataset. Both give the records in the split's stored order; PNG images (CIFAR, MNIST, SVHN, ...)
decode to the same bytes either way (tests/test_tfds_formats.py). JPEG decodes differ by a few levels in
some pixels: TensorFlow's decoder uses libjpeg's fast integer IDCT, Pillow the accurate one, as the
streaming pipeline does.

Offline, tfds would retry a download for minutes: an unprepared dataset whose download host is
unreachable is an error at once, saying how to provide the data.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from resnet_jax import images as image_files
from train.data import sources

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


def _tensorflow_off_the_gpus(needed_for: str, name: str, data_dir: str) -> None:
    """Imports TensorFlow, which reading or preparing TFRecords needs, and keeps it off the GPUs: it only
    decodes records here, and JAX needs the memory. Called just before the first TensorFlow use, so runs
    that never read a TFRecord (image folders, ArrayRecord) never import TensorFlow.

    Args:
      needed_for: what needs TensorFlow, for the message if it is missing.
      name, data_dir: the dataset, and where that message suggests preparing it as ArrayRecord.

    Raises:
      DatasetUnavailableError: TensorFlow is not installed.
    """
    try:
        import tensorflow as tf  # the optional TFRecord path: tensorflow-datasets reads those through it
    except ImportError:
        raise DatasetUnavailableError(
            f"{needed_for} needs TensorFlow, which is not installed: pip install tensorflow-cpu (the train "
            "extra has it), or use a copy prepared as ArrayRecord, which reads without it (where "
            f"TensorFlow is installed: tfds build {name} --file_format=array_record --data_dir={data_dir})"
        ) from None
    tf.config.set_visible_devices([], "GPU")


def resolve_data_dir(data_dir: str | None) -> str:
    """Where tfds reads: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    if data_dir:
        return os.path.abspath(os.path.expanduser(data_dir))
    if os.environ.get("TFDS_DATA_DIR"):
        return os.path.abspath(os.path.expanduser(os.environ["TFDS_DATA_DIR"]))
    return os.path.expanduser(os.path.join("~", "tensorflow_datasets"))


def open_builder(name: str, root: str, data_dir_flag: str = "--config.data_dir") -> Any:
    """tfds's builder for `name` in `root`, prepared or not; creates nothing and downloads nothing.

    Args:
      name: tfds dataset name.
      root: the tfds data dir.
      data_dir_flag: what the user sets to choose `root`, as errors name it.

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
            f"prepared copy ({name}/<version>/); check the name, or point {data_dir_flag} at one"
        ) from None
    except Exception as e:  # a damaged dataset_info.json or features.json: JSON or protobuf errors
        raise DatasetUnavailableError(
            f"cannot read the prepared {name!r} in {root} ({type(e).__name__}: {str(e)[:200]}): its "
            "metadata is damaged; delete that dataset directory and prepare it again"
        ) from None


def get_builder(name: str, data_dir: str | None, data_dir_flag: str = "--config.data_dir") -> Any:
    """A prepared tfds builder for `name`: prepared already, from a manually placed archive, or downloaded.

    Args:
      name: tfds dataset name, e.g. 'cifar10'.
      data_dir: tfds data dir; None means $TFDS_DATA_DIR or ~/tensorflow_datasets.
      data_dir_flag: what the user sets to choose `data_dir`, as errors name it (the notebook's DATA_DIR).

    Raises:
      DatasetUnavailableError: the dataset is not prepared and its download host is unreachable.
        Checked before tfds would try the network, so nothing hangs on a machine without internet.
    """
    tfds = _tfds()
    root = resolve_data_dir(data_dir)
    builder = open_builder(name, root, data_dir_flag)
    if builder.is_prepared():
        return builder
    manual_dir = os.path.join(root, "downloads", "manual")
    archive = MANUAL_ARCHIVES.get(name)
    if archive and os.path.exists(os.path.join(manual_dir, archive)):
        _tensorflow_off_the_gpus(f"preparing {name!r} from {archive}", name, root)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        return builder
    host = DOWNLOAD_HOSTS.get(name)
    if os.environ.get("RESNET_JAX_OFFLINE") == "1":  # air-gapped machines: never try a download
        reason = "RESNET_JAX_OFFLINE=1 forbids downloading it"
    elif host is None or _reachable(host):
        _tensorflow_off_the_gpus(f"preparing {name!r} (tfds's builders write through it)", name, root)
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
        f"(data_dir {root}, from {data_dir_flag}, else $TFDS_DATA_DIR, else ~/tensorflow_datasets), "
        f"and {reason}. Fix either way: (1) {what} and rerun, or (2) point {data_dir_flag} (or "
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


def reads_without_tensorflow(builder: Any) -> bool:
    """Whether the prepared copy holds an ArrayRecord version, which load_split reads without TensorFlow."""
    return _tfds().core.FileFormat.ARRAY_RECORD in builder.info.available_file_formats()


def load_split(builder: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a whole split as (uint8 images [N, H, W, C], int32 labels [N]) on the host, in stored order.

    Raises:
      DatasetUnavailableError: an unknown split, records that cannot be read (a damaged copy), images of
        several sizes, or a TFRecord copy without TensorFlow installed.
    """
    known = builder.info.splits
    if known and split.isidentifier() and split not in known:  # plain names only; "train[:90%]" is tfds's
        raise DatasetUnavailableError(
            f"split {split!r} not in {builder.info.name}; available: {', '.join(known)}"
        )
    try:
        if reads_without_tensorflow(builder):
            return _read_array_record(builder, split)
        return _read_tfrecord(builder, split)
    except DatasetUnavailableError:
        raise
    except Exception as e:  # TensorFlow raises DataLossError, ..., ArrayRecord RuntimeError, PIL OSError
        raise DatasetUnavailableError(
            f"cannot read split {split!r} of {builder.info.name} in {builder.data_dir} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}): the prepared copy is "
            "damaged; delete that directory and prepare the dataset again"
        ) from None


def _read_tfrecord(builder: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    name = builder.info.name
    # A second copy beside the TFRecord one: tfds build skips a data dir where the dataset is prepared.
    _tensorflow_off_the_gpus(f"reading the TFRecord copy of {name!r} in {builder.data_dir}", name, "NEW_DIR")
    dataset = builder.as_dataset(split=split, batch_size=10_000, shuffle_files=False)
    chunks = list(_tfds().as_numpy(dataset))
    images = np.concatenate([c["image"] for c in chunks]).astype(np.uint8, copy=False)
    return images, np.concatenate([c["label"] for c in chunks]).astype(np.int32)


def _read_array_record(builder: Any, split: str, chunk: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """The split through tfds's ArrayRecord data source, its encoded images decoded by resnet_jax.images
    in stored orientation (as TensorFlow's decode_image, which reads no EXIF)."""
    tfds = _tfds()
    name = builder.info.name
    channels = builder.info.features["image"].shape[-1]
    if channels not in (1, 3):
        raise DatasetUnavailableError(
            f"{name}'s images have {channels} channels; the in-memory pipeline reads 1 or 3 from ArrayRecord"
        )
    source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    try:
        sources.check_record_files(source)  # a truncated or overwritten file, named as pipeline='grain' does
    except ValueError as e:
        raise DatasetUnavailableError(str(e)) from None
    n = len(source)
    images, labels = None, np.empty(n, np.int32)
    for start in range(0, n, chunk):
        try:
            records = source.__getitems__(list(range(start, min(n, start + chunk))))
        except Exception as e:  # array_record raises RuntimeError on a damaged file
            raise DatasetUnavailableError(sources.read_error(source, start, e)) from None
        for i, record in enumerate(records, start):
            try:
                if not isinstance(record["image"], bytes):  # what tfds makes of a record cut short
                    raise image_files.DataError(f"record {i} holds no image bytes")
                rgb = image_files.to_rgb_array(image_files.open_image(record["image"], f"{name}[{i}]"))
            except image_files.DataError as e:
                raise DatasetUnavailableError(sources.read_error(source, i, e)) from None
            image = rgb if channels == 3 else rgb[..., :1]  # grayscale: Pillow's RGB repeats the level
            if images is None:
                images = np.empty((n, *image.shape), np.uint8)
            elif image.shape != images.shape[1:]:
                raise DatasetUnavailableError(
                    f"{name} {split!r} holds images of several sizes ({images.shape[1:]}, {image.shape} at "
                    f"{i}); the in-memory pipeline needs one: pass --config.pipeline=grain with a sized "
                    "--config.train_transform"
                )
            images[i], labels[i] = image, record["label"]
    return images if images is not None else np.empty((0, 0, 0, channels), np.uint8), labels
