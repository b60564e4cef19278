"""`create_model(name, ...)`: one registry of the named ResNet variants."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable

import jax.numpy as jnp

from resnet_jax.models import ResNet

_IMAGENET_BASIC = (64, 128, 256, 512)
_IMAGENET_BOTTLENECK = (256, 512, 1024, 2048)

# Each variant is a partial of ResNet; its num_classes default is the family's dataset.
_MODELS: dict[str, Callable[..., ResNet]] = {
    "resnet18": functools.partial(ResNet, (2, 2, 2, 2), _IMAGENET_BASIC, block="basic"),
    "resnet34": functools.partial(ResNet, (3, 4, 6, 3), _IMAGENET_BASIC, block="basic"),
    "resnet50": functools.partial(ResNet, (3, 4, 6, 3), _IMAGENET_BOTTLENECK, block="bottleneck"),
    "resnet101": functools.partial(ResNet, (3, 4, 23, 3), _IMAGENET_BOTTLENECK, block="bottleneck"),
    "resnet152": functools.partial(ResNet, (3, 8, 36, 3), _IMAGENET_BOTTLENECK, block="bottleneck"),
}
# The paper's CIFAR-10 nets (section 4.2): 6n+2 layers, 16/32/64 filters, option-A shortcuts.
for _n in (3, 5, 7, 9, 18, 200):
    _MODELS[f"resnet{6 * _n + 2}"] = functools.partial(
        ResNet,
        (_n, _n, _n),
        (16, 32, 64),
        block="basic",
        num_classes=10,
        stem_features=16,
        cifar_stem=True,
        shortcut="zero_pad",
    )

# ResNet fields a registry name fixes; every other field is an option of create_model.
_ARCHITECTURE = ("stage_sizes", "stage_widths")
MODEL_FIELDS = tuple(
    f.name for f in dataclasses.fields(ResNet) if f.init and f.name not in ("parent", "name")
)
OPTIONS = tuple(f for f in MODEL_FIELDS if f not in _ARCHITECTURE)
_DTYPE_OPTIONS = ("dtype", "param_dtype")


def available_models() -> list[str]:
    """Names accepted by `create_model`, ImageNet family first, then the CIFAR family."""
    return list(_MODELS)


def create_model(name: str, *, num_classes: int | None = None, **overrides) -> ResNet:
    """Builds a named ResNet.

    Args:
      name: one of `available_models()`: resnet18/34/50/101/152 (ImageNet layout) or
        resnet20/32/44/56/110/1202 (the paper's CIFAR layout).
      num_classes: outputs of the head; defaults to 1000 for the ImageNet family, 10 for CIFAR.
      **overrides: any other `ResNet` field (see `OPTIONS`), e.g. dtype=jnp.bfloat16 (or 'bfloat16'),
        cifar_stem=True, shortcut='zero_pad', stride_in_1x1=True, zero_init_last_bn=True,
        bn_momentum=0.99, norm='frozen_batch'.

    Raises:
      ValueError: for an unknown name, an unknown override or a bad value, naming the valid ones.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(_MODELS)}")
    unknown = sorted(set(overrides) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {name}; valid: {', '.join(OPTIONS)}")
    for field in _DTYPE_OPTIONS:
        # Checkpoint meta and configs name dtypes as strings; a bad name is left for ResNet to reject.
        if isinstance(overrides.get(field), str):
            with contextlib.suppress(TypeError):
                overrides[field] = jnp.dtype(overrides[field])
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return _MODELS[name](**overrides)
