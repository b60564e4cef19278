"""A small prepared tfds dataset of random images, for smoke runs and tests without the real data.

`python -m train --config configs/smoke.py --config.dataset=fake_cifar --config.data_dir=DIR` reads it
like any prepared dataset (tfds finds DIR/fake_cifar/1.0.0 by name).
"""

from __future__ import annotations

import numpy as np


def write_fake_dataset(
    data_dir: str,
    name: str = "fake_cifar",
    num_train: int = 64,
    num_test: int = 20,
    image_shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    seed: int = 0,
    file_format: str | None = None,
) -> str:
    """Writes a prepared tfds dataset `name` (splits 'train' and 'test') of random uint8 images to `data_dir`,
    as TFRecord files (the in-memory pipeline reads those) or, with file_format='array_record', ArrayRecord
    files (pipeline='grain').

    Returns:
      the dataset name to put in `config.dataset`.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tf.config.set_visible_devices([], "GPU")
    rng = np.random.default_rng(seed)

    def split(n: int):
        return tf.data.Dataset.from_tensor_slices(
            {
                "image": rng.integers(0, 256, (n, *image_shape), dtype=np.uint8),
                "label": rng.integers(0, num_classes, n).astype(np.int64),
            }
        )

    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=image_shape),
            "label": tfds.features.ClassLabel(num_classes=num_classes),
        }
    )
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name,
        version="1.0.0",
        features=features,
        split_datasets={"train": split(num_train), "test": split(num_test)},
        data_dir=data_dir,
        file_format=file_format,
    )
    return name
