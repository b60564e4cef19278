"""Layer factories: the conv, norm and shortcut pieces that blocks and stems are assembled from.

As in the Flax ImageNet example, a network passes its blocks module *factories* (functools.partial of a
Flax module class, or of a function that builds one) instead of settings to read off a parent. Strings
('batch', 'group', 'projection', ...) live only in the registry and checkpoint meta; `make_conv`,
`make_norm` and `SHORTCUTS` turn them into factories, so a GroupNorm or frozen-BatchNorm model is a
change of one factory.

Factory protocols (what blocks call):

  conv(features, kernel, stride=1, *, name, use_bias=None, groups=1) -> nn.Conv
      kernel x kernel conv with symmetric (kernel-1)//2 padding; use_bias None means the factory's default.
  norm(*, name, scale_init=ones) -> nn.BatchNorm | nn.GroupNorm
      train/eval behaviour is bound when the factory is made (`make_norm(..., train=...)`).
  shortcut(x, features, stride, *, conv, norm) -> jax.Array
      the shortcut where a block changes shape; norm None means no norm after a projection
      (pre-activation blocks).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any  # a Flax module class, or a functools.partial that returns a module
Dtype = Any

# 'frozen_batch': BatchNorm that always normalises with its running statistics and never updates them,
# whatever `train` says (a frozen backbone for fine-tuning; BiT's frozen BN). Same variables as 'batch'.
# 'group': GroupNorm with 32 groups (Wu & He 2018); no running statistics, so no `batch_stats`.
NORMS = ("batch", "frozen_batch", "group")
GROUP_NORM_GROUPS = 32

HE_NORMAL = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    *,
    name: str,
    use_bias: bool = False,
    groups: int = 1,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> nn.Conv:
    """A square conv with symmetric (kernel-1)//2 padding and He (fan-out) initialisation.

    Args:
      features: output channels.
      kernel: kernel height and width.
      stride: stride in both spatial dimensions.
      name: submodule name (a checkpoint key).
      use_bias: add a bias.
      groups: feature groups (ResNeXt's cardinality); input and output channels must divide by it.
      dtype: computation dtype; param_dtype: parameter dtype.
    """
    # Symmetric padding as torchvision and Keras' explicit ZeroPadding2D do; Flax's 'SAME' pads (0, 1)
    # for a stride-2 conv on even sizes and would shift every strided feature map.
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=HE_NORMAL,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def make_conv(*, use_bias: bool, dtype: Dtype, param_dtype: Dtype) -> ModuleDef:
    """The conv factory of a network: `conv` with its default bias and dtypes bound."""
    return functools.partial(conv, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype)


def make_norm(
    kind: str, *, train: bool, momentum: float, epsilon: float, dtype: Dtype, param_dtype: Dtype
) -> ModuleDef:
    """The norm factory for one call of a network.

    Args:
      kind: 'batch', 'frozen_batch' or 'group' (see NORMS).
      train: True normalises BatchNorm with batch statistics and updates them; ignored by the others.
      momentum: BatchNorm running-statistics decay (0.9 equals PyTorch's momentum=0.1).
      epsilon: added to the variance.
      dtype: computation dtype; param_dtype: parameter dtype.
    """
    common = dict(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype)
    if kind == "group":
        return functools.partial(nn.GroupNorm, num_groups=GROUP_NORM_GROUPS, **common)
    if kind not in ("batch", "frozen_batch"):
        raise ValueError(f"unknown norm {kind!r}; valid: {', '.join(NORMS)}")
    frozen = kind == "frozen_batch"
    return functools.partial(
        nn.BatchNorm, use_running_average=not train or frozen, momentum=momentum, **common
    )


def projection_shortcut(
    x: jax.Array, features: int, stride: int, *, conv: ModuleDef, norm: ModuleDef | None
) -> jax.Array:
    """Option B: a strided 1x1 conv (`shortcut_conv`), then a norm (`shortcut_bn`) unless norm is None."""
    x = conv(features, 1, stride, name="shortcut_conv")(x)
    return x if norm is None else norm(name="shortcut_bn")(x)


def zero_pad_shortcut(
    x: jax.Array, features: int, stride: int, *, conv: ModuleDef, norm: ModuleDef | None
) -> jax.Array:
    """Option A: stride-`stride` subsampling and zero channels appended; no parameters."""
    del conv, norm  # parameter-free
    x = subsample(x, stride)
    extra = features - x.shape[-1]
    if extra < 0:
        raise ValueError(f"zero_pad shortcut cannot reduce channels {x.shape[-1]} -> {features}")
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))


def subsample(x: jax.Array, stride: int) -> jax.Array:
    """Every `stride`-th pixel from the first: a 1x1 max-pool of that stride (Keras ResNetV2's shortcut)."""
    return x[:, ::stride, ::stride, :]


SHORTCUTS: dict[str, Callable[..., jax.Array]] = {
    "projection": projection_shortcut,
    "zero_pad": zero_pad_shortcut,
}
