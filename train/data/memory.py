"""The in-memory input pipeline, for datasets that fit in device memory (CIFAR-10/100 and the like).

The whole split is read once through tensorflow-datasets as uint8 arrays and put on every device. Each
training batch is then a pure function of (seed, step): epoch e visits the examples in the order
`permutation(fold_in(key, e))` and step s takes slice `s % steps_per_epoch` of it, so a run resumed at
any step sees exactly the batches an uninterrupted run would. Selection, cropping, flipping and
normalisation happen inside the jitted train step, so the host does no work per step.

Every pipeline offers the loop the same small interface (see `InMemoryPipeline`): `train_inputs`,
`device_batch`, `eval_inputs`, and the split's facts (examples, image shape, classes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


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


class InMemoryPipeline:
    """Both splits on the devices; the loop's interface to them.

    Attributes:
      num_train_examples: examples in the training split.
      steps_per_epoch: whole global batches per epoch (the last partial batch is dropped).
      image_shape: (H, W, C) of the images the model sees.
      num_classes, class_names: the label space (class_names None when the dataset names none).
      preprocess: the checkpoint's preprocess spec for these images.
      device_augment: True: the train step crops and flips the batch (config.pad, config.flip).
      resize_to: >0: the train and eval steps resize each batch to this side (after augmentation,
        before normalisation) with resnet_jax.preprocess.resize_images; 0: the images' own size.
    """

    device_augment = True

    def __init__(
        self,
        train: InMemorySplit,
        eval_split: InMemorySplit,
        *,
        batch_size: int,
        data_key: jax.Array,
        preprocess: dict[str, Any],
        num_classes: int,
        class_names: tuple[str, ...] | None = None,
        resize_to: int = 0,
    ):
        self.train, self.eval = train, eval_split
        self.resize_to = resize_to
        self.batch_size = batch_size
        self.data_key = data_key
        self.preprocess = preprocess
        self.num_train_examples = train.num_examples
        self.steps_per_epoch = train.num_examples // batch_size
        h, w, c = train.images.shape[1:]
        self.image_shape = (resize_to, resize_to, c) if resize_to else (h, w, c)
        self.num_classes, self.class_names = num_classes, class_names

    def train_inputs(self, start_step: int) -> Iterator[tuple[jax.Array, jax.Array]]:
        """What the jitted step takes for steps start_step, start_step + 1, ...: here always the split."""
        del start_step  # the step selects its batch on the device (see device_batch)
        while True:
            yield self.train.images, self.train.labels

    def device_batch(self, inputs: tuple[jax.Array, jax.Array], step: jax.Array) -> dict[str, jax.Array]:
        """Inside the jitted step: training batch `step` {'image': uint8, 'label': int32} from `inputs`."""
        images, labels = inputs
        data = InMemorySplit(images, labels, None, self.num_train_examples)
        return train_batch(data, self.data_key, step, self.batch_size)

    def eval_inputs(self) -> Iterator[dict[str, jax.Array]]:
        """The eval split as {'image', 'label', 'mask'} stacks of batches: here one stack of all of them."""
        yield {"image": self.eval.images, "label": self.eval.labels, "mask": self.eval.mask}

    def close(self) -> None:
        pass


def create(config: Any, mesh: Mesh, data_key: jax.Array) -> Any:
    """The pipeline `config.pipeline` names: an InMemoryPipeline, or a streaming.StreamingPipeline.

    Both offer the loop the same interface (see InMemoryPipeline); nothing is written.

    Args:
      config: the validated training config.
      mesh: the device mesh; batches are sharded over its 'data' axis.
      data_key: the data-order key (the in-memory pipeline's; the streaming one uses config.seed).

    Raises:
      DatasetUnavailableError: the data cannot be read, or disagrees with the config (one line).
    """
    if config.pipeline == "grain":
        return create_streaming(config, mesh)
    return create_in_memory(config, mesh, data_key)


def create_streaming(config: Any, mesh: Mesh) -> Any:
    """A StreamingPipeline over the tfds ArrayRecord dataset or the image folders the config names.

    Raises:
      DatasetUnavailableError: a missing or malformed folder, a dataset not prepared as ArrayRecord,
        num_classes disagreeing with the data, or too few examples (streaming's DataError/ValueError).
    """
    from train import streaming, tfds_data
    from train.image_folder import image_folder_sources

    try:
        if config.data_source == "folder":
            sources = image_folder_sources(config.train_dir, config.eval_dir)
        else:
            sources = _tfds_array_record_sources(config)
        return streaming.StreamingPipeline(
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
        )
    except ValueError as e:  # DataError included: one line naming the path and the fix
        raise tfds_data.DatasetUnavailableError(str(e)) from None


def _tfds_array_record_sources(config: Any) -> tuple[Any, Any]:
    from train import streaming, tfds_data

    data_dir = tfds_data.resolve_data_dir(config.data_dir)
    try:
        return streaming.tfds_sources(config.dataset, data_dir, config.train_split, config.eval_split)
    except Exception as e:  # tfds raises several types for a missing or TFRecord-only dataset
        raise tfds_data.DatasetUnavailableError(
            f"cannot read {config.dataset} from {data_dir} with tfds.data_source ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}): pipeline='grain' needs it prepared as ArrayRecord "
            f"(tfds build {config.dataset} --file_format=array_record --data_dir={data_dir})"
        ) from None


def create_in_memory(config: Any, mesh: Mesh, data_key: jax.Array) -> InMemoryPipeline:
    """Reads `config.dataset` through tfds and puts both splits on the mesh's devices.

    Raises:
      DatasetUnavailableError: the dataset or a split cannot be read, or the split has fewer examples
        than one batch, or config.num_classes disagrees with the dataset's label count.
    """
    from train import tfds_data

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
    train_images, train_labels = tfds_data.load_split(builder, config.train_split)
    eval_images, eval_labels = tfds_data.load_split(builder, config.eval_split)
    # Resized inside the jitted steps, not here: the split stays uint8 at its own size on the devices
    # (CIFAR-10 at 224 px would be 7.5 GB instead of 150 MB) and only each batch is enlarged.
    resize_to = config.image_size if config.image_size else 0
    if resize_to and tuple(train_images.shape[1:3]) == (resize_to,) * 2:
        resize_to = 0
    if len(train_labels) < config.batch_size:
        raise tfds_data.DatasetUnavailableError(
            f"batch_size={config.batch_size} exceeds the {len(train_labels)} training examples of "
            f"{config.dataset}: pass a smaller --config.batch_size"
        )
    return InMemoryPipeline(
        put_train(train_images, train_labels, mesh),
        put_eval(eval_images, eval_labels, config.eval_batch_size, mesh),
        batch_size=config.batch_size,
        data_key=data_key,
        preprocess=preprocess_spec(config.normalization, config.mean, config.std, train_images),
        num_classes=config.num_classes or num_classes,
        class_names=class_names,
        resize_to=resize_to,
    )
