"""Cached features for a frozen backbone: run it once per split, then train only the head.

With `freeze_backbone` every image gets the same pooled features every epoch (frozen BatchNorm uses
its running statistics, so train and eval mode agree), yet the uncached step runs the whole network
forward for every batch. Here the backbone runs once over each split (eval mode, batched, jitted,
with a progress bar), the pooled features stay on the devices ([N, 2048] float32 for CIFAR-10 at
ResNet-50: 400 MB), and each step applies only the head (`ResNet.head_module`) to a batch of them.

`FeaturePipeline` offers the loop the pipeline interface (train_inputs, device_batch, eval_inputs and
the split's facts) over the feature table, with batches the same pure function of (seed, step) as the
in-memory pipeline's (`input_pipeline.batch_indices`). The train state stays the whole model's, with
the backbone untouched, so checkpoints, resume, metrics and `make_predict_fn` work as in any run.

Augmentation: a random flip is served by caching the mirror image's features too (the step picks,
per example, with the same random draw `input_pipeline.augment` makes). A random crop (pad > 0)
cannot be cached, so such runs, and dropout in the backbone, fall back to the uncached step
(`should_cache` says why in one line). Streaming pipelines: see train/streaming_features.py.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.preprocess import normalize, resize_images
from train import input_pipeline, programs
from train.train import cross_entropy, eval_sums


def should_cache(config: Any, pipeline: Any, feature_width: int = 0) -> tuple[bool, str | None]:
    """Whether this run trains its head on cached features, and a one-line notice when it cannot.

    Args:
      config, pipeline: the run's.
      feature_width: width of the pooled features, for the memory check (0: not checked).

    Returns:
      (use the cache, notice): the notice is None when the cache is used or was not asked for (no
      frozen backbone, or cache_features=False).
    """
    from train.finetune import frozen_part

    if not (config.cache_features and config.init_checkpoint and frozen_part(config) == "all"):
        return False, None
    off = "--config.cache_features=False to silence this"
    in_memory = isinstance(pipeline, input_pipeline.InMemoryPipeline)
    if not in_memory and pipeline.train_transform.random:
        why = (
            f"train_transform={pipeline.train_transform.name!r} augments at random on the host (pass "
            "--config.train_transform=resize_shorter_center_crop or resize to cache)"
        )
    elif in_memory and config.pad > 0:
        why = f"pad={config.pad} crops at random and crops cannot be cached (pass --config.pad=0 to cache)"
    elif config.model_kwargs.get("dropout_rate", 0.0):
        why = "the backbone has dropout, which differs every step"
    else:
        copies = 1 + (in_memory and config.flip)  # the in-memory cache holds the mirror images' too
        fits, why = fits_on_device(pipeline.num_train_examples, feature_width, copies=copies)
        if fits:
            return True, None
    return False, f"features not cached: {why}; the whole network runs every step ({off})"


def fits_on_device(
    num_examples: int, feature_width: int, *, copies: int = 1, bytes_limit: int | None = None
) -> tuple[bool, str]:
    """Whether `copies` [num_examples, feature_width] float32 tables fit in half of a device's memory, and a
    line saying why not. bytes_limit: the device's memory; default the first device's own report (a CPU
    reports none: then it always fits)."""
    nbytes = num_examples * feature_width * 4 * copies
    limit = bytes_limit or (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    if limit and nbytes > limit // 2:
        return False, f"{nbytes / 2**30:.1f} GiB of features exceed half a device's {limit / 2**30:.1f} GiB"
    return True, ""


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
    from tqdm import tqdm

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

    parts = []
    starts = range(0, n, bs)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
        first = min(start, n - bs)  # the last batch ends at n and overlaps its predecessor
        parts.append(forward(variables, flat, first)[start - first :])
    return jnp.concatenate(parts).reshape(*lead, -1)


class FeaturePipeline:
    """The pipeline interface over cached features of an InMemoryPipeline's splits (see module doc).

    Batches are {'features': [B, D], 'label': [B]} (+ 'features_mirrored' when flips are cached).
    """

    device_augment = True
    resize_to = 0  # features, not images

    def __init__(self, base: input_pipeline.InMemoryPipeline, train: dict[str, jax.Array], eval_stack: dict):
        self.base, self.train, self.eval = base, train, eval_stack
        for name in ("batch_size", "data_key", "preprocess", "num_train_examples", "steps_per_epoch"):
            setattr(self, name, getattr(base, name))
        self.image_shape, self.num_classes, self.class_names = (
            base.image_shape,
            base.num_classes,
            base.class_names,
        )

    @classmethod
    def build(
        cls,
        base: input_pipeline.InMemoryPipeline,
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
        idx = input_pipeline.batch_indices(self.data_key, step, self.num_train_examples, self.batch_size)
        return {k: v[idx] for k, v in inputs.items()}

    def eval_inputs(self) -> Iterator[dict[str, jax.Array]]:
        yield self.eval

    def close(self) -> None:
        self.base.close()


def pooled_width(params: dict[str, Any]) -> int:
    """The width of the pooled features the head of these parameters takes."""
    return params["head_hidden" if "head_hidden" in params else "head"]["kernel"].shape[0]


def _head_params(state: Any) -> dict[str, Any]:
    return {k: state.params[k] for k in ("head_hidden", "head") if k in state.params}


def head_train_step(
    state: Any,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    head: nn.Module,
    flip: bool,
    label_smoothing: float = 0.0,
) -> tuple[Any, dict[str, jax.Array]]:
    """train_step for cached features: the head alone forward and backward, the whole state updated.

    Args:
      state: the whole model's train state; its backbone gets zero gradients (and, frozen, zero updates).
      batch: {'features', 'label'} and, with `flip`, 'features_mirrored'.
      rng: this step's key; with `flip` each example takes its mirrored features where
        input_pipeline.augment would have mirrored its image (the same draw).
      head: `model.head_module()`.
    """
    features = batch["features"]
    if flip:
        _, flip_rng = jax.random.split(rng)
        mirrored = jax.random.bernoulli(flip_rng, 0.5, (features.shape[0], 1))  # augment's draw, reshaped
        features = jnp.where(mirrored, batch["features_mirrored"], features)

    def loss_fn(params):
        logits = head.apply({"params": params}, features)
        return cross_entropy(logits, batch["label"], label_smoothing).mean(), logits

    (loss, logits), head_grads = jax.value_and_grad(loss_fn, has_aux=True)(_head_params(state))
    # Zero gradients for the backbone keep the optimiser state the whole model's (checkpoints, resume).
    grads = {k: head_grads.get(k, jax.tree.map(jnp.zeros_like, v)) for k, v in state.params.items()}
    state = state.apply_gradients(grads=grads)
    return state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


def head_eval_step(state: Any, batch: dict[str, jax.Array], *, head: nn.Module, hflip: bool = False):
    """train.eval_step for cached features: sums of loss, correct and count (and 'correct_hflip')."""
    params = {"params": _head_params(state)}
    logits = head.apply(params, batch["features"])
    mirrored = head.apply(params, batch["features_mirrored"]) if hflip else None
    return eval_sums(logits, batch["label"], batch["mask"], mirrored)


def make_eval_fn(mesh: Mesh, head: nn.Module, *, hflip: bool = False):
    """programs.make_eval_fn over head_eval_step: eval_fn(state, stack) -> sums."""
    keys = programs.SUM_KEYS + (("correct_hflip",) if hflip else ())
    return programs.make_eval_fn(functools.partial(head_eval_step, head=head, hflip=hflip), mesh, keys=keys)
