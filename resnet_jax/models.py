"""The ResNet network in Flax linen: ResNet v1 (He et al. 2015), ResNeXt, Wide ResNet and pre-activation
ResNet v2 (He et al. 2016), as one module configured by JSON-able fields (the checkpoint meta).

Submodule names are checkpoint keys and the targets of weight conversion; they are part of the
public API and must stay stable:

  stem_conv, stem_bn                          the stem (7x7/2 conv + 3x3/2 max-pool, or 3x3/1 conv);
                                              pre-activation nets have no stem_bn
  stage{s}_block{b}/...                       s = 1.., b = 0..; see `resnet_jax.blocks` for inside
  post_bn                                     pre-activation nets: the norm (+ ReLU) before pooling
  head_hidden                                 optional Dense + ReLU before the head (head_hidden > 0)
  head                                        the final Dense layer
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import layers
from resnet_jax.blocks import (
    BLOCKS,
    PREACT_BLOCKS,
    BasicBlock,
    BottleneckBlock,
    PreActBasicBlock,
    PreActBottleneckBlock,
    ResidualBlock,
    bottleneck_width,
)
from resnet_jax.layers import NORMS

__all__ = [
    "BLOCKS",
    "NORMS",
    "SHORTCUTS",
    "STRIDE_BLOCKS",
    "BasicBlock",
    "BottleneckBlock",
    "PreActBasicBlock",
    "PreActBottleneckBlock",
    "ResNet",
    "ResNetHead",
    "ResidualBlock",
    "freeze_points",
    "min_image_size",
]

SHORTCUTS = tuple(layers.SHORTCUTS)
STRIDE_BLOCKS = ("first", "last")

Dtype = Any


class ResNet(nn.Module):
    """A ResNet for NHWC images.

    Attributes:
      stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
      stage_widths: output channels of each stage's blocks, e.g. (256, 512, 1024, 2048).
      block: 'basic', 'bottleneck' (post-activation, v1), 'preact_basic' or 'preact_bottleneck'
        (pre-activation, v2: the net then has no stem norm and ends with post_bn + ReLU).
      num_classes: outputs of the Dense head.
      stem_features: channels of the stem conv (64 for ImageNet nets, 16 for the CIFAR nets).
      cifar_stem: a 3x3 stride-1 stem conv and no max-pool (for 32x32 inputs) instead of the
        7x7 stride-2 conv and 3x3 stride-2 max-pool.
      shortcut: 'projection' (option B) or 'zero_pad' (option A), used where a block changes shape.
      norm: 'batch'; 'frozen_batch' (every BatchNorm uses and keeps its running statistics even
        with train=True: a frozen backbone); or 'group' (GroupNorm, 32 groups; no batch_stats).
      stride_in_1x1: bottleneck blocks only; see BottleneckBlock.
      groups: bottleneck blocks only: groups of the 3x3 conv (ResNeXt's cardinality).
      base_width: bottleneck blocks only: channels per group at the first stage (64; ResNeXt 32x4d: 4,
        Wide ResNet-50-2: 128); see BottleneckBlock.
      stride_block: 'first': each stage after the first downsamples in its first block (the paper,
        torchvision); 'last': each stage but the last downsamples in its last block (Keras ResNetV2).
      preact_first_block: pre-activation nets only: False skips the first block's preact_bn + ReLU (the
        2016 paper's CIFAR code, whose first block follows the bare stem conv).
      dropout_rate: basic blocks only: dropout between the two convs (Wide ResNet). With train=True
        apply needs rngs={'dropout': key}; train=False needs no rng.
      zero_init_last_bn: start each block's last norm scale at zero so it begins as the identity.
      conv_bias: biases on the convs (Keras applications): every conv in post-activation nets; in
        pre-activation nets those not followed by a norm (stem, last conv of a block, projections).
      bn_momentum: running-statistics decay (0.9 equals PyTorch's momentum=0.1).
      bn_epsilon: norm epsilon.
      head_hidden: if > 0, a Dense layer of this width + ReLU between the pooled features and the head
        (the seed article's transfer-learning head: Dense(1024) + ReLU + Dense(num_classes)).
      norm_frozen_up_to: partial fine-tuning: 'none'; 'stem'; 'stage{k}' (the stem and stages 1..k);
        or 'all' (every norm, as norm='frozen_batch'). The BatchNorms of those parts use and keep their
        running statistics even with train=True; the rest follow `norm`. Submodule names (checkpoint
        keys) do not change. See `freeze_points`.
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
    groups: int = 1
    base_width: int = 64
    stride_block: str = "first"
    preact_first_block: bool = True
    dropout_rate: float = 0.0
    zero_init_last_bn: bool = False
    conv_bias: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    head_hidden: int = 0
    norm_frozen_up_to: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        _check_config(self)
        super().__post_init__()

    @property
    def preact(self) -> bool:
        """Whether this is a pre-activation (v2) network."""
        return self.block in PREACT_BLOCKS

    def head_module(self) -> ResNetHead:
        """The head alone (head_hidden, head) as a module: applied to `pooled` features with this model's
        head parameters ({'params': {'head': ..., 'head_hidden': ...}}) it gives this model's logits."""
        return ResNetHead(
            self.num_classes, self.head_hidden, dtype=self.dtype, param_dtype=self.param_dtype, parent=None
        )

    def _frozen_through(self) -> int:
        # -1: nothing frozen; 0: the stem; k: the stem and stages 1..k; num_stages + 1: everything.
        points = freeze_points(len(self.stage_sizes))
        return points.index(self.norm_frozen_up_to) - 1

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool, return_features: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Logits for a batch of NHWC images.

        Args:
          x: float images, shape (batch, height, width, channels), already normalised.
          train: keyword-only and required. True normalises with batch statistics and updates the
            `batch_stats` collection (apply with mutable=['batch_stats']) and applies dropout (if
            dropout_rate > 0: pass rngs={'dropout': key}); False uses the running statistics and
            changes nothing.
          return_features: also return a dict of intermediate activations keyed stem, stage1, ...,
            pooled (for probing and feature extraction).

        Returns:
          float32 logits of shape (batch, num_classes), or (logits, features).
        """
        conv = layers.make_conv(use_bias=self.conv_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        norms = {
            kind: layers.make_norm(
                kind,
                train=train,
                momentum=self.bn_momentum,
                epsilon=self.bn_epsilon,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
            for kind in {self.norm, "frozen_batch" if self.norm == "batch" else self.norm}
        }
        frozen_through = self._frozen_through()

        def norm_of(part: int) -> layers.ModuleDef:  # part 0: the stem; s: stage s; num_stages + 1: post_bn
            frozen = part <= frozen_through and self.norm == "batch"
            return norms["frozen_batch" if frozen else self.norm]

        features = {}
        x = self._stem(jnp.asarray(x, self.dtype), conv, norm_of(0))
        features["stem"] = x

        for s, (size, width) in enumerate(zip(self.stage_sizes, self.stage_widths, strict=True)):
            norm = norm_of(s + 1)
            for b in range(size):
                name = f"stage{s + 1}_block{b}"
                block = self._block(name, width, self._stride(s, b), conv, norm, first=s == 0 and b == 0)
                x = block(x, train=train)
            features[f"stage{s + 1}"] = x
        if self.preact:
            x = nn.relu(norm_of(len(self.stage_sizes) + 1)(name="post_bn")(x))

        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        features["pooled"] = x
        logits = _head(self, x)
        return (logits, features) if return_features else logits

    def _stem(self, x: jax.Array, conv: layers.ModuleDef, norm: layers.ModuleDef) -> jax.Array:
        if self.cifar_stem:
            x = conv(self.stem_features, 3, 1, name="stem_conv")(x)
            return x if self.preact else nn.relu(norm(name="stem_bn")(x))
        x = conv(self.stem_features, 7, 2, name="stem_conv")(x)
        if self.preact:
            # Keras ResNetV2 zero-pads the un-normalised stem output (it can be negative) before its 3x3/2
            # max-pool; after a ReLU (v1) zero and -inf padding take the same maxima.
            x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
        x = nn.relu(norm(name="stem_bn")(x))
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    def _stride(self, stage: int, block: int) -> int:
        if self.stride_block == "first":
            return 2 if stage > 0 and block == 0 else 1
        return 2 if stage < len(self.stage_sizes) - 1 and block == self.stage_sizes[stage] - 1 else 1

    def _block(
        self,
        name: str,
        width: int,
        stride: int,
        conv: layers.ModuleDef,
        norm: layers.ModuleDef,
        *,
        first: bool,
    ) -> nn.Module:
        kwargs = dict(
            conv=conv,
            norm=norm,
            stride=stride,
            shortcut=layers.SHORTCUTS[self.shortcut],
            zero_init_last=self.zero_init_last_bn,
        )
        if self.block.endswith("bottleneck"):
            kwargs.update(groups=self.groups, base_width=self.base_width, stride_in_1x1=self.stride_in_1x1)
        else:
            kwargs.update(dropout_rate=self.dropout_rate)
        if self.preact:
            kwargs.update(preact=self.preact_first_block or not first)
        return BLOCKS[self.block](width, name=name, **kwargs)


class ResNetHead(nn.Module):
    """The head of a ResNet alone: optional Dense(head_hidden) + ReLU, then Dense(num_classes).

    Its parameters are named as in ResNet ('head_hidden', 'head'), so a ResNet's head parameters apply
    here unchanged: training a head on cached features updates the whole model's head (train/cache/memory.py).
    """

    num_classes: int
    head_hidden: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        """float32 logits [B, num_classes] from pooled features [B, D]."""
        return _head(self, pooled)


def _head(m: ResNet | ResNetHead, x: jax.Array) -> jax.Array:
    # Called inside m's compact __call__: the Dense layers become m's submodules with these names.
    if m.head_hidden:
        x = nn.relu(nn.Dense(m.head_hidden, dtype=m.dtype, param_dtype=m.param_dtype, name="head_hidden")(x))
    x = nn.Dense(m.num_classes, dtype=m.dtype, param_dtype=m.param_dtype, name="head")(x)
    return x.astype(jnp.float32)


def freeze_points(num_stages: int) -> tuple[str, ...]:
    """The values of `norm_frozen_up_to` (and the fine-tuning `freeze_up_to`) for a net of `num_stages`,
    from nothing frozen to everything: ('none', 'stem', 'stage1', ..., 'stage{num_stages}', 'all')."""
    return ("none", "stem", *(f"stage{s}" for s in range(1, num_stages + 1)), "all")


def min_image_size(model: ResNet) -> int:
    """The smallest input side `model` takes: its total stride (4 for the ImageNet stem's conv and
    max-pool, 1 for the CIFAR stem, times 2 per stage after the first).

    A smaller image still runs (padding keeps every map at least 1x1) but its last stage then sees
    padding more than pixels; Keras' ResNet50 refuses inputs under 32 px for the same reason.
    """
    return (1 if model.cifar_stem else 4) * 2 ** (len(model.stage_sizes) - 1)


def _check_config(m: ResNet) -> None:
    if not isinstance(m.num_classes, int) or isinstance(m.num_classes, bool) or m.num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {m.num_classes!r}")
    if not isinstance(m.head_hidden, int) or m.head_hidden < 0:
        raise ValueError(
            f"head_hidden must be a non-negative integer (0: no hidden layer), got {m.head_hidden!r}"
        )
    for field, value, valid in (
        ("shortcut", m.shortcut, SHORTCUTS),
        ("norm", m.norm, NORMS),
        ("block", m.block, tuple(BLOCKS)),
        ("stride_block", m.stride_block, STRIDE_BLOCKS),
    ):
        if value not in valid:
            raise ValueError(f"unknown {field} {value!r}; valid: {', '.join(valid)}")
    points = freeze_points(len(m.stage_sizes))
    if m.norm_frozen_up_to not in points:
        raise ValueError(
            f"unknown norm_frozen_up_to {m.norm_frozen_up_to!r} for a net of {len(m.stage_sizes)} stages; "
            f"valid: {', '.join(points)}"
        )
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
    _check_widths(m)


def _check_widths(m: ResNet) -> None:
    for field in ("groups", "base_width"):
        value = getattr(m, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{field} must be a positive integer, got {value!r}")
    bottleneck = m.block.endswith("bottleneck")
    if (m.groups, m.base_width) != (1, 64) and not bottleneck:
        raise ValueError(f"groups and base_width are for bottleneck blocks; {m.block!r} has neither")
    if not 0.0 <= m.dropout_rate < 1.0 or (m.dropout_rate and bottleneck):
        raise ValueError(f"dropout_rate must be in [0, 1) and needs basic blocks, got {m.dropout_rate!r}")
    if m.norm == "group":
        widths = [m.stem_features, *m.stage_widths]
        if bottleneck:
            widths += [bottleneck_width(w, m.groups, m.base_width) for w in m.stage_widths]
        odd = sorted({w for w in widths if w % layers.GROUP_NORM_GROUPS})
        if odd:
            raise ValueError(
                f"norm='group' needs every width divisible by {layers.GROUP_NORM_GROUPS}; this net has {odd}"
            )
