"""torchvision ResNet weights -> resnet_jax.

torchvision's resnet18/34/50/101/152 are this project's defaults: stride on the 3x3 conv of a
bottleneck ("ResNet v1.5"), no conv biases, BatchNorm epsilon 1e-5, symmetric (k-1)//2 padding and a
-inf padded 3x3/2 max-pool. Only the layouts differ: conv weights are OIHW (Flax: HWIO) and the
Linear weight is (out, in) (Flax Dense kernel: (in, out)).

Inputs: torchvision's ImageNet weights expect RGB scaled to [0, 1], then normalised per channel
with mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) (`PREPROCESS`). Images are NHWC here.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path as FilePath
from typing import Any

from resnet_jax.convert._mapping import Path, SourceKey, assemble_variables, to_numpy
from resnet_jax.models import ResNet
from resnet_jax.preprocess import IMAGENET_MEAN_STD
from resnet_jax.registry import create_model

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
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


def _source_key(path: Path) -> SourceKey:
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


def _guess_arch(keys: list[str]) -> str | None:
    """The torchvision architecture whose block layout the state-dict keys show, if any."""
    blocks = [re.match(r"layer(\d)\.(\d+)\.", k) for k in keys]
    sizes = tuple(
        1 + max((int(m[2]) for m in blocks if m and m[1] == str(s)), default=-1) for s in range(1, 5)
    )
    bottleneck = any(k.endswith(".conv3.weight") for k in keys)
    for arch in ARCHS:
        model = create_model(arch)
        if tuple(model.stage_sizes) == sizes and (model.block == "bottleneck") == bottleneck:
            return arch
    return None


def _hint(keys: list[str], arch: str) -> str:
    if any(k.startswith("module.") for k in keys):
        return "hint: the keys start with 'module.' (saved from DataParallel); strip that prefix first"
    guess = _guess_arch(keys)
    if guess and guess != arch:
        return f"hint: the keys look like torchvision's {guess}; pass arch={guess!r}"
    return ""


def from_torchvision(state_dict: Mapping[str, Any], arch: str) -> tuple[ResNet, dict[str, Any]]:
    """Converts a torchvision ResNet state dict to a Flax model and its variables.

    The returned model computes the same function as torchvision's eval-mode model on the same
    (NHWC instead of NCHW) input; see the module docstring for the input normalisation.

    Args:
      state_dict: `torchvision.models.resnetXX().state_dict()`, or the dict that
        `torch.load(path, weights_only=True)` returns for a torchvision `.pth` file: names ->
        torch tensors or numpy arrays. A torch module is also accepted (its state_dict is used).
      arch: one of resnet18, resnet34, resnet50, resnet101, resnet152.

    Returns:
      (model, variables): `create_model(arch, num_classes=<rows of fc.weight>)` and
      {'params', 'batch_stats'} as float32 arrays. `num_batches_tracked` entries are dropped.

    Raises:
      ValueError: for an unknown arch, or a state dict that does not fit it, listing every missing,
        unexpected and mis-shaped entry.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown torchvision arch {arch!r}; supported: {', '.join(ARCHS)}")
    if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):
        state_dict = state_dict.state_dict()
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"state_dict must map names to tensors (model.state_dict() or torch.load(path, "
            f"weights_only=True)), got {type(state_dict).__name__}"
        )
    source = {name: to_numpy(value) for name, value in state_dict.items()}
    fc = source.get("fc.weight")
    model = create_model(arch, num_classes=fc.shape[0] if fc is not None and fc.ndim == 2 else 1000)
    variables = assemble_variables(
        model,
        source,
        _source_key,
        what=f"torchvision {arch} state dict",
        ignored=[name for name in source if name.endswith("num_batches_tracked")],
        hint=_hint(list(source), arch),
    )
    return model, variables


def load_state_dict(path: str | FilePath) -> dict[str, Any]:
    """Reads a torchvision `.pth` state dict (tensors only; no code is unpickled)."""
    import torch  # optional dependency: the `torch` extra

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(
            f"cannot read {path} as a torch state dict (torch.save of model.state_dict()): {e}"
        ) from e
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict; save model.state_dict()")
    return dict(state)
