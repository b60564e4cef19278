"""A checkpoint's `meta` item: the JSON that says how to rebuild and feed its model.

{"model": registry name, "model_kwargs": create_model options (dtypes as strings),
 "preprocess": a spec from `resnet_jax.preprocess`,
 "origin": "resnet-jax" | "torchvision" | "keras" | "timm", "step": int,
 optional: "image_size": [H, W] the model is evaluated at, "class_names": [str, ...],
 "crop_pct": evaluation resizes the shorter side to floor(H / crop_pct) and crops the centre H x W, as
   timm does (`resnet_jax.resample.center_crop_resize`; square image_size); without it the whole image
   is resized to image_size (this project's CIFAR runs),
 "interpolation": "bilinear" (default) | "bicubic", the filter of that resize (only with crop_pct),
 "train_image_size": [H, W] the weights were trained at, where it differs from image_size,
 "checksums": {array path: crc32 hex} (written by every save, verified by every load),
 "eval": {"accuracy": ..., ...} the evaluation at this step, ...anything else JSON-able}

Checkpoints written before crop_pct, interpolation and train_image_size existed have none of them and
load and evaluate as before.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from resnet_jax.preprocess import short_repr, validate_preprocess
from resnet_jax.registry import OPTIONS, create_model
from resnet_jax.resample import INTERPOLATIONS

ORIGINS = ("resnet-jax", "torchvision", "keras", "timm")
REQUIRED = ("model", "model_kwargs", "preprocess", "origin", "step")
# What a model restored from a checkpoint carries besides its own fields (see model_from_meta).
CONTRACT = ("preprocess", "image_size", "class_names", "crop_pct", "interpolation")


def model_fields(model: nn.Module) -> dict[str, Any]:
    """The model's dataclass fields as JSON values (dtypes as names, sequences as lists)."""

    def encode(name: str, value: Any) -> Any:
        if name in ("dtype", "param_dtype"):
            return jnp.dtype(value).name
        return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value

    return {
        f.name: encode(f.name, getattr(model, f.name))
        for f in dataclasses.fields(model)
        if f.init and f.name not in ("parent", "name", *CONTRACT)
    }


def make_meta(
    model_name: str,
    model: nn.Module,
    *,
    preprocess: Mapping[str, Any],
    origin: str,
    step: int,
    **extra: Any,
) -> dict[str, Any]:
    """Builds a checkpoint's `meta` for a model made by `create_model(model_name, ...)`.

    Args:
      model_name: the registry name the model was built from (e.g. 'resnet50').
      model: the model; every option that differs from the registry default goes into model_kwargs
        (num_classes always does).
      preprocess: the preprocess spec its training used (see `resnet_jax.preprocess`).
      origin: 'resnet-jax', 'torchvision', 'keras' or 'timm'.
      step: the training step (0 for converted weights).
      **extra: any other JSON-able entries (image_size, class_names, crop_pct, interpolation,
        train_image_size, dataset, eval, ...).

    Raises:
      ValueError: if the model cannot be rebuilt from `model_name` plus options, or for a bad spec.
    """
    fields = model_fields(model)
    reference = model_fields(create_model(model_name))
    kwargs = {
        f: fields[f] for f in OPTIONS if f in fields and (f == "num_classes" or fields[f] != reference[f])
    }
    meta = {
        "model": model_name,
        "model_kwargs": kwargs,
        "preprocess": dict(preprocess),
        "origin": origin,
        "step": int(step),
        **extra,
    }
    validate_meta(meta)
    rebuilt = model_fields(model_from_meta(meta))
    differ = [f for f in fields if rebuilt.get(f) != fields[f]]
    if differ:
        raise ValueError(
            f"model is not a {model_name} (differs in {', '.join(differ)}); pass its registry name"
        )
    return meta


def validate_meta(meta: Mapping[str, Any]) -> None:
    """Checks a checkpoint's meta against the contract (see the module docstring).

    Raises:
      ValueError: naming each missing or malformed entry.
    """
    if not isinstance(meta, Mapping):
        raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
    problems = [f"missing {key!r}" for key in REQUIRED if key not in meta]
    if "model_kwargs" in meta and not isinstance(meta["model_kwargs"], Mapping):
        problems.append(f"'model_kwargs' must be a dict, got {meta['model_kwargs']!r}")
    if "origin" in meta and meta["origin"] not in ORIGINS:
        problems.append(f"'origin' must be one of {ORIGINS}, got {meta['origin']!r}")
    if "step" in meta and (not isinstance(meta["step"], int | np.integer) or isinstance(meta["step"], bool)):
        problems.append(f"'step' must be an int, got {meta['step']!r}")
    for key in ("image_size", "train_image_size"):
        size = meta.get(key)
        if size is not None and not _is_size(size):
            problems.append(f"{key!r} must be [height, width] in pixels, got {size!r}")
    crop_pct = meta.get("crop_pct")
    if crop_pct is not None:
        if isinstance(crop_pct, bool) or not isinstance(crop_pct, int | float) or not 0 < crop_pct <= 1:
            problems.append(f"'crop_pct' must be a number in (0, 1], got {crop_pct!r}")
        size = meta.get("image_size")
        if not (_is_size(size) and size[0] == size[1]):
            problems.append(f"'crop_pct' needs a square 'image_size' (the crop), got {size!r}")
    interpolation = meta.get("interpolation")
    if interpolation is not None and (interpolation not in INTERPOLATIONS or crop_pct is None):
        problems.append(
            f"'interpolation' must be one of {INTERPOLATIONS}, given with 'crop_pct', got {interpolation!r}"
        )
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, Sequence) and all(isinstance(n, str) for n in names)):
        problems.append(f"'class_names' must be a list of strings, got {names!r}")
    if problems:
        raise ValueError(f"bad checkpoint meta ({'; '.join(problems)}): {short_repr(dict(meta), 300)}")
    validate_preprocess(meta["preprocess"])


def _is_size(size: Any) -> bool:
    return isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)


@functools.cache
def _pretrained_class(cls: type[nn.Module]) -> type[nn.Module]:
    # A subclass per model class, so that any registry model carries its checkpoint's input contract.
    return type(
        f"Pretrained{cls.__name__}",
        (cls,),
        {
            "__annotations__": dict.fromkeys(CONTRACT, Any),
            **dict.fromkeys(CONTRACT),
            "__doc__": f"{cls.__name__} restored from a checkpoint, with its preprocess spec, image size, "
            "class names and evaluation resize (see resnet_jax.checkpoint.model_from_meta).",
        },
    )


def model_from_meta(meta: Mapping[str, Any]) -> nn.Module:
    """The model a checkpoint's meta describes: create_model(meta['model'], **meta['model_kwargs']).

    The result carries the checkpoint's input contract as attributes: `preprocess` (the spec, frozen),
    `image_size` ((H, W) or None), `class_names` (tuple or None), `crop_pct` (float or None: the whole
    image is resized) and `interpolation` ('bilinear' or 'bicubic'; None without crop_pct);
    `make_predict_fn` uses them.
    """
    validate_meta(meta)
    base = create_model(meta["model"], **meta["model_kwargs"])
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
    del fields["parent"], fields["name"]
    size = meta.get("image_size")
    names = meta.get("class_names")
    return _pretrained_class(type(base))(
        **fields,
        preprocess=flax.core.FrozenDict(validate_preprocess(meta["preprocess"])),
        image_size=tuple(size) if size else None,
        class_names=tuple(names) if names else None,
        crop_pct=float(meta["crop_pct"]) if meta.get("crop_pct") is not None else None,
        interpolation=(meta.get("interpolation") or "bilinear") if meta.get("crop_pct") is not None else None,
    )
