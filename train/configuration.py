"""The training config: checked once before any work, and turned into the model it names.

Every field is listed (with its meaning) in configs/default.py.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import flax.linen as nn

import resnet_jax
from resnet_jax.models import min_image_size
from resnet_jax.resample import INTERPOLATIONS
from train import optim
from train.data.image_ops import SIZED_TRANSFORMS, TRANSFORMS

if TYPE_CHECKING:  # annotations only: the GPU image without ml_collections imports this module
    import ml_collections

NORMALIZATIONS = ("mean_std", "per_pixel")
PIPELINES = ("memory", "grain")
DATA_SOURCES = ("tfds", "folder")


class ConfigError(ValueError):
    """The config or the command line is invalid; the message lists every problem and the fix."""


def model_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """create_model options as JSON (dtypes as names), including num_classes: the checkpoint meta's."""
    options = dict(config.model_kwargs.to_dict())
    options["num_classes"] = config.num_classes
    if config.half_precision:
        options["dtype"] = "bfloat16"
    return options


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The ResNet `config.model` names, with `config.model_kwargs`, num_classes and dtype applied."""
    return resnet_jax.create_model(config.model, **model_options(config))


def check_workdir(workdir: str | None) -> str:
    """The absolute workdir, or ConfigError when it is empty, a file, or not writable.

    Nothing is created: the run creates it only once every other check has passed.
    """
    if not workdir or not str(workdir).strip():
        raise ConfigError("--workdir is empty: pass the run directory, e.g. --workdir=runs/resnet20")
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--workdir {path} is a file, not a directory: pass a directory")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--workdir {path} is not writable ({existing} is read-only): pass a writable directory"
        )
    return path


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Checks every field once, before any work.

    Args:
      config: the training config (fine-tuning fields already resolved, see train.finetune).
      num_devices: global device count; batch sizes must be multiples of it.

    Raises:
      ConfigError: listing every invalid field with what it must be.
    """
    errors = []

    def check(ok: bool, msg: str) -> None:
        if not ok:
            errors.append(msg)

    def one_of(field: str, choices: tuple[str, ...]) -> None:
        check(config[field] in choices, f"{field}={config[field]!r} must be one of {', '.join(choices)}")

    if config.model not in resnet_jax.available_models():
        errors.append(f"model={config.model!r} must be one of {', '.join(resnet_jax.available_models())}")
    else:
        try:
            # The stride does not depend on the head: num_classes (0 until the data is read) is left out.
            options = {k: v for k, v in model_options(config).items() if k != "num_classes"}
            smallest = min_image_size(resnet_jax.create_model(config.model, **options))
            check(
                not config.image_size or config.image_size >= smallest,
                f"image_size={config.image_size} is smaller than {config.model} takes: its total stride "
                f"is {smallest}, so pass --config.image_size>={smallest} (or 0: the dataset's own size)",
            )
        except (ValueError, TypeError) as e:
            errors.append(f"model_kwargs: {e}")
    one_of("schedule", optim.SCHEDULES)
    one_of("warmup", optim.WARMUPS)
    one_of("weight_decay_on", optim.WEIGHT_DECAY_ON)
    one_of("normalization", NORMALIZATIONS)
    for field in ("batch_size", "eval_batch_size"):
        n = config[field]
        check(
            n > 0 and n % num_devices == 0,
            f"{field}={n} must be a positive multiple of the {num_devices} devices",
        )
    check(
        config.num_train_steps > 0 or config.num_epochs > 0,
        f"set num_train_steps>0 or num_epochs>0 (got {config.num_train_steps}, {config.num_epochs})",
    )
    check(
        config.num_classes > 1 or config.num_classes == 0,
        f"num_classes={config.num_classes} must be > 1, or 0 for the data's own class count",
    )
    check(config.learning_rate > 0, f"learning_rate={config.learning_rate} must be > 0")
    check(0 <= config.momentum < 1, f"momentum={config.momentum} must be in [0, 1)")
    check(config.weight_decay >= 0, f"weight_decay={config.weight_decay} must be >= 0")
    check(0 <= config.label_smoothing < 1, f"label_smoothing={config.label_smoothing} must be in [0, 1)")
    check(config.pad >= 0, f"pad={config.pad} must be >= 0")
    check(config.warmup_steps >= 0, f"warmup_steps={config.warmup_steps} must be >= 0")
    check(
        0 < config.onecycle_pct_start < 1, f"onecycle_pct_start={config.onecycle_pct_start} must be in (0, 1)"
    )
    boundaries = list(config.lr_boundaries)
    check(
        boundaries == sorted(boundaries) and all(b > 0 for b in boundaries),
        f"lr_boundaries={config.lr_boundaries} must be increasing positive steps",
    )
    check(
        config.schedule != "piecewise" or all(b > config.warmup_steps for b in boundaries),
        f"lr_boundaries={config.lr_boundaries} must lie after warmup_steps={config.warmup_steps}",
    )
    check(len(config.mean) == 3 and len(config.std) == 3, "mean and std must have 3 values (RGB)")
    check(all(s > 0 for s in config.std), f"std={config.std} must be > 0")
    for field in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "max_steps_ahead"):
        check(config[field] >= 1, f"{field}={config[field]} must be >= 1")
    check(
        config.eval_every_steps == -1 or config.eval_every_steps > 0,
        f"eval_every_steps={config.eval_every_steps} must be > 0 or -1",
    )
    check(
        not config.freeze_backbone or bool(config.init_checkpoint),
        "init_checkpoint is not set, and freeze_backbone=True needs a backbone to freeze: pass "
        "--config.init_checkpoint=PATH (a training workdir, or what python -m resnet_jax.convert wrote)",
    )
    _check_transfer(config, check)
    _check_pipeline(config, check, one_of)
    check(config.head_hidden >= 0, f"head_hidden={config.head_hidden} must be >= 0 (0: no hidden layer)")
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _check_transfer(config: ml_collections.ConfigDict, check) -> None:
    """The fine-tuning fields that need no checkpoint to check (train.finetune checks the rest)."""
    partial = config.freeze_up_to not in ("none", "all")
    check(
        not (config.freeze_backbone and partial),
        f"freeze_backbone=True already freezes everything before the head, but freeze_up_to="
        f"{config.freeze_up_to!r}: for a partial freeze pass --config.freeze_backbone=False",
    )
    check(
        config.backbone_lr_multiplier > 0,
        f"backbone_lr_multiplier={config.backbone_lr_multiplier} must be > 0 (freeze with freeze_up_to)",
    )
    check(
        bool(config.init_checkpoint)
        or (config.freeze_up_to == "none" and config.backbone_lr_multiplier == 1.0),
        f"freeze_up_to={config.freeze_up_to!r} and backbone_lr_multiplier={config.backbone_lr_multiplier} "
        "need a pretrained backbone: pass --config.init_checkpoint=PATH",
    )


def _check_pipeline(config: ml_collections.ConfigDict, check, one_of) -> None:
    """The input-pipeline fields (pipeline, data_source, folders, image_size, transforms, workers)."""
    one_of("pipeline", PIPELINES)
    one_of("data_source", DATA_SOURCES)
    one_of("train_transform", TRANSFORMS)
    one_of("eval_transform", TRANSFORMS)
    check(config.image_size >= 0, f"image_size={config.image_size} must be >= 0 (0: the dataset's own)")
    check(config.num_workers >= 0, f"num_workers={config.num_workers} must be >= 0")
    check(0 <= config.crop_pct <= 1, f"crop_pct={config.crop_pct} must be in (0, 1], or 0 for the default")
    check(
        config.interpolation in ("", *INTERPOLATIONS),
        f"interpolation={config.interpolation!r} must be {' or '.join(INTERPOLATIONS)}, or '' (the default)",
    )
    check(config.prefetch >= 1, f"prefetch={config.prefetch} must be >= 1")
    if config.pipeline == "memory":
        check(
            config.data_source == "tfds",
            f"data_source={config.data_source!r} needs --config.pipeline=grain (memory reads tfds only)",
        )
        check(
            not (config.image_size and config.normalization == "per_pixel"),
            f"image_size={config.image_size} resizes the images, but normalization='per_pixel' subtracts a "
            "mean image of their stored size: pass --config.normalization=mean_std or --config.image_size=0",
        )
        return
    check(
        config.normalization == "mean_std",
        "normalization='per_pixel' needs the whole training set in memory: use pipeline='memory' or "
        "normalization='mean_std' with pipeline='grain'",
    )
    if config.data_source == "folder":
        for field in ("train_dir", "eval_dir"):
            check(
                bool(config[field]), f"data_source='folder' needs --config.{field}=DIR (DIR/<class>/<image>)"
            )
    for field in ("train_transform", "eval_transform"):
        check(
            config[field] not in SIZED_TRANSFORMS or config.image_size > 0,
            f"{field}={config[field]!r} needs --config.image_size>0 (the side it outputs)",
        )
