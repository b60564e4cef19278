"""The in-memory input pipeline, for datasets that fit in device memory (CIFAR-10/100 and the like).

The whole split is read once (train.data.create.create_in_memory) as uint8 arrays and put on every
device. Each training batch is then a pure function of (seed, step): epoch e visits the examples in the order
`permutation(fold_in(key, e))` and step s takes slice `s % steps_per_epoch` of it, so a run resumed at
any step sees exactly the batches an uninterrupted run would. Selection, cropping, flipping and
normalisation happen inside the jitted train step, so the host does no work per step.

`InMemoryPipeline` is one implementation of train.data.pipeline.Pipeline.
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


def flip_mask(rng: jax.Array, batch_size: int) -> jax.Array:
    """bool [batch_size]: which examples `augment` mirrors at the step whose key is `rng`.

    The cached-feature step (train.steps.head_train_step) draws its flips here too, so both runs mirror
    the same examples.
    """
    return jax.random.bernoulli(jax.random.split(rng)[1], 0.5, (batch_size,))


def augment(images: jax.Array, rng: jax.Array, pad: int, flip: bool) -> jax.Array:
    """The paper's augmentation on uint8 NHWC images: zero-pad by `pad`, random crop back, random h-flip."""
    b, h, w, _ = images.shape
    crop_rng = jax.random.split(rng)[0]
    if pad > 0:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(crop_rng, (b, 2), 0, 2 * pad + 1)

        def crop(img, off):
            return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

        images = jax.vmap(crop)(padded, offsets)
    if flip:
        images = jnp.where(flip_mask(rng, b)[:, None, None, None], images[:, :, ::-1, :], images)
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
    """Both splits on the devices (a train.data.pipeline.Pipeline; eval-only: no training split).

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
        train: InMemorySplit | None,
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
        self.num_train_examples = train.num_examples if train else 0
        self.steps_per_epoch = self.num_train_examples // batch_size
        h, w, c = train.images.shape[1:] if train else eval_split.images.shape[2:]
        self.image_shape = (resize_to, resize_to, c) if resize_to else (h, w, c)
        self.num_classes, self.class_names = num_classes, class_names
        self.eval_view: dict[str, Any] = {}  # whole images, resized in the step (resize_images) if at all

    def train_inputs(self, start_step: int) -> Iterator[tuple[jax.Array, jax.Array]]:
        """What the jitted step takes for steps start_step, start_step + 1, ...: here always the split."""
        del start_step  # the step selects its batch on the device (see device_batch)
        if self.train is None:
            raise ValueError("this pipeline was made eval_only: it has no training split")
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
