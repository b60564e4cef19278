"""Residual blocks: post-activation (He et al. 2015) and pre-activation (He et al. 2016).

Every block gets its layers as factories (see `resnet_jax.layers`): `conv`, `norm`, `act` and `shortcut`.
Submodule names are checkpoint keys and conversion targets:

  conv{i}, bn{i}                   i = 1..2 (basic) or 1..3 (bottleneck); bn{i} follows conv{i}
  shortcut_conv, shortcut_bn       a projection shortcut where the block changes shape
  preact_bn                        pre-activation blocks: the norm before the first conv
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax

from resnet_jax.layers import ModuleDef, projection_shortcut, subsample

_ONES, _ZEROS = nn.initializers.ones, nn.initializers.zeros


class _Block(nn.Module):
    """Fields shared by every block.

    Attributes:
      features: output channels of the block.
      conv: conv factory (`resnet_jax.layers.conv` protocol).
      norm: norm factory, with train/eval already bound (`resnet_jax.layers.make_norm`).
      stride: spatial stride of the block (1, or 2 where a stage downsamples).
      act: the activation (ReLU).
      shortcut: where the block changes shape, `shortcut(x, features, stride, conv=, norm=)`;
        `resnet_jax.layers.projection_shortcut` (option B) or `zero_pad_shortcut` (option A).
      zero_init_last: start the last norm's scale at zero so the block begins as the identity.
    """

    features: int
    conv: ModuleDef
    norm: ModuleDef
    stride: int = 1
    act: Callable[[jax.Array], jax.Array] = nn.relu
    shortcut: Callable[..., jax.Array] = projection_shortcut
    zero_init_last: bool = False

    def _last_scale_init(self) -> Callable:
        return _ZEROS if self.zero_init_last else _ONES

    def _post_act_shortcut(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] == self.features and self.stride == 1:
            return x
        return self.shortcut(x, self.features, self.stride, conv=self.conv, norm=self.norm)

    def _pre_act_shortcut(self, x: jax.Array, preact: jax.Array) -> jax.Array:
        # Where the channels change, the shortcut sees the block's pre-activated input (the 2016 paper's
        # code, WRN, Keras); no norm follows the projection, the next block's preact_bn does. Where only the
        # stride changes (Keras ResNetV2's last block of a stage), the raw input is subsampled.
        if x.shape[-1] != self.features:
            return self.shortcut(preact, self.features, self.stride, conv=self.conv, norm=None)
        return subsample(x, self.stride) if self.stride > 1 else x


class BasicBlock(_Block):
    """Two 3x3 convs: conv -> norm -> act -> [dropout] -> conv -> norm, add the shortcut, act.

    Attributes:
      dropout_rate: dropout between the convs (needs a 'dropout' rng when train=True).
    """

    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = self.conv(self.features, 3, self.stride, name="conv1")(x)
        y = self.act(self.norm(name="bn1")(y))
        if self.dropout_rate:
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = self.conv(self.features, 3, 1, name="conv2")(y)
        y = self.norm(name="bn2", scale_init=self._last_scale_init())(y)
        return self.act(y + self._post_act_shortcut(x))


# The block's name before ResNeXt and the pre-activation blocks arrived; kept so old imports still work.
ResidualBlock = BasicBlock


class _Bottleneck(_Block):
    """Fields and geometry shared by the two bottleneck blocks.

    The 3x3 conv's width is torchvision's: int(features / 4 * base_width / 64) * groups, so
    base_width=64, groups=1 is ResNet-50's features/4, groups=32, base_width=4 ResNeXt-50 32x4d's,
    base_width=128 Wide ResNet-50-2's.

    Attributes:
      groups: groups of the 3x3 conv (ResNeXt's cardinality).
      base_width: channels per group at the first stage's width (64 for a plain ResNet).
      stride_in_1x1: put the stride on the first 1x1 conv (the paper, Caffe, Keras' V1 and the 2016
        paper's CIFAR code) instead of on the 3x3 conv (torchvision's "ResNet v1.5" and Keras' V2).
    """

    groups: int = 1
    base_width: int = 64
    stride_in_1x1: bool = False

    def _geometry(self) -> tuple[int, int, int]:
        """(width of the 3x3 conv, stride of the first 1x1 conv, stride of the 3x3 conv)."""
        width = bottleneck_width(self.features, self.groups, self.base_width)
        return (width, self.stride, 1) if self.stride_in_1x1 else (width, 1, self.stride)


class BottleneckBlock(_Bottleneck):
    """1x1 conv to `width` -> 3x3 conv (grouped) -> 1x1 conv to features, each followed by norm; fields in
    `_Bottleneck`."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        width, s1, s3 = self._geometry()
        y = self.conv(width, 1, s1, name="conv1")(x)
        y = self.act(self.norm(name="bn1")(y))
        y = self.conv(width, 3, s3, name="conv2", groups=self.groups)(y)
        y = self.act(self.norm(name="bn2")(y))
        y = self.conv(self.features, 1, 1, name="conv3")(y)
        y = self.norm(name="bn3", scale_init=self._last_scale_init())(y)
        return self.act(y + self._post_act_shortcut(x))


class PreActBasicBlock(_Block):
    """Pre-activation basic block (He et al. 2016; Wide ResNet): norm -> act -> 3x3 conv -> norm -> act ->
    [dropout] -> 3x3 conv, added to the shortcut with no activation after.

    Attributes:
      preact: begin with preact_bn + act; False for a first block that directly follows a bare stem
        conv (the 2016 paper's CIFAR code), whose convs and projection then see the raw input.
      dropout_rate: dropout between the convs (Wide ResNet; needs a 'dropout' rng when train=True).
    """

    preact: bool = True
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        p = self.act(self.norm(name="preact_bn")(x)) if self.preact else x
        # Convs feeding a norm never take a bias; the last one (into the sum) takes the factory's default.
        y = self.conv(self.features, 3, self.stride, name="conv1", use_bias=False)(p)
        y = self.act(self.norm(name="bn1", scale_init=self._last_scale_init())(y))
        if self.dropout_rate:
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = self.conv(self.features, 3, 1, name="conv2")(y)
        return y + self._pre_act_shortcut(x, p)


class PreActBottleneckBlock(_Bottleneck):
    """Pre-activation bottleneck (He et al. 2016; Keras ResNetV2): norm -> act -> 1x1 conv -> norm -> act ->
    3x3 conv -> norm -> act -> 1x1 conv, added to the shortcut with no activation after.

    Attributes:
      preact: see PreActBasicBlock.
      groups, base_width, stride_in_1x1: see `_Bottleneck`.
    """

    preact: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        width, s1, s3 = self._geometry()
        p = self.act(self.norm(name="preact_bn")(x)) if self.preact else x
        y = self.conv(width, 1, s1, name="conv1", use_bias=False)(p)
        y = self.act(self.norm(name="bn1")(y))
        y = self.conv(width, 3, s3, name="conv2", use_bias=False, groups=self.groups)(y)
        y = self.act(self.norm(name="bn2", scale_init=self._last_scale_init())(y))
        y = self.conv(self.features, 1, 1, name="conv3")(y)
        return y + self._pre_act_shortcut(x, p)


def bottleneck_width(features: int, groups: int, base_width: int) -> int:
    """Channels of a bottleneck's 3x3 conv, computed as torchvision computes it (expansion 4)."""
    return int(features // 4 * (base_width / 64.0)) * groups


BLOCKS: dict[str, type[_Block]] = {
    "basic": BasicBlock,
    "bottleneck": BottleneckBlock,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneckBlock,
}
PREACT_BLOCKS = ("preact_basic", "preact_bottleneck")
