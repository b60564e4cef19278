"""What both feature caches share: bounded dispatch while building a table, and the pipeline facts they
take from the pipeline they wrap."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax

from train.data import Pipeline

# Batches of the backbone dispatched ahead of the host while building a table. Each ends in a collective
# (the features are gathered onto every device): with every batch in flight at once, XLA:CPU's
# collectives on several devices time out (40 s all-gather termination), as the training loop's own
# bound (config.max_steps_ahead) avoids for the steps.
DISPATCH_AHEAD = 2


def bounded(results: Iterable[Any], ahead: int = DISPATCH_AHEAD) -> Iterator[Any]:
    """Yields `results` (device arrays as they are dispatched), waiting for each once `ahead` newer ones
    are in flight, so at most `ahead` + 1 programs are queued at a time."""
    pending: collections.deque = collections.deque()
    for result in results:
        pending.append(result)
        if len(pending) > ahead:
            yield jax.block_until_ready(pending.popleft())
    while pending:
        yield jax.block_until_ready(pending.popleft())


class FeatureTable:
    """A pipeline over cached features of `base`'s splits (a train.data.Pipeline).

    Subclasses fill `train` (what train_inputs serves) and `eval` (the one eval stack) and say how a step
    selects its rows (device_batch). The split's facts are `base`'s.
    """

    resize_to = 0  # features, not images
    device_batch: Callable[..., dict[str, jax.Array]]

    def __init__(self, base: Pipeline, train: dict[str, jax.Array], eval_stack: dict[str, Any]):
        self.base, self.train, self.eval = base, train, eval_stack

    batch_size = property(lambda self: self.base.batch_size)
    num_train_examples = property(lambda self: self.base.num_train_examples)
    steps_per_epoch = property(lambda self: self.base.steps_per_epoch)
    image_shape = property(lambda self: self.base.image_shape)
    num_classes = property(lambda self: self.base.num_classes)
    class_names = property(lambda self: self.base.class_names)
    preprocess = property(lambda self: self.base.preprocess)
    eval_view = property(lambda self: self.base.eval_view)

    def eval_inputs(self) -> Iterator[dict[str, jax.Array]]:
        yield self.eval

    def close(self) -> None:
        self.base.close()
