"""resnet_jax -> torchvision: the state dict of a model trained or fine-tuned here, in torchvision's layout.

    state_dict = resnet_jax.convert.to_torchvision(model, variables)
    safetensors.numpy.save_file(state_dict, "model.safetensors")

    # PyTorch:
    net = torchvision.models.resnet50(num_classes=10)
    net.load_state_dict(safetensors.torch.load_file("model.safetensors"))  # strict

The names and layouts are `from_torchvision`'s, run backwards (the same key function), so exporting
and importing again gives back the same arrays. The torchvision model computes the same function as
this model in eval mode (`train=False`) on the same input, NCHW instead of NHWC, normalised as the
model's checkpoint says (its `preprocess`; torchvision's own weights expect `PREPROCESS`).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from resnet_jax.checkpoint.trees import abstract_variables, counts, flatten, listing, tree_differences
from resnet_jax.convert._mapping import source_arrays
from resnet_jax.convert.torchvision import ARCHS, source_key
from resnet_jax.models import ResNet
from resnet_jax.registry import MODEL_FIELDS, create_model

# The fields that tell torchvision's architectures apart.
_ARCH_FIELDS = ("stage_sizes", "stage_widths", "block", "groups", "base_width")
# Fields that do not change what an eval-mode model computes from its variables: any value exports.
# norm: 'frozen_batch' is BatchNorm that never updates its statistics ('group' is refused below).
_EVAL_EQUIVALENT = (
    "num_classes",  # torchvision models take any num_classes; fc.weight has its rows
    "norm",
    "norm_frozen_up_to",  # which BatchNorms a fine-tuning froze
    "bn_momentum",  # how running statistics were updated in training
    "zero_init_last_bn",  # initialisation only
    "dropout_rate",  # dropout is the identity in eval mode
    "dtype",  # the computation dtype; the float32 parameters are what is exported
    "preact_first_block",  # pre-activation nets only, which torchvision has none of
)
# Every other field must have torchvision's value; why, where it does not.
_WHY = {
    "stem_features": "torchvision's stem conv has 64 channels",
    "cifar_stem": "torchvision's stem is a 7x7/2 conv and a 3x3/2 max-pool, not the CIFAR 3x3/1 conv",
    "shortcut": "torchvision's blocks change shape through 1x1 conv projections, not zero padding",
    "stride_in_1x1": "torchvision puts a bottleneck's stride on its 3x3 conv",
    "stride_block": "torchvision downsamples in the first block of a stage",
    "conv_bias": "torchvision's convs have no bias",
    "bn_epsilon": "torchvision's BatchNorm2d has eps=1e-5, which its state dict does not carry",
    "head_hidden": "torchvision's head is one Linear layer",
    "param_dtype": (
        "torchvision's weights are float32: export model.clone(param_dtype=jnp.float32) with the "
        "variables cast by jax.tree.map(lambda a: a.astype(jnp.float32), variables)"
    ),
}


def _shape(model: ResNet) -> str:
    shape = f"{model.block} blocks {tuple(model.stage_sizes)} of widths {tuple(model.stage_widths)}"
    if model.block.endswith("bottleneck"):
        shape += f", groups={model.groups}, base_width={model.base_width}"
    return shape


def torchvision_arch(model: ResNet) -> str:
    """The torchvision architecture (one of `ARCHS`) whose eval-mode function `model` computes.

    Args:
      model: a ResNet built by `create_model` or read from a checkpoint, with any num_classes; frozen
        BatchNorm (norm='frozen_batch', norm_frozen_up_to), dropout and a bfloat16 computation dtype
        are allowed (none of them changes the eval-mode function of the float32 parameters).

    Raises:
      ValueError: one line naming every option torchvision cannot represent and why (CIFAR stems and
        zero-pad shortcuts, GroupNorm, head_hidden, stride_in_1x1, conv biases, pre-activation blocks,
        a BatchNorm epsilon other than 1e-5, non-float32 parameters, an architecture it lacks).
    """
    if not isinstance(model, ResNet):
        raise ValueError(f"to_torchvision exports a resnet_jax ResNet, got {type(model).__name__}")
    matches = [
        arch for arch in ARCHS if all(_value(model, f) == _value(create_model(arch), f) for f in _ARCH_FIELDS)
    ]
    problems = [] if matches else [f"its {_shape(model)} are none of torchvision's {', '.join(ARCHS)}"]
    reference = create_model(matches[0] if matches else "resnet18")
    if model.norm == "group":
        problems.append("norm='group' (torchvision's ResNets have BatchNorm, with running statistics)")
    for field in MODEL_FIELDS:
        if field in _ARCH_FIELDS or field in _EVAL_EQUIVALENT:
            continue
        if _value(model, field) != _value(reference, field):
            why = _WHY.get(field, f"torchvision's models have {field}={getattr(reference, field)!r}")
            problems.append(f"{field}={_display(model, field)} ({why})")
    if problems:
        raise ValueError(f"cannot export this model to torchvision: {'; '.join(problems)}")
    return matches[0]


def _value(model: ResNet, field: str) -> Any:
    value = getattr(model, field)
    return tuple(value) if isinstance(value, list | tuple) else value


def _display(model: ResNet, field: str) -> str:
    value = getattr(model, field)
    return np.dtype(value).name if field in ("dtype", "param_dtype") else repr(value)


def to_torchvision(model: ResNet, variables: dict[str, Any]) -> dict[str, np.ndarray]:
    """A torchvision state dict for `model` and its variables.

    Args:
      model: the model (see `torchvision_arch` for which ones export).
      variables: its {'params', 'batch_stats'} (other collections, such as an optimizer state, are
        ignored), float32, e.g. from `resnet_jax.checkpoint.load_checkpoint`.

    Returns:
      {name: numpy array}: exactly the keys of `torchvision.models.<arch>(num_classes=...).state_dict()`,
      float32 weights in torchvision's layouts (conv OIHW, Linear (out, in)) and each BatchNorm's
      `num_batches_tracked` as an int64 scalar 0 (strict loading requires the key; eval never reads it).
      `torchvision_arch(model)` names the architecture.

    Raises:
      ValueError: for a model torchvision cannot represent (one line), or variables that do not fit
        the model or are not float32.
    """
    torchvision_arch(model)
    missing = [c for c in ("params", "batch_stats") if c not in variables]
    if missing:
        raise ValueError(f"variables must hold 'params' and 'batch_stats'; missing {missing}")
    ours = {c: variables[c] for c in ("params", "batch_stats")}
    problems = tree_differences(
        flatten(abstract_variables(model)), flatten(ours), names=("model", "variables")
    )
    if any(problems.values()):
        raise ValueError(
            "\n".join([f"variables do not fit the model: {counts(problems)}", *listing(problems)])
        )
    not_float32 = sorted(
        {np.dtype(leaf.dtype).name for leaf in jax.tree.leaves(ours) if leaf.dtype != np.float32}
    )
    if not_float32:
        raise ValueError(
            f"variables hold {', '.join(not_float32)} arrays; torchvision's weights are float32: cast them "
            "with jax.tree.map(lambda a: a.astype(jnp.float32), variables)"
        )
    state_dict = source_arrays(ours, source_key)
    for name in [n for n in state_dict if n.endswith(".running_mean")]:
        state_dict[name.removesuffix("running_mean") + "num_batches_tracked"] = np.array(0, np.int64)
    return state_dict
