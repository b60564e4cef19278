"""Cached features for a frozen backbone: run it once per split, then train only the head.

With `freeze_backbone` every image gets the same pooled features every epoch (frozen BatchNorm uses
its running statistics, so train and eval mode agree), yet the uncached step runs the whole network
forward for every batch. Here the backbone runs once over each split (eval mode, batched, jitted,
with a progress bar), the pooled features stay on the devices ([N, 2048] float32 for CIFAR-10 at
ResNet-50: 400 MB), and each step applies only the head (`ResNet.head_module`) to a batch of them.

`FeaturePipeline` offers the loop the pipeline interface (train_inputs, device_batch, eval_inputs and
the split's facts) over the feature table, with batches the same pure function of (seed, step) as the
in-memory pipeline's (`train.data.memory.batch_indices`). The train state stays the whole model's, with
the backbone untouched, so checkpoints, resume, metrics and `make_predict_fn` work as in any run.

Augmentation: a random flip is served by caching the mirror image's features too (the step picks,
per example, with the same random draw as the image step: `train.data.memory.flip_mask`). A random
crop (pad > 0) cannot be cached, so such runs, and dropout in the backbone, fall back to the uncached step
(train/policy.py says why in one line). Streaming pipelines: see train/cache/streaming.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.preprocess import normalize, resize_images
from train.cache.table import FeatureTable, bounded
from train.data.memory import InMemoryPipeline, batch_indices


def extract(
    model: nn.Module,
    variables: dict[str, Any],
    images: jax.Array,
    *,
    batch_size: int,
    mean: jax.Array,
    std: jax.Array,
    mesh: Mesh,
    resize_to: int = 0,
    mirror: bool = False,
    progress: bool = True,
    desc: str = "features",
) -> jax.Array:
    """Pooled features [N, D] float32 of uint8 images [N, H, W, C], in eval mode, on the devices.

    Args:
      model: the whole model (its `return_features` gives 'pooled').
      variables: {'params', 'batch_stats'}.
      images: the split, as the in-memory pipeline holds it (any leading shape [..., H, W, C] is
        flattened to [N, H, W, C] and restored on the output).
      batch_size: examples per forward pass; a multiple of the device count (sharded over 'data').
      mean, std: the normalisation train_step applies.
      resize_to: >0: resize as train_step does (after the mirror, before normalising).
      mirror: features of the horizontally mirrored images (the flip augmentation's other view).
      progress: show a progress bar.
    """
    from tqdm import tqdm  # the training extra's progress bar; the library does not depend on it

    lead, (h, w, c) = images.shape[:-3], images.shape[-3:]
    flat = images.reshape(-1, h, w, c)
    n = flat.shape[0]
    bs = min(batch_size, n)

    @jax.jit
    def forward(variables, flat, start):
        x = jax.lax.dynamic_slice_in_dim(flat, start, bs)
        if bs % mesh.size == 0:  # spread the batch over the devices, as the train step does
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P("data")))
        x = x[:, :, ::-1] if mirror else x
        x = normalize(resize_images(x, resize_to) if resize_to else x, mean, std)
        _, features = model.apply(variables, x, train=False, return_features=True)
        return jax.lax.with_sharding_constraint(features["pooled"], NamedSharding(mesh, P()))

    starts = range(0, n, bs)

    def dispatched():
        for start in starts:
            first = min(start, n - bs)  # the last batch ends at n and overlaps its predecessor
            yield forward(variables, flat, first)[start - first :]

    parts = list(
        tqdm(bounded(dispatched()), total=len(starts), desc=desc, unit="batch", disable=not progress)
    )
    return jnp.concatenate(parts).reshape(*lead, -1)


class FeaturePipeline(FeatureTable):
    """Cached features of an InMemoryPipeline's splits (see the module docstring).

    Batches are {'features': [B, D], 'label': [B]} (+ 'features_mirrored' when flips are cached).
    """

    device_augment = True  # the head step draws the flips the image step would have drawn

    @classmethod
    def build(
        cls,
        base: InMemoryPipeline,
        model: nn.Module,
        state: Any,
        *,
        mean: jax.Array,
        std: jax.Array,
        mesh: Mesh,
        batch_size: int,
        flip: bool,
        eval_hflip: bool,
        progress: bool = True,
    ) -> FeaturePipeline:
        """Runs the frozen backbone of `state` over both splits of `base` (and their mirror images where
        `flip` / `eval_hflip` need them) and keeps the features on the devices."""
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        common = dict(
            batch_size=batch_size, mean=mean, std=std, mesh=mesh, resize_to=base.resize_to, progress=progress
        )

        def run(images, mirror, desc):
            return extract(model, variables, images, mirror=mirror, desc=desc, **common)

        train = {"features": run(base.train.images, False, "train features"), "label": base.train.labels}
        if flip:
            train["features_mirrored"] = run(base.train.images, True, "train features (mirrored)")
        eval_stack = {
            "features": run(base.eval.images, False, "eval features"),
            "label": base.eval.labels,
            "mask": base.eval.mask,
        }
        if eval_hflip:
            eval_stack["features_mirrored"] = run(base.eval.images, True, "eval features (mirrored)")
        return cls(base, train, eval_stack)

    def train_inputs(self, start_step: int) -> Iterator[dict[str, jax.Array]]:
        """The feature table for every step (the step selects its batch on the device)."""
        del start_step
        while True:
            yield self.train

    def device_batch(self, inputs: dict[str, jax.Array], step: jax.Array) -> dict[str, jax.Array]:
        """Inside the jitted step: the rows of batch `step`, the same rows the image pipeline selects."""
        idx = batch_indices(self.base.data_key, step, self.num_train_examples, self.batch_size)
        return {k: v[idx] for k, v in inputs.items()}
