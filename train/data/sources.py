"""Random-access sources the streaming pipeline reads: the protocol, tfds ArrayRecord sources, names,
and read errors that name the file.

An ImageFolder (train/data/image_folder.py) and a `tfds.data_source` both qualify: `len(source)` and
`source[i] -> {'image': encoded bytes or uint8 array, 'label': int}`.
"""

from __future__ import annotations

import os
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
    return tuple(  # download=False: a missing copy is an error, never minutes of offline retries
        tfds.data_source(name, split=split, data_dir=data_dir, decoders=decoders, download=False)
        for split in (train_split, eval_split)
    )


def _record_files(source: RandomAccessSource) -> list[tuple[int, str]]:
    """(index of its first record, path) of each file of a tfds ArrayRecord source, [] for other sources.

    array_record keeps this in private fields (`_read_instructions`, `_prefix_sums`), so any change there
    gives [] and messages fall back to the dataset's directory.
    """
    inner = getattr(source, "data_source", None)
    try:
        files = [r.filename for r in inner._read_instructions]
        return list(zip([0, *inner._prefix_sums[:-1]], files, strict=True))
    except (AttributeError, TypeError, ValueError):
        return []


def read_error(source: RandomAccessSource, index: int, error: Exception) -> str:
    """One line saying that record `index` of `source` cannot be read, naming its file and the fix."""
    detail = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    info = getattr(source, "dataset_info", None)
    if info is None:
        return f"cannot read {source_name(source)}[{index}] ({detail})"
    files = [path for first, path in _record_files(source) if first <= index]
    where = files[-1] if files else info.data_dir
    root = os.path.dirname(os.path.dirname(info.data_dir))  # info.data_dir is <root>/<name>/<version>
    return (
        f"cannot read record {index} of {where} ({detail}): the ArrayRecord file is damaged; rebuild the "
        f"dataset: delete {info.data_dir} and prepare it again "
        f"(tfds build {info.name} --file_format=array_record --data_dir={root})"
    )


def check_record_files(source: RandomAccessSource) -> None:
    """Reads the first record of each file of a tfds ArrayRecord source (opening a file reads its index,
    which a truncated or overwritten file fails); records damaged inside a file fail when read.

    Raises:
      ValueError: naming the damaged file and how to rebuild the dataset.
    """
    for first, _ in _record_files(source):
        try:
            source[first]
        except Exception as e:  # array_record raises RuntimeError, and others for other damage
            raise ValueError(read_error(source, first, e)) from None
