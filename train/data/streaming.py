"""Input pipeline for datasets read from disk while training (ImageNet and the like), built on grain.

Training batch `s` is a pure function of (seed, s) (train/data/stream_order.py): a run resumed at any
step sees exactly the batches an uninterrupted run would, with no iterator state to checkpoint, and the
batches do not depend on the number of worker processes or hosts.

Each process reads, decodes and augments only its rows of every global batch (process p of P owns rows
[p * B / P, (p + 1) * B / P)), in grain worker processes, and a background thread assembles the global
array (`jax.make_array_from_process_local_data`) one or two batches ahead of the step. Images travel as
uint8; normalisation stays in the jitted step.
"""

from __future__ import annotations

import functools
import os
import sys
import weakref
from collections.abc import Iterator

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from train.data import grain_processes, image_ops
from train.data.image_folder import DataError, check_num_classes
from train.data.image_ops import Transform
from train.data.sources import RandomAccessSource, class_names_of, source_name
from train.data.stream_order import EvalExample, TrainExample, read_example

# Grain datasets need a length; training positions are unbounded, so the stream is this long.
_ENDLESS = sys.maxsize // 2


def _check_local_rows(sharding: NamedSharding, batch_size: int, process_index: int) -> None:
    """Raises unless this process's devices hold rows [p * B / P, (p + 1) * B / P) of a batch."""
    slices = sharding.addressable_devices_indices_map((batch_size,)).values()
    rows = sorted({i for (s,) in slices for i in range(*s.indices(batch_size))})
    local = batch_size // jax.process_count()
    if rows != list(range(process_index * local, (process_index + 1) * local)):
        raise ValueError(
            "the mesh must list each process's devices together, in process order (as jax.devices() "
            f"does): process {process_index} holds rows {rows[0]}..{rows[-1]} of the batch"
        )


class _Batches(Iterator):
    """A grain iterator that close() releases at once, and whose data errors are one plain line.

    grain's iterators also close in __del__, which fails noisily if they live until interpreter
    shutdown; dropping the reference on close lets them go while their modules still exist.
    """

    def __init__(self, it: Iterator):
        self._it = it

    def __next__(self):
        if self._it is None:
            raise StopIteration
        try:
            return next(self._it)
        except StopIteration:  # an exhausted eval pass releases its workers now, not at close()
            self.close()
            raise
        except DataError as e:
            # Raised in a reading thread or worker process (grain passes the type through): the same
            # one-line message, without grain's notes and frames.
            self.close()
            raise DataError(str(e)) from None

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None:
            it.close()


def _close_all(iterators: list) -> None:
    while iterators:
        iterators.pop().close()
    grain_processes.release_shared_memory()


class StreamingPipeline:
    """Training and eval batches streamed from a random-access source; see the module docstring.

    Attributes:
      num_train_examples: size of the training source.
      steps_per_epoch: num_train_examples // batch_size.
      image_shape: (H, W, 3) of the images that reach the devices.
      num_classes: the number of classes.
      class_names: the class names, if the source knows them.
      preprocess: the checkpoint's preprocess spec: per-channel mean/std normalisation.
      device_augment: False: batches arrive augmented, so the train step must not augment again.
    """

    device_augment = False
    resize_to = 0  # the host transforms output image_size already

    def __init__(
        self,
        train_source: RandomAccessSource,
        eval_source: RandomAccessSource,
        *,
        mesh: Mesh,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        train_transform: str = "random_resized_crop",
        eval_transform: str = "resize_shorter_center_crop",
        image_size: int = 224,
        num_workers: int = 0,
        prefetch: int = 2,
        read_threads: int = 2,
        num_classes: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        std: tuple[float, ...] = (0.229, 0.224, 0.225),
        pad: int = 4,
        crop_pct: float = 0.875,
        interpolation: str = "bilinear",
    ):
        """Checks the arguments and sizes; starts nothing (iterators start workers when asked).

        Args:
          train_source, eval_source: random-access sources (ImageFolder, tfds.data_source, ...).
          mesh: the device mesh; batches are sharded over its 'data' axis.
          batch_size, eval_batch_size: global batch sizes, multiples of the mesh's device count.
          seed: fixes the example order of every epoch and every augmentation.
          train_transform, eval_transform: names from TRANSFORMS.
          image_size: output side of the sized transforms.
          num_workers: grain worker processes per host decoding batches; 0 decodes in this process.
          prefetch: global batches kept transferred to the devices ahead of the step.
          read_threads: batches each process (worker or this one) builds at once, in threads.
          num_classes: the model's classes; checked against the source's class names if both known.
          process_index, process_count: this host and the host count (default: JAX's); injectable so
            a test on one process can build each host's share.
          mean, std: per-channel normalisation in [0, 1] units, applied in the jitted step (default
            ImageNet's); recorded in `preprocess`.
          pad: zero padding of 'pad_crop_flip'.
          crop_pct: 'resize_shorter_center_crop': the crop's share of the resized shorter side.
          interpolation: the resize filter of the sized transforms ('bilinear' or 'bicubic').

        Raises:
          ValueError: a batch size that does not divide evenly, or fewer examples than one batch.
          DataError: num_classes differs from the source's classes, or neither is known.
        """
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        for what, n in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if n <= 0 or n % mesh.devices.size or n % self.process_count:
                raise ValueError(
                    f"{what}={n} must be a positive multiple of the {mesh.devices.size} devices "
                    f"and of the {self.process_count} processes"
                )
        if len(train_source) < batch_size:
            raise ValueError(f"{len(train_source)} training examples are fewer than batch_size={batch_size}")
        self.mesh, self.batch_size, self.eval_batch_size, self.seed = mesh, batch_size, eval_batch_size, seed
        self.train_source, self.eval_source = train_source, eval_source
        resizing = dict(crop_pct=crop_pct, interpolation=interpolation)
        self.train_transform = Transform(train_transform, image_size, pad=pad, **resizing)
        self.eval_transform = Transform(eval_transform, image_size, **resizing)
        # The checkpoint records timm's centre-crop view, so make_predict_fn resizes as the eval did.
        centre_crop = self.eval_transform.name == "resize_shorter_center_crop"
        self.eval_view = resizing if centre_crop else {}
        self.num_workers, self.prefetch, self.read_threads = num_workers, prefetch, read_threads
        self.preprocess = {
            "kind": "mean_std",
            "mean": [float(m) for m in mean],
            "std": [float(v) for v in std],
        }
        self.num_train_examples = len(train_source)
        self.steps_per_epoch = self.num_train_examples // batch_size
        self.class_names = class_names_of(train_source)
        if self.class_names is not None and num_classes is not None:
            check_num_classes(self.class_names, num_classes, source_name(train_source))
        if self.class_names is None and num_classes is None:
            raise DataError(f"{source_name(train_source)} has no class names: pass num_classes")
        self.num_classes = num_classes if num_classes is not None else len(self.class_names)
        self.image_shape = self._output_shape(train_source, self.train_transform)
        eval_shape = self._output_shape(eval_source, self.eval_transform)
        if eval_shape != self.image_shape:
            raise ValueError(
                f"train images {self.image_shape} and eval images {eval_shape} differ in shape: "
                "choose transforms that give one size"
            )
        self._iterators: list = []
        # Closes worker processes at interpreter exit if close() was not called (no leaked shm).
        self._finalizer = weakref.finalize(self, _close_all, self._iterators)

    @staticmethod
    def _output_shape(source: RandomAccessSource, transform: Transform) -> tuple[int, int, int]:
        if transform.name in ("none", "pad_crop_flip"):  # keeps the source's size: decode one to see it
            image, _ = read_example(source, source_name(source), 0, transform, image_ops.example_rng(0, 0))
            return tuple(image.shape)
        return (transform.size, transform.size, 3)

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.process_count

    @property
    def local_eval_batch_size(self) -> int:
        return self.eval_batch_size // self.process_count

    def _iterate(self, ds: grain.MapDataset) -> grain.IterDataset:
        ds = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=self.read_threads, prefetch_buffer_size=self.read_threads)
        )
        if self.num_workers > 0:
            grain_processes.ensure_absl_flags_parsed()
            ds = ds.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self.num_workers),
                worker_init_fn=functools.partial(grain_processes.worker_init, os.getpid()),
            )
        return ds

    def local_train_batches(self, start_step: int = 0) -> grain.IterDataset:
        """This process's rows of training batches start_step, start_step + 1, ... as numpy dicts
        {'image': uint8 [B / P, H, W, 3], 'label': int32 [B / P]}."""
        example = TrainExample(
            self.train_source,
            source_name(self.train_source),
            self.train_transform,
            self.seed,
            self.batch_size,
            self.local_batch_size,
            self.process_index,
            self.steps_per_epoch * self.batch_size,
        )
        ds = grain.MapDataset.range(_ENDLESS).map(example).batch(self.local_batch_size, drop_remainder=True)
        return self._iterate(ds[start_step:])

    def local_eval_batches(self, split: str = "eval") -> grain.IterDataset:
        """This process's rows of each eval batch: numpy {'image', 'label', 'mask'}, [Be / P, ...].

        split 'train' reads the training source in file order through its (non-random) train transform.
        """
        source, transform = (self.train_source, self.train_transform) if split == "train" else (
            self.eval_source, self.eval_transform)  # fmt: skip
        example = EvalExample(
            source,
            source_name(source),
            transform,
            self.eval_batch_size,
            self.local_eval_batch_size,
            self.process_index,
            self.image_shape,
        )
        steps = -(-len(source) // self.eval_batch_size)
        ds = grain.MapDataset.range(steps * self.local_eval_batch_size).map(example)
        return self._iterate(ds.batch(self.local_eval_batch_size, drop_remainder=True))

    def _to_devices(self, ds: grain.IterDataset, spec: PartitionSpec, lead_axis: bool) -> Iterator:
        if (self.process_index, self.process_count) != (jax.process_index(), jax.process_count()):
            raise ValueError("device batches need the real process_index and process_count")
        sharding = NamedSharding(self.mesh, spec)
        rows = NamedSharding(self.mesh, PartitionSpec("data"))
        _check_local_rows(rows, self.batch_size, self.process_index)

        def put(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
            out = {}
            for k, v in batch.items():
                # Explicit global shape: the rows of all processes, stacked along the batch axis.
                shape = (v.shape[0] * self.process_count, *v.shape[1:])
                local, shape = (v[None], (1, *shape)) if lead_axis else (v, shape)
                out[k] = jax.make_array_from_process_local_data(sharding, local, shape)
            return out

        ds = grain.experimental.ThreadPrefetchIterDataset(ds.map(put), prefetch_buffer_size=self.prefetch)
        it = _Batches(iter(ds))
        self._iterators.append(it)
        return it

    def train_inputs(self, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
        """Global training batches {'image': uint8 [B, H, W, 3], 'label': int32 [B]}, sharded over
        'data', for steps start_step, start_step + 1, ... (endless)."""
        return self._to_devices(self.local_train_batches(start_step), PartitionSpec("data"), False)

    def device_batch(self, inputs: dict[str, jax.Array], step: jax.Array) -> dict[str, jax.Array]:
        """Inside the jitted step: the batch itself (train_inputs already yields batch `step`)."""
        del step
        return inputs

    def eval_inputs(self, split: str = "eval") -> Iterator[dict[str, jax.Array]]:
        """The eval split (or 'train', see local_eval_batches) exactly once: {'image': uint8 [1, Be, H, W,
        3], 'label': int32 [1, Be], 'mask': float32 [1, Be]}, batch axis sharded over 'data'; padding
        rows have mask 0."""
        return self._to_devices(self.local_eval_batches(split), PartitionSpec(None, "data"), True)

    def close(self) -> None:
        """Stops every iterator this pipeline handed out (threads and worker processes)."""
        _close_all(self._iterators)

    def __enter__(self) -> StreamingPipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
