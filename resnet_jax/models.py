"""ResNet building blocks and the network (He et al. 2015), in Flax linen.

Submodule names are checkpoint keys and the targets of weight conversion; they are part of the
public API and must stay stable:

  stem_conv, stem_bn                          the stem (7x7/2 conv + 3x3/2 max-pool, or 3x3/1 conv)
  stage{s}_block{b}/conv{i}, .../bn{i}        s = 1.., b = 0.., i = 1..2 (basic) or 1..3 (bottleneck)
  stage{s}_block{b}/shortcut_conv, .../shortcut_bn   projection shortcuts only (option B)
  head_hidden                                 optional Dense + ReLU before the head (head_hidden > 0)
  head                                        the final Dense layer
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

SHORTCUTS = ("projection", "zero_pad")
# 'frozen_batch': BatchNorm that always normalises with its running statistics and never updates them,
# whatever `train` says (a frozen backbone for fine-tuning; BiT's frozen BN). Same variables as 'batch'.
NORMS = ("batch", "frozen_batch")

Dtype = Any


def _conv(features: int, kernel: int, stride: int, name: str, block: nn.Module) -> nn.Conv:
    # Symmetric padding of (k-1)//2, as torchvision and Keras' explicit ZeroPadding2D do; Flax's
    # 'SAME' pads (0, 1) for a stride-2 conv on even sizes and would shift every strided feature map.
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=block.conv_bias,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        dtype=block.dtype,
        param_dtype=block.param_dtype,
        name=name,
    )


def _bn(block: nn.Module, train: bool, name: str, zero_scale: bool = False) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train or block.norm == "frozen_batch",
        momentum=block.bn_momentum,
        epsilon=block.bn_epsilon,
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
        dtype=block.dtype,
        param_dtype=block.param_dtype,
        name=name,
    )


class _Block(nn.Module):
    """Fields shared by both residual blocks.

    Attributes:
      features: output channels of the block.
      stride: spatial stride of the block (1, or 2 at the start of a downsampling stage).
      shortcut: 'projection' (1x1 conv + BN where shapes change; option B) or 'zero_pad'
        (stride-2 subsampling and zero channels, no parameters; option A).
      norm: 'batch' (BatchNorm) or 'frozen_batch' (BatchNorm fixed to its running statistics).
      zero_init_last_bn: start the last BN scale at zero so the block begins as the identity.
      conv_bias: give every conv a bias (Keras applications do; torchvision does not).
      bn_momentum: running-statistics decay (0.9 equals PyTorch's momentum=0.1).
      bn_epsilon: BatchNorm epsilon.
      dtype: computation dtype; param_dtype: parameter dtype.
    """

    features: int
    stride: int = 1
    shortcut: str = "projection"
    norm: str = "batch"
    zero_init_last_bn: bool = False
    conv_bias: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _shortcut(self, x: jax.Array, *, train: bool) -> jax.Array:
        if x.shape[-1] == self.features and self.stride == 1:
            return x
        if self.shortcut == "projection":
            x = _conv(self.features, 1, self.stride, "shortcut_conv", self)(x)
            return _bn(self, train, "shortcut_bn")(x)
        x = x[:, :: self.stride, :: self.stride, :]
        extra = self.features - x.shape[-1]
        if extra < 0:
            raise ValueError(f"zero_pad shortcut cannot reduce channels {x.shape[-1]} -> {self.features}")
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))


class ResidualBlock(_Block):
    """Basic block: 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, add the shortcut, ReLU."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = _conv(self.features, 3, self.stride, "conv1", self)(x)
        y = nn.relu(_bn(self, train, "bn1")(y))
        y = _conv(self.features, 3, 1, "conv2", self)(y)
        y = _bn(self, train, "bn2", zero_scale=self.zero_init_last_bn)(y)
        return nn.relu(y + self._shortcut(x, train=train))


class BottleneckBlock(_Block):
    """Bottleneck block: 1x1 conv to features/4 -> 3x3 conv -> 1x1 conv to features, each + BN.

    Attributes:
      stride_in_1x1: put the stride on the first 1x1 conv (the paper, Caffe and Keras) instead of on
        the 3x3 conv (torchvision's "ResNet v1.5", the default).
    """

    stride_in_1x1: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        width = self.features // 4
        s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
        y = _conv(width, 1, s1, "conv1", self)(x)
        y = nn.relu(_bn(self, train, "bn1")(y))
        y = _conv(width, 3, s3, "conv2", self)(y)
        y = nn.relu(_bn(self, train, "bn2")(y))
        y = _conv(self.features, 1, 1, "conv3", self)(y)
        y = _bn(self, train, "bn3", zero_scale=self.zero_init_last_bn)(y)
        return nn.relu(y + self._shortcut(x, train=train))


BLOCKS = {"basic": ResidualBlock, "bottleneck": BottleneckBlock}


class ResNet(nn.Module):
    """A ResNet for NHWC images.

    Attributes:
      stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
      stage_widths: output channels of each stage's blocks, e.g. (256, 512, 1024, 2048).
      block: 'basic' (ResidualBlock) or 'bottleneck' (BottleneckBlock).
      num_classes: outputs of the Dense head.
      stem_features: channels of the stem conv (64 for ImageNet nets, 16 for the CIFAR nets).
      cifar_stem: a 3x3 stride-1 stem conv and no max-pool (for 32x32 inputs) instead of the
        7x7 stride-2 conv and 3x3 stride-2 max-pool.
      shortcut: 'projection' (option B) or 'zero_pad' (option A), used where a block changes shape.
      norm: 'batch', or 'frozen_batch' (every BatchNorm uses and keeps its running statistics even
        with train=True: a frozen backbone).
      stride_in_1x1: bottleneck blocks only; see BottleneckBlock.
      zero_init_last_bn, conv_bias, bn_momentum, bn_epsilon: see ResidualBlock.
      head_hidden: if > 0, a Dense layer of this width + ReLU between the pooled features and the head
        (the seed article's transfer-learning head: Dense(1024) + ReLU + Dense(num_classes)).
      dtype: computation dtype (e.g. jnp.bfloat16); params, BN statistics and logits stay float32
        when param_dtype is float32.
      param_dtype: parameter dtype.
    """

    stage_sizes: Sequence[int]
    stage_widths: Sequence[int]
    block: str = "basic"
    num_classes: int = 1000
    stem_features: int = 64
    cifar_stem: bool = False
    shortcut: str = "projection"
    norm: str = "batch"
    stride_in_1x1: bool = False
    zero_init_last_bn: bool = False
    conv_bias: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    head_hidden: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        _check_config(self)
        super().__post_init__()

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool, return_features: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Logits for a batch of NHWC images.

        Args:
          x: float images, shape (batch, height, width, channels), already normalised.
          train: keyword-only and required. True normalises with batch statistics and updates the
            `batch_stats` collection (apply with mutable=['batch_stats']); False uses the running
            statistics and changes nothing.
          return_features: also return a dict of intermediate activations keyed stem, stage1, ...,
            pooled (for probing and feature extraction).

        Returns:
          float32 logits of shape (batch, num_classes), or (logits, features).
        """
        features = {}
        x = jnp.asarray(x, self.dtype)
        block_kwargs = dict(
            shortcut=self.shortcut,
            norm=self.norm,
            zero_init_last_bn=self.zero_init_last_bn,
            conv_bias=self.conv_bias,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        if self.cifar_stem:
            x = _conv(self.stem_features, 3, 1, "stem_conv", self)(x)
            x = nn.relu(_bn(self, train, "stem_bn")(x))
        else:
            x = _conv(self.stem_features, 7, 2, "stem_conv", self)(x)
            x = nn.relu(_bn(self, train, "stem_bn")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        features["stem"] = x

        block_cls = BLOCKS[self.block]
        if self.block == "bottleneck":
            block_cls = functools.partial(block_cls, stride_in_1x1=self.stride_in_1x1)
        for s, (size, width) in enumerate(zip(self.stage_sizes, self.stage_widths, strict=True)):
            for b in range(size):
                stride = 2 if s > 0 and b == 0 else 1
                x = block_cls(width, stride, name=f"stage{s + 1}_block{b}", **block_kwargs)(x, train=train)
            features[f"stage{s + 1}"] = x

        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        features["pooled"] = x
        if self.head_hidden:
            dense = nn.Dense(
                self.head_hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="head_hidden"
            )
            x = nn.relu(dense(x))
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
        logits = x.astype(jnp.float32)
        return (logits, features) if return_features else logits


def _check_config(m: ResNet) -> None:
    if not isinstance(m.num_classes, int) or isinstance(m.num_classes, bool) or m.num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {m.num_classes!r}")
    if not isinstance(m.head_hidden, int) or m.head_hidden < 0:
        raise ValueError(
            f"head_hidden must be a non-negative integer (0: no hidden layer), got {m.head_hidden!r}"
        )
    if m.shortcut not in SHORTCUTS:
        raise ValueError(f"unknown shortcut {m.shortcut!r}; valid: {', '.join(SHORTCUTS)}")
    if m.norm not in NORMS:
        raise ValueError(f"unknown norm {m.norm!r}; valid: {', '.join(NORMS)}")
    if m.block not in BLOCKS:
        raise ValueError(f"unknown block {m.block!r}; valid: {', '.join(BLOCKS)}")
    for field in ("dtype", "param_dtype"):
        value = getattr(m, field)
        try:
            floating = jnp.issubdtype(jnp.dtype(value), jnp.floating)
        except TypeError:
            floating = False
        if not floating:
            raise ValueError(f"{field} must be a floating dtype (float32, bfloat16, float16), got {value!r}")
    if len(m.stage_sizes) != len(m.stage_widths) or any(n < 1 for n in m.stage_sizes):
        raise ValueError(
            f"stage_sizes {tuple(m.stage_sizes)} and stage_widths {tuple(m.stage_widths)} must have "
            "the same length and at least one block per stage"
        )
    if not 0.0 <= m.bn_momentum < 1.0 or m.bn_epsilon <= 0:
        raise ValueError(
            f"bn_momentum must be in [0, 1) and bn_epsilon > 0, got {m.bn_momentum}, {m.bn_epsilon}"
        )
