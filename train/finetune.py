"""Initialisation from a checkpoint: a pretrained backbone with a new head (fine-tuning).

With `config.init_checkpoint` set, `train_and_evaluate` makes two explicit calls here:

  resolve_config   before anything else: the checkpoint's meta (read once) gives the architecture and
                   the input normalisation, and the fine-tune policy (train.policy.FineTune) is decided;
                   the BatchNorms of the frozen part use and keep their running statistics
  initialize       on a fresh start only (a resumed run restores its own checkpoint instead): every
                   variable outside the head comes from the checkpoint (restore_matching: a shape
                   mismatch is an error listing every key)

`wrap_optimizer` wraps the optimiser so that frozen parameters get zero updates and the rest of the
backbone trains at `backbone_lr_multiplier` times the head's rate. The checkpoint may
be this project's, one converted from torchvision or Keras weights by `python -m resnet_jax.convert`, or
pretrained weights from the Hugging Face Hub: `init_checkpoint=hub:resnet50.tv_in1k` (resnet_jax.hub).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import jax
import ml_collections
import optax

import resnet_jax
from resnet_jax import hub
from resnet_jax.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_variables,
    read_meta,
    restore_matching,
)
from resnet_jax.models import freeze_points
from resnet_jax.preprocess import as_mean_std
from train.configuration import ConfigError
from train.policy import HIDDEN_HEAD, FineTune

# init_checkpoint=hub:NAME starts from pretrained weights of resnet_jax.hub (e.g. hub:resnet50.tv_in1k).
HUB_PREFIX = "hub:"


@dataclasses.dataclass(frozen=True)
class InitCheckpoint:
    """The weights a run starts from, and their meta (read once).

    Attributes:
      source: config.init_checkpoint as given (a path, or hub:NAME).
      meta: the checkpoint meta (resnet_jax.checkpoint.make_meta's schema).
      step_dir: the checkpoint's step directory; None for pretrained weights.
      pretrained: hub:NAME's variables, on the host; None for a checkpoint directory.
    """

    source: str
    meta: dict[str, Any]
    step_dir: Any = None
    pretrained: dict[str, Any] | None = None

    @classmethod
    def open(cls, source: str, step: int | None = None) -> InitCheckpoint:
        """Reads the meta of a checkpoint directory (its `step`, default the latest), or downloads (once,
        into the Hugging Face cache) and reads pretrained weights `hub:NAME`.

        Raises:
          CheckpointError: a missing or unusable checkpoint; an unknown name, or one that is neither
            cached nor downloadable (resnet_jax.hub.PretrainedError, a CheckpointError).
          FileNotFoundError, ValueError: a path that holds no checkpoint.
        """
        if source.startswith(HUB_PREFIX):
            _, variables, meta = hub.load(source.removeprefix(HUB_PREFIX))
            return cls(source, meta, pretrained=variables)
        step_dir = find_checkpoint(source, step=step)
        return cls(source, read_meta(step_dir), step_dir=step_dir)

    def variables(self, sharding: jax.sharding.Sharding) -> dict[str, Any]:
        """{'params', 'batch_stats'} on `sharding` (replicated over the mesh), checksums verified."""
        if self.step_dir is not None:
            return load_variables(self.step_dir, self.meta, sharding=sharding)
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), self.pretrained)


def resolve_config(
    config: ml_collections.ConfigDict,
) -> tuple[ml_collections.ConfigDict, InitCheckpoint, FineTune]:
    """A copy of `config` with the model and normalisation of `config.init_checkpoint`, that checkpoint,
    and the run's fine-tune policy.

    The model keeps the checkpoint's architecture (`model`, `model_kwargs`) with the config's own
    num_classes and head_hidden. The normalisation becomes the checkpoint's preprocess spec; a Keras
    ('caffe') spec becomes the equivalent RGB mean/std, and `initialize` reverses the stem's input
    channels to match, so the pipeline keeps feeding RGB.

    Raises:
      ConfigError: for a missing or unusable checkpoint, or one trained with a per-pixel mean (its
        mean image fits only its own dataset).
    """
    if config.head_hidden < 0:  # checked here too: it sizes the model built below, before validate_config
        raise ConfigError(f"head_hidden={config.head_hidden} must be >= 0 (0: no hidden layer)")
    step = config.init_step if config.init_step >= 0 else None
    try:
        init = InitCheckpoint.open(config.init_checkpoint, step)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        raise ConfigError(f"init_checkpoint: {e}") from e
    meta = init.meta
    if config.model and config.model != meta["model"]:
        raise ConfigError(
            f"model={config.model!r} but init_checkpoint {config.init_checkpoint} holds a {meta['model']}: "
            f"fine-tuning keeps the checkpoint's architecture, so pass --config.model={meta['model']} or "
            "--config.model='' (the fine-tune configs leave it empty)"
        )
    mean, std, reverse_channels = as_mean_std(meta["preprocess"])
    if mean.ndim != 1:
        raise ConfigError(
            f"{config.init_checkpoint} was trained with a per-pixel mean image; fine-tuning needs a "
            "per-channel normalisation (train the backbone with normalization='mean_std')"
        )
    config = copy.deepcopy(config)
    config.model = meta["model"]
    drop = ("num_classes", HIDDEN_HEAD, "norm", "norm_frozen_up_to")
    kwargs = {k: v for k, v in meta["model_kwargs"].items() if k not in drop}
    if config.head_hidden:
        kwargs[HIDDEN_HEAD] = config.head_hidden
    policy = FineTune.from_config(config)
    frozen = policy.frozen
    points = freeze_points(len(resnet_jax.create_model(meta["model"], **kwargs).stage_sizes))
    if frozen not in points:
        raise ConfigError(
            f"freeze_up_to={frozen!r} is not a part of {meta['model']} ({len(points) - 3} stages): choose "
            f"one of {', '.join(points)}"
        )
    # BatchNorm is rebuilt from what is frozen now (the checkpoint may come from a frozen run); GroupNorm
    # keeps no statistics, so the optimizer's zero updates alone freeze it.
    if meta["model_kwargs"].get("norm") == "group":
        kwargs["norm"] = "group"
    elif frozen == "all":
        kwargs["norm"] = "frozen_batch"
    elif frozen != "none":
        kwargs["norm_frozen_up_to"] = frozen
    config.model_kwargs = ml_collections.ConfigDict(kwargs)
    config.normalization = "mean_std"
    config.mean = tuple(float(m) for m in (mean[::-1] if reverse_channels else mean))
    config.std = tuple(float(s) for s in std)
    # Pretrained weights record the view they were evaluated with (timm's crop_pct and filter).
    config.crop_pct = config.crop_pct or meta.get("crop_pct", 0.0)
    config.interpolation = config.interpolation or meta.get("interpolation", "")
    return config, init, policy


def wrap_optimizer(
    config: ml_collections.ConfigDict, policy: FineTune, tx: optax.GradientTransformation
) -> optax.GradientTransformation:
    """`tx` with zero updates for the frozen part and the backbone's rate scaled; else `tx` unchanged.

    The head (policy.head) trains with `tx`; frozen parameters (policy.frozen) get zero updates; the
    rest of the backbone gets `tx`'s updates times `backbone_lr_multiplier` (for SGD with momentum, and
    for any optimiser whose update is linear in the rate, the same as a learning rate that much smaller).

    Args:
      config: the resolved config (its model).
      policy: the run's fine-tune policy (resolve_config's).
      tx: the optimiser for the head.
    """
    frozen, multiplier, head = policy.frozen, policy.backbone_lr_multiplier, policy.head
    if frozen == "none" and multiplier == 1.0:
        return tx
    points = freeze_points(len(resnet_jax.create_model(config.model, **config.model_kwargs).stage_sizes))
    through = points.index(frozen) - 1  # parts 0 (stem) .. through are frozen

    def label(name: str) -> str:
        if name in head:
            return "train"  # the head's label since before partial freezing: old opt_states still restore
        return "freeze" if part_of(name, len(points) - 3) <= through else "backbone"

    def labels(params):
        return {k: jax.tree.map(lambda _, k=k: label(k), v) for k, v in params.items()}

    transforms = {"train": tx, "freeze": optax.set_to_zero()}
    if frozen != "all":
        transforms["backbone"] = tx if multiplier == 1.0 else optax.chain(tx, optax.scale(multiplier))
    return optax.multi_transform(transforms, labels)


def part_of(name: str, num_stages: int) -> int:
    """Which part of the backbone a top-level parameter name belongs to: 0 the stem, s stage s, and
    num_stages + 1 what follows the last stage (post_bn)."""
    if name.startswith("stem"):
        return 0
    if name.startswith("stage"):
        return int(name[len("stage") :].split("_")[0])
    return num_stages + 1


def initialize(policy: FineTune, state: Any, init: InitCheckpoint) -> Any:
    """`state` with every variable outside the head taken from the init checkpoint.

    Args:
      policy: the run's fine-tune policy (which parameters start fresh).
      state: a fresh train state (params, batch_stats) of the fine-tune model.
      init: the checkpoint `resolve_config` returned.

    Raises:
      ValueError: listing every mismatched, missing and unexpected key (nothing is loaded then).
    """
    # Onto the state's own (replicated) sharding: with several processes, a restore without one gives
    # each process arrays it cannot address.
    source = init.variables(jax.tree.leaves(state.params)[0].sharding)
    if init.meta["preprocess"]["kind"] == "caffe":
        # The pipeline feeds RGB; the Keras stem expects BGR: reverse its kernel's input channels.
        kernel = source["params"]["stem_conv"]["kernel"]
        source["params"]["stem_conv"]["kernel"] = kernel[:, :, ::-1, :]
    target = {"params": state.params, "batch_stats": state.batch_stats}
    # The hidden layer is skipped wherever it exists; a head_modules name that matches nothing is an error.
    hidden = HIDDEN_HEAD in state.params or HIDDEN_HEAD in source["params"]
    skip = tuple(n for n in policy.head if n != HIDDEN_HEAD or hidden)
    restored = restore_matching(target, source, skip=skip)
    # A GroupNorm model has no batch statistics: nothing of them is restored.
    return state.replace(params=restored["params"], batch_stats=restored.get("batch_stats", {}))
