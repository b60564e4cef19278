"""Keras applications ResNet50/101/152 and ResNet50V2/101V2/152V2 weights -> resnet_jax.

Keras' ResNets are the original (Caffe) v1 layout: stride on the first 1x1 conv of a bottleneck,
a bias on every conv, BatchNorm epsilon 1.001e-5 and momentum 0.99. Their padding equals this
project's symmetric (k-1)//2 padding: ZeroPadding2D(3) + 7x7/2 'valid' stem conv, 'same' 3x3/1
convs, and ZeroPadding2D(1) + 3x3/2 'valid' max-pool after a ReLU (zero padding of non-negative
values takes the same maxima as -inf padding). Kernels are HWIO in both frameworks.

Keras' ResNetV2s are the registry's resnet50v2/101v2/152v2 as they are (pre-activation units, the stride
on the last unit of a stage, biases on the convs no BatchNorm follows, a zero-padded stem max-pool).

Inputs: the Keras v1 ImageNet weights expect `keras.applications.resnet.preprocess_input`, the
"caffe" convention: RGB in [0, 255] flipped to BGR, minus the per-channel mean
(103.939, 116.779, 123.68), no scaling (`PREPROCESS`). The V2 weights expect
`keras.applications.resnet_v2.preprocess_input`, "tf" mode: x / 127.5 - 1, which is the 'mean_std'
spec with mean 0.5 and std 0.5 on [0, 1] pixels (`PREPROCESS_V2`).

The converted model returns logits; a Keras model built with the default
classifier_activation='softmax' returns their softmax.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path as FilePath
from typing import Any

from resnet_jax.convert._mapping import Path, SourceKey, assemble_variables, to_numpy
from resnet_jax.models import ResNet
from resnet_jax.preprocess import CAFFE, short_repr
from resnet_jax.registry import create_model

ARCHS = {
    "resnet50": "ResNet50",
    "resnet101": "ResNet101",
    "resnet152": "ResNet152",
    "resnet50v2": "ResNet50V2",
    "resnet101v2": "ResNet101V2",
    "resnet152v2": "ResNet152V2",
}
V2_ARCHS = ("resnet50v2", "resnet101v2", "resnet152v2")
PREPROCESS = CAFFE
PREPROCESS_V2 = {"kind": "mean_std", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
# create_model overrides that reproduce keras.applications.resnet (v1) exactly; the V2 registry models
# are Keras' already.
MODEL_OVERRIDES = {"stride_in_1x1": True, "conv_bias": True, "bn_epsilon": 1.001e-5, "bn_momentum": 0.99}

_MODULES = {"stem_conv": "conv1_conv", "stem_bn": "conv1_bn", "post_bn": "post_bn", "head": "predictions"}
_CONV_LEAVES = {"kernel": "kernel", "bias": "bias"}
_BN_LEAVES = {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"}


def _source_key(path: Path) -> SourceKey:
    _, *modules, leaf = path
    if len(modules) == 1:
        layer = _MODULES[modules[0]]
    else:
        # stage{s}_block{b} (s from 1, b from 0) is Keras' conv{s+1}_block{b+1}; layers are numbered
        # 1..3 in the block and 0 for the projection shortcut.
        block, inner = modules
        s, b = map(int, re.fullmatch(r"stage(\d+)_block(\d+)", block).groups())
        kind, i = re.fullmatch(r"(conv|bn|shortcut_conv|shortcut_bn|preact_bn)(\d*)", inner).groups()
        if kind == "preact_bn":
            layer = f"conv{s + 1}_block{b + 1}_preact_bn"
        else:
            layer = f"conv{s + 1}_block{b + 1}_{i or 0}_{'bn' if kind.endswith('bn') else 'conv'}"
    leaves = _BN_LEAVES if layer.endswith("_bn") else _CONV_LEAVES
    return f"{layer}/{leaves[leaf]}", None


def preprocess_for(arch: str) -> dict[str, Any]:
    """The preprocess spec the Keras ImageNet weights of `arch` expect."""
    return PREPROCESS_V2 if arch in V2_ARCHS else PREPROCESS


def _keras_arch(layer_names: list[str]) -> str:
    """The registry name of a Keras ResNet, from its version and the number of blocks in each stage."""
    blocks = [re.match(r"conv(\d)_block(\d+)_", name) for name in layer_names]
    sizes = tuple(max((int(m[2]) for m in blocks if m and m[1] == str(s)), default=0) for s in range(2, 6))
    # A ResNetV2 has pre-activation BNs (and post_bn even without its top).
    v2 = any(name.endswith("_preact_bn") for name in layer_names)
    candidates = [a for a in ARCHS if (a in V2_ARCHS) == v2]
    for arch in candidates:
        if tuple(create_model(arch).stage_sizes) == sizes:
            return arch
    raise ValueError(
        f"the Keras model has {sizes} blocks in stages conv2..conv5, which is none of "
        f"{', '.join(f'{a} {tuple(create_model(a).stage_sizes)}' for a in candidates)}; only "
        "keras.applications ResNet50/101/152 and ResNet50V2/101V2/152V2 are supported"
    )


def _hint(layer_names: list[str]) -> str:
    if "predictions" not in layer_names:
        return "hint: the Keras model has no 'predictions' layer; build it with include_top=True"
    return ""


def from_keras(keras_model: Any) -> tuple[ResNet, dict[str, Any]]:
    """Converts a `keras.applications` ResNet50/101/152 or ResNet50V2/101V2/152V2 to Flax.

    The returned model computes the same logits as the Keras model (before its classifier
    activation) on the same NHWC input; see the module docstring for the input preprocessing.

    Args:
      keras_model: a Keras 3 model built by keras.applications.ResNet50/101/152 or
        ResNet50V2/101V2/152V2 with include_top=True (any `classes`, any backend), with its weights loaded.

    Returns:
      (model, variables): `create_model(arch, num_classes=..., **MODEL_OVERRIDES)` (v1) or
      `create_model(arch, num_classes=...)` (V2) and {'params', 'batch_stats'} as float32 arrays.

    Raises:
      ValueError: for a model that is not one of those architectures, listing every missing,
        unexpected and mis-shaped weight.
    """
    layers = getattr(keras_model, "layers", None)
    if layers is None:
        raise ValueError(f"expected a Keras model, got {type(keras_model).__name__}")
    names = [layer.name for layer in layers]
    arch = _keras_arch(names)
    # Keras 3 names a variable 'kernel'; older tf.keras 'conv1_conv/kernel:0'.
    source = {
        f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}": to_numpy(w)
        for layer in layers
        for w in layer.weights
    }
    kernel = source.get("predictions/kernel")
    num_classes = kernel.shape[1] if kernel is not None and kernel.ndim == 2 else 1000
    overrides = {} if arch in V2_ARCHS else MODEL_OVERRIDES
    model = create_model(arch, num_classes=num_classes, **overrides)
    variables = assemble_variables(model, source, _source_key, what=f"Keras {ARCHS[arch]}", hint=_hint(names))
    return model, variables


def load_keras_model(path: str | FilePath, arch: str, num_classes: int = 1000) -> Any:
    """Builds keras.applications.<arch>(weights=None, classes=num_classes) and loads a weights file.

    Args:
      path: a Keras weights file: `.weights.h5` / `.keras` (Keras 3) or a legacy `.h5` such as
        resnet50_weights_tf_dim_ordering_tf_kernels.h5.
      arch: resnet50, resnet101, resnet152, resnet50v2, resnet101v2 or resnet152v2.
      num_classes: outputs of the file's 'predictions' layer.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown Keras arch {arch!r}; supported: {', '.join(ARCHS)}")
    import keras  # optional dependency; imported only when reading Keras files

    model = getattr(keras.applications, ARCHS[arch])(
        weights=None, classes=num_classes, classifier_activation=None
    )
    with _quiet() as caught:
        try:
            model.load_weights(str(path))
        except Exception as e:  # Keras raises assorted types (ValueError, KeyError, OSError) for bad files
            raise ValueError(
                f"could not load {path} into keras.applications.{ARCHS[arch]}(classes={num_classes}): "
                f"{_reason(e)}; check --arch and --num-classes and that the file holds that model's weights"
            ) from e
    for w in caught:  # a good file raises none; whatever a load that worked had to say is still shown
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model


@contextlib.contextmanager
def _quiet() -> Iterator[list[warnings.WarningMessage]]:
    """Holds back Python warnings and silences logging, restoring both after: a file that does not fit
    makes Keras warn once per layer (hundreds of lines) before it raises."""
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        logging.disable(disabled)


def _reason(error: Exception) -> str:
    """Keras' message on one line, without its list of every layer that failed (kilobytes)."""
    text = str(error).split("List of objects that could not be loaded")[0]
    return short_repr(" ".join(text.split()), 400)
