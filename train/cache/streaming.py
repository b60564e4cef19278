"""Cached features of a frozen backbone for the streaming pipeline (image folders, ImageNet-style tfds).

As train/cache/memory.py does for in-memory data: the backbone runs once over each split, here in file order
through the streaming pipeline (the train split with its own transform, which must not be random: each
image's features are then the same every epoch), and the steps apply only the head. Training batch s
takes the rows the streaming pipeline would have read for step s (`stream_order.train_index`), so a cached
run trains its head on exactly the batches an uncached run sees, and resumes at any step.

The table stays on every device: [N, D] float32 (2048-wide for ResNet-50: 8 KiB an image, so 10,000
images take 80 MB and ImageNet's 1.28M would take 10.5 GB; a table over half a device's memory is not
cached, see `table.fits_on_device`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.preprocess import normalize
from train.cache.table import FeatureTable, bounded
from train.data.stream_order import train_index
from train.data.streaming import StreamingPipeline


def _extract(
    base: StreamingPipeline,
    split: str,
    model: nn.Module,
    variables: dict[str, Any],
    *,
    mean: jax.Array,
    std: jax.Array,
    mirror: bool,
    progress: bool,
) -> dict[str, jax.Array]:
    """{'features' [K, Be, D], 'features_mirrored' (if mirror), 'label', 'mask' [K, Be]} of every batch
    of `split` in file order, replicated on every device."""
    from tqdm import tqdm  # the training extra's progress bar; the library does not depend on it

    replicated = NamedSharding(base.mesh, P())

    @jax.jit
    def forward(variables, batch):
        images = batch["image"][0]
        views = {"features": images} | ({"features_mirrored": images[:, :, ::-1]} if mirror else {})
        out = {
            k: model.apply(variables, normalize(x, mean, std), train=False, return_features=True)[1]["pooled"]
            for k, x in views.items()
        }
        out |= {"label": batch["label"][0], "mask": batch["mask"][0]}
        return jax.lax.with_sharding_constraint(out, replicated)

    source = base.train_source if split == "train" else base.eval_source
    total = -(-len(source) // base.eval_batch_size)
    batches = tqdm(base.eval_inputs(split), total=total, desc=f"{split} features", disable=not progress)
    parts = list(bounded(forward(variables, batch) for batch in batches))
    return jax.tree.map(lambda *xs: jnp.stack(xs), *parts)


class StreamingFeaturePipeline(FeatureTable):
    """Cached features of a StreamingPipeline's splits (see the module docstring).

    Train inputs are the feature table and each step's row indices; batches are {'features': [B, D],
    'label': [B]}. Eval yields one stack {'features' [K, Be, D], ('features_mirrored'), 'label', 'mask'}.
    """

    device_augment = False  # the streaming pipeline's batches are never flipped on the device

    @classmethod
    def build(
        cls,
        base: StreamingPipeline,
        model: nn.Module,
        state: Any,
        *,
        mean: jax.Array,
        std: jax.Array,
        eval_hflip: bool,
        progress: bool = True,
    ) -> StreamingFeaturePipeline:
        """Runs the frozen backbone of `state` over both splits of `base` (the eval split's mirror images
        too where `eval_hflip` needs them) and keeps the features on the devices."""
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        common = dict(model=model, variables=variables, mean=mean, std=std, progress=progress)
        train = _extract(base, "train", mirror=False, **common)
        n = base.num_train_examples  # file order, padding rows last
        train = {k: train[k].reshape(-1, *train[k].shape[2:])[:n] for k in ("features", "label")}
        return cls(base, train, _extract(base, "eval", mirror=eval_hflip, **common))

    def step_indices(self, step: int) -> np.ndarray:
        """The source indices of training batch `step`, as the streaming pipeline reads them."""
        b, n = self.batch_size, self.num_train_examples
        epoch = dict(seed=self.base.seed, examples_per_epoch=self.steps_per_epoch * b, num_examples=n)
        return np.array([train_index(q, **epoch) for q in range(step * b, (step + 1) * b)], np.int32)

    def train_inputs(self, start_step: int) -> Iterator[dict[str, jax.Array]]:
        """The feature table with the row indices of steps start_step, start_step + 1, ..."""
        replicated = NamedSharding(self.base.mesh, P())
        step = start_step
        while True:
            index = self.step_indices(step)  # the same on every process: no communication
            index = jax.make_array_from_callback(index.shape, replicated, lambda i, index=index: index[i])
            yield {**self.train, "index": index}
            step += 1

    @staticmethod
    def device_batch(inputs: dict[str, jax.Array], step: jax.Array) -> dict[str, jax.Array]:
        """Inside the jitted step: the rows of this step's batch."""
        del step
        return {"features": inputs["features"][inputs["index"]], "label": inputs["label"][inputs["index"]]}
