"""`create`: the pipeline a config names, the in-memory one (train/data/memory.py, read here through
tensorflow-datasets) or the streaming one (train/data/streaming.py); both are a train.data.Pipeline."""

from __future__ import annotations

import sys
from typing import Any

import jax
from jax.sharding import Mesh

from train.data import Pipeline, image_check, tfds_data
from train.data.image_folder import ImageFolder, image_folder_sources
from train.data.memory import InMemoryPipeline, preprocess_spec, put_eval, put_train
from train.data.sources import RandomAccessSource, check_record_files, tfds_sources
from train.data.streaming import StreamingPipeline

# ImageNet's usual evaluation view: the shorter side resized to 256 for a 224 crop.
DEFAULT_CROP_PCT = 0.875


def create(config: Any, mesh: Mesh, data_key: jax.Array, *, eval_only: bool = False) -> Pipeline:
    """The pipeline `config.pipeline` names; nothing is written.

    Args:
      config: the validated training config.
      mesh: the device mesh; batches are sharded over its 'data' axis.
      data_key: the data-order key (the in-memory pipeline's; the streaming one uses config.seed).
      eval_only: only eval_inputs() will be used (train.eval): the in-memory pipeline then skips the
        training split.

    Raises:
      DatasetUnavailableError: the data cannot be read, or disagrees with the config (one line).
    """
    if config.pipeline == "grain":
        return create_streaming(config, mesh)
    return create_in_memory(config, mesh, data_key, eval_only=eval_only)


def create_streaming(config: Any, mesh: Mesh) -> StreamingPipeline:
    """A StreamingPipeline over the tfds ArrayRecord dataset or the image folders the config names.

    Every image folder file's header is checked first (train/data/image_check.py: at every start,
    about 60 us of CPU a file), and the first record of every ArrayRecord file is read.

    Raises:
      DatasetUnavailableError: a missing or malformed folder, bad image files (unless
        config.skip_bad_images: then they are left out, with one warning line on stderr), images of
        several sizes for a size-keeping transform, a dataset not prepared as ArrayRecord or a damaged
        one, num_classes disagreeing with the data, or too few examples (streaming's DataError and
        ValueError).
    """
    try:
        if config.data_source == "folder":
            sources = _checked_folders(config)
        else:
            sources = _tfds_array_record_sources(config)
        return StreamingPipeline(
            *sources,
            mesh=mesh,
            batch_size=config.batch_size,
            eval_batch_size=config.eval_batch_size,
            seed=config.seed,
            train_transform=config.train_transform,
            eval_transform=config.eval_transform,
            image_size=config.image_size,
            num_workers=config.num_workers,
            prefetch=config.prefetch,
            num_classes=config.num_classes or None,  # 0: the data's own
            mean=tuple(config.mean),
            std=tuple(config.std),
            pad=config.pad,
            crop_pct=config.crop_pct or DEFAULT_CROP_PCT,
            interpolation=config.interpolation or "bilinear",
        )
    except ValueError as e:  # DataError included: one line naming the path and the fix
        raise tfds_data.DatasetUnavailableError(str(e)) from None


def _checked_folders(config: Any) -> tuple[ImageFolder, ImageFolder]:
    train, test = image_folder_sources(config.train_dir, config.eval_dir)
    (train, test), warning = image_check.check_folders(
        [(train, "train_transform", config.train_transform), (test, "eval_transform", config.eval_transform)],
        skip_bad=config.skip_bad_images,
    )
    if warning and jax.process_index() == 0:
        print(warning, file=sys.stderr, flush=True)
    return train, test


def _tfds_array_record_sources(config: Any) -> tuple[RandomAccessSource, RandomAccessSource]:
    data_dir = tfds_data.resolve_data_dir(config.data_dir)
    builder = tfds_data.open_builder(config.dataset, data_dir)  # an unknown name, damaged metadata
    try:  # download=False: never minutes of offline retries
        train, test = tfds_sources(config.dataset, data_dir, config.train_split, config.eval_split)
    except Exception as e:  # tfds raises several types for a missing or TFRecord-only dataset
        if not builder.is_prepared():
            raise tfds_data.DatasetUnavailableError(
                f"dataset {config.dataset!r} is not prepared: tfds looked for {builder.data_dir} and did "
                f"not find it (data_dir {data_dir}, from config.data_dir, else $TFDS_DATA_DIR, else "
                "~/tensorflow_datasets). pipeline='grain' reads an ArrayRecord copy and downloads "
                f"nothing: prepare one (tfds build {config.dataset} --file_format=array_record "
                f"--data_dir={data_dir}) or point --config.data_dir at a directory holding one"
            ) from None
        raise tfds_data.DatasetUnavailableError(
            f"cannot read {config.dataset} from {data_dir} with tfds.data_source ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}): pipeline='grain' needs it prepared as ArrayRecord "
            f"(tfds build {config.dataset} --file_format=array_record --data_dir={data_dir})"
        ) from None
    for source in (train, test):
        check_record_files(source)  # ValueError: create_streaming makes it one line
    return train, test


def create_in_memory(
    config: Any, mesh: Mesh, data_key: jax.Array, *, eval_only: bool = False
) -> InMemoryPipeline:
    """Reads `config.dataset` through tfds and puts both splits on the mesh's devices.

    Args:
      config: the validated training config.
      mesh: the device mesh.
      data_key: the data-order key.
      eval_only: read only the eval split (train.eval); `preprocess` is then None (a per-pixel mean
        image needs the training split: evaluation takes the normalisation from the checkpoint).

    Raises:
      DatasetUnavailableError: the dataset or a split cannot be read, or the split has fewer examples
        than one batch, or config.num_classes disagrees with the dataset's label count.
    """
    builder = tfds_data.get_builder(config.dataset, config.data_dir)
    num_classes, class_names = tfds_data.label_info(builder)
    if num_classes is None and not config.num_classes:
        raise tfds_data.DatasetUnavailableError(
            f"{config.dataset} does not say how many classes it has: pass --config.num_classes=N"
        )
    if num_classes is not None and config.num_classes and num_classes != config.num_classes:
        raise tfds_data.DatasetUnavailableError(
            f"num_classes={config.num_classes} but {config.dataset} has {num_classes} classes: "
            f"pass --config.num_classes={num_classes} (or 0: the dataset's own)"
        )
    eval_images, eval_labels = tfds_data.load_split(builder, config.eval_split)
    # Resized inside the jitted steps, not here: the split stays uint8 at its own size on the devices
    # (CIFAR-10 at 224 px would be 7.5 GB instead of 150 MB) and only each batch is enlarged.
    resize_to = config.image_size if config.image_size else 0
    if resize_to and tuple(eval_images.shape[1:3]) == (resize_to,) * 2:
        resize_to = 0
    common = dict(
        batch_size=config.batch_size,
        data_key=data_key,
        num_classes=config.num_classes or num_classes,
        class_names=class_names,
        resize_to=resize_to,
    )
    eval_split = put_eval(eval_images, eval_labels, config.eval_batch_size, mesh)
    if eval_only:
        return InMemoryPipeline(None, eval_split, preprocess=None, **common)
    train_images, train_labels = tfds_data.load_split(builder, config.train_split)
    if len(train_labels) < config.batch_size:
        raise tfds_data.DatasetUnavailableError(
            f"batch_size={config.batch_size} exceeds the {len(train_labels)} training examples of "
            f"{config.dataset}: pass a smaller --config.batch_size"
        )
    return InMemoryPipeline(
        put_train(train_images, train_labels, mesh),
        eval_split,
        preprocess=preprocess_spec(config.normalization, config.mean, config.std, train_images),
        **common,
    )
