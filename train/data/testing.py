"""A small prepared tfds dataset of random images, for smoke runs and tests without the real data.

`python -m train --config configs/smoke.py --config.dataset=fake_cifar --config.data_dir=DIR` reads it
like any prepared dataset (tfds finds DIR/fake_cifar/1.0.0 by name).
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image


def write_fake_dataset(
    data_dir: str,
    name: str = "fake_cifar",
    num_train: int = 64,
    num_test: int = 20,
    image_shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    seed: int = 0,
    file_format: str = "tfrecord",
) -> str:
    """Writes a prepared tfds dataset `name` (splits 'train' and 'test') of random uint8 images to `data_dir`.

    The records are written in the order drawn, as PNGs encoded by PIL, so both formats of one (seed, sizes)
    hold the same records in the same order.

    Args:
      data_dir: the tfds data dir; the dataset goes to data_dir/name/1.0.0.
      name: the dataset name.
      num_train, num_test: examples in each split.
      image_shape: (H, W, C) of every image, C 1 or 3.
      num_classes: labels are drawn from [0, num_classes).
      seed: the images and labels drawn.
      file_format: 'tfrecord' (tfds's default; needs TensorFlow to write and read) or 'array_record'
        (what tfds.data_source reads; written and read without TensorFlow).

    Returns:
      the dataset name to put in `config.dataset`.
    """
    import tensorflow_datasets as tfds  # the train extra's dependency, imported where a test writes data

    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=image_shape),
            "label": tfds.features.ClassLabel(num_classes=num_classes),
        }
    )
    version_dir = os.path.join(data_dir, name, "1.0.0")
    os.makedirs(version_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    split_infos = []
    for split, n in (("train", num_train), ("test", num_test)):
        records = []
        for _ in range(n):
            image = rng.integers(0, 256, image_shape, dtype=np.uint8)
            png = io.BytesIO()
            Image.fromarray(image.squeeze(-1) if image_shape[-1] == 1 else image).save(png, format="PNG")
            label = int(rng.integers(0, num_classes))
            records.append(features.serialize_example({"image": png.getvalue(), "label": label}))
        path = os.path.join(version_dir, f"{name}-{split}.{file_format}-00000-of-00001")
        _write_records(path, records, file_format)
        split_infos.append(
            tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=os.path.getsize(path))
        )
    tfds.folder_dataset.write_metadata(
        data_dir=version_dir, features=features, split_infos=split_infos, check_data=False
    )
    return name


def _write_records(path: str, records: list[bytes], file_format: str) -> None:
    """One shard of serialized tf.train.Examples, as tfds's file adapters write it."""
    if file_format == "array_record":
        from array_record.python.array_record_module import ArrayRecordWriter  # the train extra's

        writer = ArrayRecordWriter(path, "group_size:1")  # tfds's option: one record per chunk
        for record in records:
            writer.write(record)
        writer.close()
    elif file_format == "tfrecord":
        import tensorflow as tf  # optional: only TFRecord files need it

        tf.config.set_visible_devices([], "GPU")
        with tf.io.TFRecordWriter(path) as writer:
            for record in records:
                writer.write(record)
    else:
        raise ValueError(f"file_format={file_format!r}: 'tfrecord' or 'array_record'")
