"""torchvision ResNet, ResNeXt and Wide ResNet weights -> resnet_jax.

torchvision's resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d/64x4d and
wide_resnet50_2/101_2 are this project's registry models of those names: stride on the 3x3 conv of a
bottleneck ("ResNet v1.5"), no conv biases, BatchNorm epsilon 1e-5, symmetric (k-1)//2 padding and a
-inf padded 3x3/2 max-pool. Only the layouts differ: conv weights are OIHW (Flax: HWIO) and the
Linear weight is (out, in) (Flax Dense kernel: (in, out)); a grouped conv's (out, in/groups, 3, 3)
weight is Flax's (3, 3, in/groups, out) kernel.

State dicts saved by training scripts are accepted as they come: wrapped as {'state_dict': sd} or
{'model': sd, 'epoch': ...} (Lightning, timm, the torchvision references), and with the 'module.'
prefix of DataParallel (or any prefix shared by every key).

Inputs: torchvision's ImageNet weights expect RGB scaled to [0, 1], then normalised per channel
with mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) (`PREPROCESS`). Images are NHWC here.

The export back to torchvision (`torchvision_export.to_torchvision`) maps names through `source_key` too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path as FilePath
from typing import Any

from resnet_jax.convert._mapping import (
    Path,
    SourceKey,
    assemble_variables,
    source_shape,
    to_numpy,
    variable_shapes,
)
from resnet_jax.models import ResNet
from resnet_jax.preprocess import IMAGENET_MEAN_STD
from resnet_jax.registry import create_model

ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
# Where training scripts put the model's state dict in the dict they save.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "network")
PREPROCESS = IMAGENET_MEAN_STD

_MODULES = {
    "stem_conv": "conv1",
    "stem_bn": "bn1",
    "head": "fc",
    "shortcut_conv": "downsample.0",
    "shortcut_bn": "downsample.1",
}
_LEAVES = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}
_OIHW_TO_HWIO = (2, 3, 1, 0)


def source_key(path: Path) -> SourceKey:
    """The torchvision state-dict name of a Flax variable and the permutation from its layout to Flax's;
    import (`from_torchvision`) and export (`to_torchvision`) both map through it."""
    _, *modules, leaf = path
    names = []
    for module in modules:
        stage_block = re.fullmatch(r"stage(\d+)_block(\d+)", module)
        names.append(
            f"layer{stage_block[1]}.{stage_block[2]}" if stage_block else _MODULES.get(module, module)
        )
    perm = None
    if leaf == "kernel":
        perm = (1, 0) if modules == ["head"] else _OIHW_TO_HWIO
    return ".".join([*names, _LEAVES[leaf]]), perm


def _expected_shapes(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    shapes = variable_shapes(create_model(arch, num_classes=num_classes))
    expected = {}
    for path, shape in shapes.items():
        name, perm = source_key(path)
        expected[name] = source_shape(shape, perm)
    return expected


def guess_arch(source: Mapping[str, Any]) -> str | None:
    """The torchvision architecture whose every key and shape the state dict has, if any."""
    keys = [k for k in source if not k.endswith("num_batches_tracked")]
    blocks = [re.match(r"layer(\d)\.(\d+)\.", k) for k in keys]
    sizes = tuple(
        1 + max((int(m[2]) for m in blocks if m and m[1] == str(s)), default=-1) for s in range(1, 5)
    )
    bottleneck = any(k.endswith(".conv3.weight") for k in keys)
    fc = source.get("fc.weight")
    num_classes = fc.shape[0] if fc is not None and fc.ndim == 2 else 1000
    for arch in ARCHS:
        model = create_model(arch)
        # Stage sizes and block type first (free), then every shape (one jax.eval_shape per candidate).
        if tuple(model.stage_sizes) != sizes or (model.block == "bottleneck") != bottleneck:
            continue
        expected = _expected_shapes(arch, num_classes)
        if expected.keys() == set(keys) and all(tuple(source[k].shape) == v for k, v in expected.items()):
            return arch
    return None


def _hint(source: Mapping[str, Any], arch: str) -> str:
    guess = guess_arch(source)
    if guess and guess != arch:
        return (
            f"hint: the state dict's keys and shapes fit torchvision's {guess}: pass arch={guess!r} "
            f"(CLI: --arch {guess})"
        )
    return ""


def unwrap_state_dict(obj: Any) -> dict[str, Any]:
    """The model state dict inside what a training script saved.

    Accepts a state dict, a module (its state_dict()), {'state_dict': sd} or {'model': sd, 'epoch': ...}
    (also 'model_state_dict', 'module', 'net', 'network'), and strips a prefix every key shares
    ('module.' from DataParallel, 'model.' from Lightning modules, '_orig_mod.' from torch.compile).

    Raises:
      ValueError: naming the keys found when no state dict is recognised.
    """
    for _ in range(3):  # {'state_dict': {'model': sd}} and the like
        if hasattr(obj, "state_dict") and callable(obj.state_dict):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            raise ValueError(
                "expected a state dict (model.state_dict() or torch.load(path, weights_only=True)), "
                f"got {type(obj).__name__}"
            )
        nested = [
            k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping) or hasattr(obj.get(k), "state_dict")
        ]
        if not nested or any(_is_array(v) for v in obj.values()):
            break
        obj = obj[nested[0]]
    arrays = {k: v for k, v in obj.items() if _is_array(v)}
    if not arrays or len(arrays) < len(obj):
        found = ", ".join(f"{k!r} ({type(v).__name__})" for k, v in list(obj.items())[:20])
        more = f" and {len(obj) - 20} more" if len(obj) > 20 else ""
        raise ValueError(
            f"no torchvision state dict found: expected names -> tensors, or one under "
            f"{', '.join(repr(k) for k in _WRAPPER_KEYS)}; found keys {found or '(none)'}{more}"
        )
    return _strip_prefix(arrays)


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _strip_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    if "conv1.weight" in state_dict:
        return state_dict
    prefixes = sorted(k[: -len("conv1.weight")] for k in state_dict if k.endswith(".conv1.weight"))
    for prefix in prefixes:  # shortest first
        if all(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def from_torchvision(state_dict: Mapping[str, Any], arch: str) -> tuple[ResNet, dict[str, Any]]:
    """Converts a torchvision ResNet state dict to a Flax model and its variables.

    The returned model computes the same function as torchvision's eval-mode model on the same
    (NHWC instead of NCHW) input; see the module docstring for the input normalisation.

    Args:
      state_dict: `torchvision.models.resnetXX().state_dict()`, or the dict that
        `torch.load(path, weights_only=True)` returns for a torchvision `.pth` file: names ->
        torch tensors or numpy arrays. A torch module, a wrapped dict ({'state_dict': sd},
        {'model': sd, 'epoch': ...}) and 'module.'-prefixed keys are accepted (`unwrap_state_dict`).
      arch: one of `ARCHS`: resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d,
        resnext101_64x4d, wide_resnet50_2, wide_resnet101_2.

    Returns:
      (model, variables): `create_model(arch, num_classes=<rows of fc.weight>)` and
      {'params', 'batch_stats'} as float32 arrays. `num_batches_tracked` entries are dropped.

    Raises:
      ValueError: for an unknown arch, no recognisable state dict (listing the keys found), or a state
        dict that does not fit the arch, listing every missing, unexpected and mis-shaped entry and
        the architecture that fits, if one does.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown torchvision arch {arch!r}; supported: {', '.join(ARCHS)}")
    source = {name: to_numpy(value) for name, value in unwrap_state_dict(state_dict).items()}
    fc = source.get("fc.weight")
    model = create_model(arch, num_classes=fc.shape[0] if fc is not None and fc.ndim == 2 else 1000)
    variables = assemble_variables(
        model,
        source,
        source_key,
        what=f"torchvision {arch} state dict",
        ignored=[name for name in source if name.endswith("num_batches_tracked")],
        hint=_hint(source, arch),
    )
    return model, variables


def load_state_dict(path: str | FilePath) -> Any:
    """Reads a `.pth` file with tensors only (no code is unpickled): a state dict or a dict wrapping one.

    Raises:
      ValueError: one line saying the file cannot be read (not a torch file, truncated, corrupt).
    """
    import torch  # optional dependency: the `torch` extra

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as e:  # torch raises KeyError, RuntimeError, EOFError, UnpicklingError, ... for bad files
        reason = (str(e).strip().splitlines() or [""])[0][:200] or "the file ends early"
        raise ValueError(
            f"cannot read {path} as a torch state dict (torch.save of model.state_dict()): "
            f"{type(e).__name__}: {reason}"
        ) from e
