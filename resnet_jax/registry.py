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

_R50, _R101, _R152 = (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)


def _imagenet(stage_sizes: tuple[int, ...], block: str, **fields) -> Callable[..., ResNet]:
    widths = _IMAGENET_BASIC if block == "basic" else _IMAGENET_BOTTLENECK
    return functools.partial(ResNet, stage_sizes, widths, block=block, **fields)


def _cifar(n: int, widths: tuple[int, ...], block: str, **fields) -> Callable[..., ResNet]:
    return functools.partial(
        ResNet,
        (n,) * len(widths),
        widths,
        block=block,
        num_classes=10,
        stem_features=16,
        cifar_stem=True,
        **fields,
    )


# Each variant is a partial of ResNet; its num_classes default is the family's dataset.
_MODELS: dict[str, Callable[..., ResNet]] = {
    # torchvision's layout (He et al. 2015, stride on the 3x3 conv).
    "resnet18": _imagenet((2, 2, 2, 2), "basic"),
    "resnet34": _imagenet(_R50, "basic"),
    "resnet50": _imagenet(_R50, "bottleneck"),
    "resnet101": _imagenet(_R101, "bottleneck"),
    "resnet152": _imagenet(_R152, "bottleneck"),
    # ResNeXt (Xie et al. 2017) and Wide ResNet-50/101-2 (Zagoruyko & Komodakis 2016), torchvision's layout.
    "resnext50_32x4d": _imagenet(_R50, "bottleneck", groups=32, base_width=4),
    "resnext101_32x8d": _imagenet(_R101, "bottleneck", groups=32, base_width=8),
    "resnext101_64x4d": _imagenet(_R101, "bottleneck", groups=64, base_width=4),
    "wide_resnet50_2": _imagenet(_R50, "bottleneck", base_width=128),
    "wide_resnet101_2": _imagenet(_R101, "bottleneck", base_width=128),
}
# Pre-activation ResNet v2 (He et al. 2016) in Keras' ResNet50V2 layout: the stride on the last block of a
# stage, on its 3x3 conv; conv biases where no norm follows; Keras' BatchNorm epsilon and momentum.
_KERAS_V2 = dict(stride_block="last", conv_bias=True, bn_epsilon=1.001e-5, bn_momentum=0.99)
for _name, _sizes in (("resnet50v2", _R50), ("resnet101v2", _R101), ("resnet152v2", _R152)):
    _MODELS[_name] = _imagenet(_sizes, "preact_bottleneck", **_KERAS_V2)
# The paper's CIFAR-10 nets (section 4.2): 6n+2 layers, 16/32/64 filters, option-A shortcuts.
for _n in (3, 5, 7, 9, 18, 200):
    _MODELS[f"resnet{6 * _n + 2}"] = _cifar(_n, (16, 32, 64), "basic", shortcut="zero_pad")
# Pre-activation CIFAR nets of He et al. 2016 as in its code (fb.resnet.torch preresnet.lua and
# resnet-1k-layers): a bare 3x3 stem conv, a first block without preact, projections where the shape
# changes, the stride on a bottleneck's first 1x1 conv. 110: 6n+2 basic blocks, widths 16/32/64;
# 164 and 1001: 9n+2 bottleneck blocks, widths 64/128/256 (bottlenecks 16/32/64).
_PREACT_CIFAR = dict(shortcut="projection", preact_first_block=False, stride_in_1x1=True)
_MODELS["preact_resnet110"] = _cifar(18, (16, 32, 64), "preact_basic", **_PREACT_CIFAR)
for _n in (18, 111):
    _MODELS[f"preact_resnet{9 * _n + 2}"] = _cifar(_n, (64, 128, 256), "preact_bottleneck", **_PREACT_CIFAR)
# Wide ResNets WRN-d-k for CIFAR (Zagoruyko & Komodakis 2016): (d-4)/6 pre-activation basic blocks per stage,
# widths 16k/32k/64k, 1x1 projections where the shape changes; dropout_rate=0.3 is the paper's dropout.
for _d, _k in ((16, 8), (28, 10), (40, 4)):
    _MODELS[f"wrn{_d}_{_k}"] = _cifar((_d - 4) // 6, (16 * _k, 32 * _k, 64 * _k), "preact_basic")

# ResNet fields a registry name fixes; every other field is an option of create_model.
_ARCHITECTURE = ("stage_sizes", "stage_widths")
MODEL_FIELDS = tuple(
    f.name for f in dataclasses.fields(ResNet) if f.init and f.name not in ("parent", "name")
)
OPTIONS = tuple(f for f in MODEL_FIELDS if f not in _ARCHITECTURE)
_DTYPE_OPTIONS = ("dtype", "param_dtype")


def available_models() -> list[str]:
    """Names accepted by `create_model`: the ImageNet-size nets first, then the CIFAR nets."""
    return list(_MODELS)


def create_model(name: str, *, num_classes: int | None = None, **overrides) -> ResNet:
    """Builds a named ResNet.

    Args:
      name: one of `available_models()`: resnet18/34/50/101/152, resnext50_32x4d,
        resnext101_32x8d, resnext101_64x4d, wide_resnet50_2, wide_resnet101_2 (torchvision layout),
        resnet50v2/101v2/152v2 (Keras layout), resnet20/32/44/56/110/1202 (the 2015 paper's CIFAR
        nets), preact_resnet110/164/1001 (the 2016 paper's) or wrn16_8/wrn28_10/wrn40_4 (Wide ResNets).
      num_classes: outputs of the head; defaults to 1000 for the ImageNet nets, 10 for CIFAR.
      **overrides: any other `ResNet` field (see `OPTIONS`), e.g. dtype=jnp.bfloat16 (or 'bfloat16'),
        cifar_stem=True, shortcut='zero_pad', stride_in_1x1=True, zero_init_last_bn=True,
        bn_momentum=0.99, norm='frozen_batch' or 'group', dropout_rate=0.3.

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
