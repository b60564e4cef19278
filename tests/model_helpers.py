"""Model lists and small builders shared by tests/test_models.py and tests/test_blocks.py."""

import jax
import jax.numpy as jnp
import pytest

import resnet_jax
from resnet_jax import layers

IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
RESNEXT_WIDE = [
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]


KERAS_V2 = ["resnet50v2", "resnet101v2", "resnet152v2"]
CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202"]
PREACT_CIFAR = ["preact_resnet110", "preact_resnet164", "preact_resnet1001"]
WRN = ["wrn16_8", "wrn28_10", "wrn40_4"]
ALL = IMAGENET + RESNEXT_WIDE + KERAS_V2 + CIFAR + PREACT_CIFAR + WRN


# The deepest nets trace thousands of layers (20-40 s each on 2 cores): the full tier only.
DEEP = ("resnet1202", "preact_resnet1001")


def cases(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in DEEP else n for n in names]


def abstract_init(model, size=32, batch=1):
    x = jnp.zeros((batch, size, size, 3))
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def init(model, size=32, batch=2, seed=0):
    x = jnp.zeros((batch, size, size, 3))
    return model.init(jax.random.key(seed), x, train=False)


def factories(train, norm="batch"):
    conv = layers.make_conv(use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32)
    kw = dict(train=train, momentum=0.9, epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32)
    return dict(conv=conv, norm=layers.make_norm(norm, **kw))


def images(batch=4, size=32, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def small_wrn(**kwargs):
    return resnet_jax.ResNet(
        (1, 1, 1),
        (16, 32, 64),
        block="preact_basic",
        num_classes=10,
        stem_features=16,
        cifar_stem=True,
        **kwargs,
    )
