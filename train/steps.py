"""The pure step functions and the state they advance: one training step, one evaluation step, the mesh.

`train_step` and `eval_step` work on uint8 image batches; `head_train_step` and `head_eval_step` are their
counterparts over cached pooled features of a frozen backbone (train/cache/). Every function here is
pure (state in, state out) and is compiled by train/programs.py; nothing here reads the config.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh

from resnet_jax.preprocess import normalize, resize_images
from train.data.memory import augment, flip_mask


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the BatchNorm running statistics."""

    batch_stats: Any


def create_train_state(
    rng: jax.Array, model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...]
) -> TrainState:
    """Initialises the model's variables for images of `image_shape` (H, W, C) and the optimiser state."""
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats=variables.get("batch_stats", {})
    )


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh with axis 'data' over `devices` (default: every device of every process)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy on float32 logits, with optional label smoothing."""
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    mean: jax.Array,
    std: jax.Array,
    pad: int = 4,
    flip: bool = True,
    label_smoothing: float = 0.0,
    image_size: int = 0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a batch of uint8 images: augment, normalise, forward, backward, update.

    Args:
      state: the train state (params, batch_stats, opt_state, step).
      batch: {'image': uint8 [B, H, W, C], 'label': int [B]}.
      rng: this step's key: augmentation, and dropout for models that have it.
      mean, std: normalisation, broadcastable to [H, W, C], in [0, 1] units.
      pad, flip: on-device augmentation (train.data.memory.augment); 0 and False when the host
        pipeline augments.
      label_smoothing: applied to the training loss.
      image_size: >0: resize the augmented batch to this side (resnet_jax.preprocess.resize_images)
        before normalising; the pad/crop augmentation works at the stored size.

    Returns:
      (new state, {'loss': mean loss, 'accuracy': mean accuracy}) for this batch.
    """
    x = augment(batch["image"], rng, pad, flip)
    x = normalize(resize_images(x, image_size) if image_size else x, mean, std)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.fold_in(rng, 1)},  # used only by models with dropout_rate > 0
        )
        loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return state, {"loss": loss, "accuracy": accuracy}


def eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    mean: jax.Array,
    std: jax.Array,
    hflip: bool = False,
    image_size: int | tuple[int, int] = 0,
) -> dict[str, jax.Array]:
    """Sums of loss, correct predictions and examples over the unmasked part of a batch (see eval_sums).

    Args:
      batch: {'image': uint8 [B, H, W, C], 'label': int [B], 'mask': float [B] (0 on padding)}.
      hflip: also count 'correct_hflip': predictions from the mean of the softmax of each image and of
        its mirror image (test-time augmentation; 'correct' stays the single-view count).
      image_size: >0: resize the batch to this side first, as train_step does.
    """
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    images = resize_images(batch["image"], image_size) if image_size else batch["image"]
    logits = state.apply_fn(variables, normalize(images, mean, std), train=False)
    mirrored = None
    if hflip:  # mirror before normalising: a per-pixel mean image is not mirror-symmetric
        mirrored = state.apply_fn(variables, normalize(images[:, :, ::-1], mean, std), train=False)
    return eval_sums(logits, batch["label"], batch["mask"], mirrored)


def eval_sums(
    logits: jax.Array, labels: jax.Array, mask: jax.Array, mirrored: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Masked sums over a batch: 'loss', 'correct', 'correct_top5' (the label among the 5 highest logits;
    every example when there are 5 classes or fewer) and 'count'; with the mirror images' logits also
    'correct_hflip' (the prediction from the sum of both views' softmax)."""
    k = min(5, logits.shape[-1])
    top5 = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1)
    sums = {
        "loss": jnp.sum(cross_entropy(logits, labels) * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
        "correct_top5": jnp.sum(top5 * mask),
        "count": jnp.sum(mask),
    }
    if mirrored is not None:
        probs = jax.nn.softmax(logits) + jax.nn.softmax(mirrored)
        sums["correct_hflip"] = jnp.sum((jnp.argmax(probs, -1) == labels) * mask)
    return sums


def head_params(state: TrainState) -> dict[str, Any]:
    """The parameters a cached-feature step trains: the head and its hidden layer."""
    return {k: state.params[k] for k in ("head_hidden", "head") if k in state.params}


def head_train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    head: nn.Module,
    flip: bool,
    label_smoothing: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """train_step for cached features: the head alone forward and backward, the whole state updated.

    Args:
      state: the whole model's train state; its backbone gets zero gradients (and, frozen, zero updates).
      batch: {'features', 'label'} and, with `flip`, 'features_mirrored'.
      rng: this step's key; with `flip` each example takes its mirrored features where train_step's
        augmentation would have mirrored its image (the same draw: train.data.memory.flip_mask).
      head: `model.head_module()`.
    """
    features = batch["features"]
    if flip:
        mirrored = flip_mask(rng, features.shape[0])[:, None]
        features = jnp.where(mirrored, batch["features_mirrored"], features)

    def loss_fn(params):
        logits = head.apply({"params": params}, features)
        return cross_entropy(logits, batch["label"], label_smoothing).mean(), logits

    (loss, logits), head_grads = jax.value_and_grad(loss_fn, has_aux=True)(head_params(state))
    # Zero gradients for the backbone keep the optimiser state the whole model's (checkpoints, resume).
    grads = {k: head_grads.get(k, jax.tree.map(jnp.zeros_like, v)) for k, v in state.params.items()}
    state = state.apply_gradients(grads=grads)
    return state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


def head_eval_step(
    state: TrainState, batch: dict[str, jax.Array], *, head: nn.Module, hflip: bool = False
) -> dict[str, jax.Array]:
    """eval_step for cached features: the same sums, from the head applied to the features."""
    params = {"params": head_params(state)}
    logits = head.apply(params, batch["features"])
    mirrored = head.apply(params, batch["features_mirrored"]) if hflip else None
    return eval_sums(logits, batch["label"], batch["mask"], mirrored)
