"""Random-access sources the streaming pipeline reads: the protocol, tfds ArrayRecord sources, names.

An ImageFolder (train/data/image_folder.py) and a `tfds.data_source` both qualify: `len(source)` and
`source[i] -> {'image': encoded bytes or uint8 array, 'label': int}`.
"""

from __future__ import annotations

from typing import Any, Protocol


class RandomAccessSource(Protocol):
    """What the pipeline reads: records {'image': encoded bytes or uint8 array, 'label': int}."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def source_name(source: RandomAccessSource) -> str:
    """A short name of a source for messages (a list's repr would print every image)."""
    if hasattr(source, "class_names") or hasattr(source, "dataset_info"):  # an ImageFolder, a tfds source
        return repr(source)
    return f"{type(source).__name__} of {len(source)}"


def class_names_of(source: RandomAccessSource) -> tuple[str, ...] | None:
    """The class names an ImageFolder or a tfds data source knows, else None."""
    if hasattr(source, "class_names"):  # an ImageFolder
        return source.class_names
    info = getattr(source, "dataset_info", None)
    label = info.features["label"] if info is not None and "label" in info.features else None
    return tuple(label.names) if label is not None and hasattr(label, "names") else None


def tfds_sources(
    name: str, data_dir: str | None, train_split: str = "train", eval_split: str = "test"
) -> tuple[RandomAccessSource, RandomAccessSource]:
    """(train, eval) `tfds.data_source`s whose images stay encoded, so workers decode them (draft mode).

    Needs the dataset prepared in ArrayRecord format (`file_format='array_record'`); reading does not
    import TensorFlow.
    """
    import tensorflow_datasets as tfds

    decoders = {"image": tfds.decode.SkipDecoding()}
    return tuple(
        tfds.data_source(name, split=split, data_dir=data_dir, decoders=decoders)
        for split in (train_split, eval_split)
    )
