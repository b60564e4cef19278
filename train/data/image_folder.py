"""A random-access image source over `root/<class>/<file>` (the ImageNet / torchvision layout).

Classes are the sorted subfolder names and a file's label is its class's index; files are sorted, so
index i names the same file on every host. Problems are reported as one-line `DataError`s that name
the path and the fix: checked when the folder is listed (missing root, no images, an empty class
folder, a file that is not an image by its name, a class entry that cannot be read), and when an
image is read or decoded. train/data/image_check.py checks every file's header before training.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from train.data.image_ops import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "ImageFolder",
    "check_num_classes",
    "check_same_classes",
    "image_folder_sources",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_HINT = "expected root/<class>/<image> with one subfolder per class"


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError as e:  # a symbolic link that loops: is_dir follows it
        raise DataError(f"{entry.path} cannot be read ({e.strerror}): remove it or fix the link") from None


def _subfolders(root: str) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if not e.name.startswith(".") and _is_dir(e))


def _is_file(entry: os.DirEntry) -> bool:
    """A file, or a symbolic link that does not lead to a folder: a broken or looping link is listed, so
    that the header check names it instead of the data silently shrinking."""
    try:
        return entry.is_file() or (entry.is_symlink() and not entry.is_dir())
    except OSError:  # a symbolic link that loops
        return True


def _class_files(folder: str) -> list[str]:
    """The sorted image files of one class folder (hidden files and subfolders skipped).

    Raises:
      DataError: on a file whose extension is not an image's, or when there is no image.
    """
    names = sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and _is_file(e))
    for name in names:
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            raise DataError(
                f"{os.path.join(folder, name)} is not an image file ({', '.join(IMAGE_EXTENSIONS)}): "
                "move it out of the class folder"
            )
    if not names:
        raise DataError(f"class folder {folder} holds no images: add images or remove the folder")
    return names


class ImageFolder:
    """Random-access source of {'image': encoded bytes, 'label': int, 'path': str} over a class tree.

    Picklable (it holds only paths), so grain can ship it to worker processes; each item reads its
    file when asked, so workers do the I/O.

    Attributes:
      root: the folder, absolute.
      class_names: sorted subfolder names; label i is class_names[i].
      paths: every image's path relative to root, sorted by class then file name.
      labels: int32 [len(self)].
    """

    def __init__(self, root: str | os.PathLike):
        """Lists `root/<class>/<file>`.

        Args:
          root: the folder holding one subfolder per class.

        Raises:
          DataError: root missing or not a folder, no class folders, or a class folder without images.
        """
        self.root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise DataError(f"image folder {self.root} does not exist or is not a folder: {_HINT}")
        classes = _subfolders(self.root)
        if not classes:
            raise DataError(f"no images found under {self.root}: it has no class subfolders; {_HINT}")
        paths, labels = [], []
        for label, name in enumerate(classes):
            files = _class_files(os.path.join(self.root, name))
            paths += [os.path.join(name, f) for f in files]
            labels += [label] * len(files)
        self.class_names = tuple(classes)
        self.paths = tuple(paths)
        self.labels = np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = os.path.join(self.root, self.paths[index])
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DataError(f"cannot read image {path}: {e.strerror}; restore or remove the file") from None
        return {"image": data, "label": int(self.labels[index]), "path": path}

    def __repr__(self) -> str:
        return f"ImageFolder({self.root!r}, {len(self)} images, {len(self.class_names)} classes)"

    def without(self, paths: set[str]) -> ImageFolder:
        """A copy without the files at `paths` (relative to root); classes and labels stay the same."""
        keep = [i for i, p in enumerate(self.paths) if p not in paths]
        out = copy.copy(self)
        out.paths, out.labels = tuple(self.paths[i] for i in keep), self.labels[keep]
        return out


def check_same_classes(train: ImageFolder, test: ImageFolder) -> None:
    """Raises DataError unless both folders have the same class subfolders (so labels mean the same)."""
    if train.class_names == test.class_names:
        return
    only_train = sorted(set(train.class_names) - set(test.class_names))
    only_test = sorted(set(test.class_names) - set(train.class_names))
    raise DataError(
        f"train folder {train.root} and test folder {test.root} have different classes "
        f"(only in train: {only_train or 'none'}; only in test: {only_test or 'none'}): "
        "give both the same class subfolders"
    )


def check_num_classes(class_names: Sequence[str], num_classes: int, where: str) -> None:
    """Raises DataError unless the data has `num_classes` classes (the model's output size).

    Args:
      class_names: the data's classes.
      num_classes: what the config asks for.
      where: the data's location, for the message.
    """
    if len(class_names) != num_classes:
        raise DataError(
            f"{where} has {len(class_names)} classes but num_classes={num_classes}: "
            f"set --config.num_classes={len(class_names)} or point the data at the right folder"
        )


def image_folder_sources(train_root: str, eval_root: str) -> tuple[ImageFolder, ImageFolder]:
    """(train, eval) ImageFolders, checked to have the same classes."""
    train, test = ImageFolder(train_root), ImageFolder(eval_root)
    check_same_classes(train, test)
    return train, test
