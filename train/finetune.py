"""Fine-tuning: start training from a checkpoint's backbone with a new head (configs/finetune_*.py).

A config with `init_checkpoint` set turns `train.train_and_evaluate` into fine-tuning through three
calls it makes into this module:

  resolve_config     the model and the normalisation come from the checkpoint's meta (this project's,
                     or one converted from torchvision or Keras weights by `python -m resnet_jax.convert`)
  adapt              with `freeze_backbone`: BatchNorm runs in eval mode everywhere (no running statistic
                     changes) and only `head_modules` get updates (optax.multi_transform + set_to_zero)
  restore_backbone   on a fresh start, every variable outside `head_modules` comes from the checkpoint
                     (restore_matching: a shape mismatch is an error listing every key)

Without `freeze_backbone` everything trains, with the fine-tune config's own learning rate. Resuming a
fine-tune run works like any run (its own checkpoints replace the backbone's).

Config fields (see configs/finetune_cifar10.py): init_checkpoint (a workdir, checkpoints directory or
step directory), init_step (-1: latest), freeze_backbone, head_modules (top-level parameter names that
start fresh: ('head',)).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax

from resnet_jax.checkpoint import load_checkpoint, load_meta, restore_matching
from resnet_jax.models import ResNet
from resnet_jax.preprocess import as_mean_std
from train.train import ConfigError


class EvalModeBatchNormResNet(ResNet):
    """A ResNet whose BatchNorm layers always use (and never update) their running statistics.

    Same parameters and names as ResNet; `train` only matters to the caller's `mutable` bookkeeping.
    """

    def __call__(self, x, *, train: bool, return_features: bool = False):
        del train
        return super().__call__(x, train=False, return_features=return_features)


def _init_step(config: ml_collections.ConfigDict) -> int | None:
    step = config.get("init_step", -1)
    return None if step is None or step < 0 else step


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` with the model and normalisation of `config.init_checkpoint`.

    The model keeps the checkpoint's architecture (`model`, `model_kwargs`) with the config's own
    num_classes. The normalisation becomes the checkpoint's preprocess spec; a Keras ('caffe') spec
    becomes the equivalent RGB mean/std, and `restore_backbone` reverses the stem's input channels
    to match, so the pipeline keeps feeding RGB.

    Raises:
      ConfigError: for an unset, missing or unusable checkpoint, or one trained with a per-pixel mean
        (its mean image fits only its own dataset).
    """
    if not config.init_checkpoint:
        raise ConfigError(
            "init_checkpoint is not set: pass --config.init_checkpoint=PATH (a training workdir, a "
            "checkpoints directory, or a step directory as python -m resnet_jax.convert writes)"
        )
    try:
        meta = load_meta(config.init_checkpoint, step=_init_step(config))
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"init_checkpoint: {e}") from e
    mean, std, reverse_channels = as_mean_std(meta["preprocess"])
    if mean.ndim != 1:
        raise ConfigError(
            f"{config.init_checkpoint} was trained with a per-pixel mean image; fine-tuning needs a "
            "per-channel normalisation (train the backbone with normalization='mean_std')"
        )
    if reverse_channels:
        mean = mean[::-1]
    config = copy.deepcopy(config)
    config.model = meta["model"]
    kwargs = {k: v for k, v in meta["model_kwargs"].items() if k not in ("num_classes", "head_hidden")}
    if config.get("head_hidden", 0):  # the seed article's head: Dense(head_hidden) + ReLU + Dense
        kwargs["head_hidden"] = config.head_hidden
        if "head_hidden" not in config.head_modules:
            config.head_modules = (*config.head_modules, "head_hidden")
    config.model_kwargs = ml_collections.ConfigDict(kwargs)
    config.normalization = "mean_std"
    config.mean = tuple(float(m) for m in mean)
    config.std = tuple(float(s) for s in std)
    return config


def _labels(params: Any, head_modules: tuple[str, ...]) -> dict[str, Any]:
    """'train' for every leaf under a top-level name in head_modules, else 'freeze'."""
    return {
        k: jax.tree.map(lambda _, k=k: "train" if k in head_modules else "freeze", v)
        for k, v in params.items()
    }


def adapt(
    config: ml_collections.ConfigDict, model: nn.Module, tx: optax.GradientTransformation
) -> tuple[nn.Module, optax.GradientTransformation]:
    """The model and optimiser to train: frozen backbone (eval-mode BN, zero updates) or unchanged."""
    if not config.freeze_backbone:
        return model, tx
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.init}
    del fields["parent"], fields["name"]
    head = tuple(config.head_modules)
    frozen_tx = optax.multi_transform(
        {"train": tx, "freeze": optax.set_to_zero()}, lambda params: _labels(params, head)
    )
    return EvalModeBatchNormResNet(**fields), frozen_tx


def restore_backbone(config: ml_collections.ConfigDict, state: Any) -> Any:
    """`state` with every variable outside `config.head_modules` taken from `config.init_checkpoint`.

    Args:
      config: a resolved config (see `resolve_config`).
      state: a fresh train state (params, batch_stats) of the fine-tune model.

    Raises:
      ValueError: listing every mismatched, missing and unexpected key (nothing is loaded then).
    """
    _, source = load_checkpoint(config.init_checkpoint, step=_init_step(config))
    if load_meta(config.init_checkpoint, step=_init_step(config))["preprocess"]["kind"] == "caffe":
        # The pipeline feeds RGB; the Keras stem expects BGR: reverse its kernel's input channels.
        kernel = source["params"]["stem_conv"]["kernel"]
        source["params"]["stem_conv"]["kernel"] = kernel[:, :, ::-1, :]
    target = {"params": state.params, "batch_stats": state.batch_stats}
    restored = restore_matching(target, source, skip=tuple(config.head_modules))
    return state.replace(params=restored["params"], batch_stats=restored["batch_stats"])
