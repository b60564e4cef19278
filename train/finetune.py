"""Initialisation from a checkpoint: a pretrained backbone with a new head (fine-tuning).

With `config.init_checkpoint` set, `train_and_evaluate` makes two explicit calls here:

  resolve_config   before anything else: the checkpoint's meta (read once) gives the architecture and
                   the input normalisation; with `freeze_backbone` every BatchNorm becomes
                   'frozen_batch' (it uses and keeps its running statistics)
  initialize       on a fresh start only (a resumed run restores its own checkpoint instead): every
                   variable outside the head comes from the checkpoint (restore_matching: a shape
                   mismatch is an error listing every key)

`create_optimizer` wraps the optimiser so that a frozen backbone gets zero updates. The checkpoint may
be this project's, or one converted from torchvision or Keras weights by `python -m resnet_jax.convert`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import jax
import ml_collections
import optax

from resnet_jax.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_variables,
    read_meta,
    restore_matching,
)
from resnet_jax.preprocess import as_mean_std
from train.configuration import ConfigError

# The hidden head layer belongs to the head: a new head never inherits the checkpoint's.
HIDDEN_HEAD = "head_hidden"


@dataclasses.dataclass(frozen=True)
class InitCheckpoint:
    """The checkpoint a run starts from: its step directory and its meta (read once)."""

    step_dir: Any
    meta: dict[str, Any]


def resolve_config(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, InitCheckpoint]:
    """A copy of `config` with the model and normalisation of `config.init_checkpoint`, and that checkpoint.

    The model keeps the checkpoint's architecture (`model`, `model_kwargs`) with the config's own
    num_classes and head_hidden. The normalisation becomes the checkpoint's preprocess spec; a Keras
    ('caffe') spec becomes the equivalent RGB mean/std, and `initialize` reverses the stem's input
    channels to match, so the pipeline keeps feeding RGB.

    Raises:
      ConfigError: for a missing or unusable checkpoint, or one trained with a per-pixel mean (its
        mean image fits only its own dataset).
    """
    step = config.init_step if config.init_step >= 0 else None
    try:
        step_dir = find_checkpoint(config.init_checkpoint, step=step)
        meta = read_meta(step_dir)
    except (FileNotFoundError, CheckpointError) as e:
        raise ConfigError(f"init_checkpoint: {e}") from e
    mean, std, reverse_channels = as_mean_std(meta["preprocess"])
    if mean.ndim != 1:
        raise ConfigError(
            f"{config.init_checkpoint} was trained with a per-pixel mean image; fine-tuning needs a "
            "per-channel normalisation (train the backbone with normalization='mean_std')"
        )
    config = copy.deepcopy(config)
    config.model = meta["model"]
    drop = ("num_classes", HIDDEN_HEAD, "norm")
    kwargs = {k: v for k, v in meta["model_kwargs"].items() if k not in drop}
    if config.head_hidden:
        kwargs[HIDDEN_HEAD] = config.head_hidden
    if config.freeze_backbone:
        kwargs["norm"] = "frozen_batch"
    config.model_kwargs = ml_collections.ConfigDict(kwargs)
    config.normalization = "mean_std"
    config.mean = tuple(float(m) for m in (mean[::-1] if reverse_channels else mean))
    config.std = tuple(float(s) for s in std)
    return config, InitCheckpoint(step_dir, meta)


def head_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Top-level parameter names that start fresh: config.head_modules and the hidden head layer."""
    return tuple(dict.fromkeys((*config.head_modules, HIDDEN_HEAD)))


def create_optimizer(
    config: ml_collections.ConfigDict, tx: optax.GradientTransformation
) -> optax.GradientTransformation:
    """`tx` for the head only (zero updates elsewhere) with `freeze_backbone`; else `tx` unchanged."""
    if not config.freeze_backbone:
        return tx
    head = head_names(config)

    def labels(params):
        return {
            k: jax.tree.map(lambda _, k=k: "train" if k in head else "freeze", v) for k, v in params.items()
        }

    return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


def initialize(config: ml_collections.ConfigDict, state: Any, init: InitCheckpoint) -> Any:
    """`state` with every variable outside the head taken from the init checkpoint.

    Args:
      config: the resolved config (see `resolve_config`).
      state: a fresh train state (params, batch_stats) of the fine-tune model.
      init: the checkpoint `resolve_config` returned.

    Raises:
      ValueError: listing every mismatched, missing and unexpected key (nothing is loaded then).
    """
    source = load_variables(init.step_dir, init.meta)
    if init.meta["preprocess"]["kind"] == "caffe":
        # The pipeline feeds RGB; the Keras stem expects BGR: reverse its kernel's input channels.
        kernel = source["params"]["stem_conv"]["kernel"]
        source["params"]["stem_conv"]["kernel"] = kernel[:, :, ::-1, :]
    target = {"params": state.params, "batch_stats": state.batch_stats}
    # The hidden layer is skipped wherever it exists; a head_modules name that matches nothing is an error.
    hidden = HIDDEN_HEAD in state.params or HIDDEN_HEAD in source["params"]
    skip = tuple(n for n in head_names(config) if n != HIDDEN_HEAD or hidden)
    restored = restore_matching(target, source, skip=skip)
    return state.replace(params=restored["params"], batch_stats=restored["batch_stats"])
