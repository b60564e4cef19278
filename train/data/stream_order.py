"""Which example each position of the streaming pipeline holds: its order and augmentation, from the seed.

Training batch `s` is a pure function of (seed, s): global position q = s * B + row is example
`shuffle_e(q - e * E)` of epoch e = q // E (E = steps_per_epoch * B; the last partial batch of each
epoch is dropped), where shuffle_e is grain's index shuffle (the one `MapDataset.shuffle` uses) seeded
by (seed, e). The example's augmentation draws from `example_rng(seed, q)`. So a run resumed at any
step sees exactly the batches an uninterrupted run would, with no iterator state to checkpoint, and
the batches do not depend on the number of worker processes or hosts.

Picklable callables, so grain's worker processes can run them.
"""

from __future__ import annotations

import dataclasses
import functools

import grain
import numpy as np

from train.data import image_ops, sources
from train.data.image_ops import DataError, Transform
from train.data.sources import RandomAccessSource


@functools.lru_cache(maxsize=16)
def epoch_seed(seed: int, epoch: int) -> int:
    """The 32-bit shuffle seed of one epoch, hashed from (seed, epoch) so that no two runs share one."""
    return int(np.random.SeedSequence((seed, epoch)).generate_state(1)[0])


def read_example(
    source: RandomAccessSource, source_name: str, index: int, transform: Transform, rng
) -> tuple[np.ndarray, int]:
    """(transformed image, label) of `source[index]`; errors name the file (or source[index]).

    Raises:
      DataError: the record or its image cannot be read (one line naming the file and the fix).
    """
    try:
        record = source[index]
    except DataError:
        raise
    except Exception as e:  # a damaged ArrayRecord file raises RuntimeError naming no file
        raise DataError(sources.read_error(source, index, e)) from None
    name = record.get("path") or f"{source_name}[{index}]"
    return transform(record["image"], rng, name), int(record["label"])


def train_index(position: int, *, seed: int, examples_per_epoch: int, num_examples: int) -> int:
    """The source index of global training position `position` (see the module docstring)."""
    epoch, k = divmod(position, examples_per_epoch)
    return grain.experimental.index_shuffle(
        k, max_index=num_examples - 1, seed=epoch_seed(seed, epoch), rounds=4
    )


@dataclasses.dataclass(frozen=True)
class TrainExample:
    """Local position j of this process's stream -> its training example (picklable for workers)."""

    source: RandomAccessSource
    source_name: str
    transform: Transform
    seed: int
    batch_size: int
    local_batch_size: int
    process_index: int
    examples_per_epoch: int

    def __call__(self, j: int) -> dict[str, np.ndarray]:
        step, row = divmod(j, self.local_batch_size)
        position = step * self.batch_size + self.process_index * self.local_batch_size + row
        index = train_index(
            position,
            seed=self.seed,
            examples_per_epoch=self.examples_per_epoch,
            num_examples=len(self.source),
        )
        rng = image_ops.example_rng(self.seed, position) if self.transform.random else None
        image, label = read_example(self.source, self.source_name, index, self.transform, rng)
        return {"image": image, "label": np.int32(label)}


@dataclasses.dataclass(frozen=True)
class EvalExample:
    """Local position j -> eval example in file order, or a zero image with mask 0 past the end."""

    source: RandomAccessSource
    source_name: str
    transform: Transform
    batch_size: int
    local_batch_size: int
    process_index: int
    image_shape: tuple[int, int, int]

    def __call__(self, j: int) -> dict[str, np.ndarray]:
        batch, row = divmod(j, self.local_batch_size)
        index = batch * self.batch_size + self.process_index * self.local_batch_size + row
        if index >= len(self.source):
            blank = np.zeros(self.image_shape, np.uint8)
            return {"image": blank, "label": np.int32(0), "mask": np.float32(0)}
        image, label = read_example(self.source, self.source_name, index, self.transform, None)
        return {"image": image, "label": np.int32(label), "mask": np.float32(1)}
