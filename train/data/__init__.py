"""The input side of training: what the loop may rely on (`Pipeline`), the in-memory and streaming
pipelines, their sources (tfds, image folders) and the host image ops. Imports no model and no step.

Modules: `create` (the pipeline a config names), `memory` (splits held on the devices), `streaming`
(grain from disk) with `stream_order` (which example each position holds), `sources`, `image_folder`,
`tfds_data`, `image_ops` (host decode, crop, resize) and `testing` (a small fake tfds dataset).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import jax

from train.data.image_ops import DataError

__all__ = ["DataError", "Pipeline"]


class Pipeline(Protocol):
    """The training loop's view of its data: batches for a step, eval stacks, and the split's facts.

    Attributes:
      batch_size: global training batch size.
      num_train_examples: examples in the training split.
      steps_per_epoch: whole global batches per epoch (the last partial batch is dropped).
      image_shape: (H, W, C) of the images the model sees.
      num_classes, class_names: the label space (class_names None when the data names none).
      preprocess: the checkpoint's preprocess spec for these images (None for an eval-only pipeline).
      device_augment: the train step crops and flips each batch (config.pad, config.flip); False when
        batches arrive augmented from the host.
      resize_to: >0: the train and eval steps resize each batch to this side; 0: they arrive sized.
      eval_view: how eval images of another size were brought to image_shape, for the checkpoint meta
        ({'crop_pct', 'interpolation'}: timm's centre-crop view; {}: whole images, or none resized).
    """

    batch_size: int
    num_train_examples: int
    steps_per_epoch: int
    image_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...] | None
    preprocess: dict[str, Any] | None
    device_augment: bool
    resize_to: int
    eval_view: dict[str, Any]

    def train_inputs(self, start_step: int) -> Iterator[Any]:
        """What the jitted step takes as its inputs for steps start_step, start_step + 1, ... (endless).

        Its next() raises DataError (one line naming the file) when a record cannot be read.
        """
        ...

    def device_batch(self, inputs: Any, step: jax.Array) -> dict[str, jax.Array]:
        """Inside the jitted step: training batch `step` ({'image', 'label'} or features) from `inputs`."""
        ...

    def eval_inputs(self) -> Iterator[dict[str, jax.Array]]:
        """The eval split once, as stacks {..., 'label' [K, B], 'mask' [K, B]} of padded batches (its
        next() raises DataError as train_inputs' does)."""
        ...

    def close(self) -> None:
        """Stops whatever the pipeline started (threads, worker processes)."""
        ...
