"""Pretrained ImageNet weights in one call: timm's Hugging Face Hub releases of torchvision's ResNets.

    model, variables = resnet_jax.pretrained("resnet50.a1_in1k")
    predict = resnet_jax.make_predict_fn(model)       # raw uint8 images of any size
    logits = predict(variables, images)               # timm's evaluation transform, then the model

    model, variables, meta = resnet_jax.hub.load("resnet50.tv2_in1k")   # also the checkpoint meta

Names (`available_pretrained()`, from timm's configs in `tags`) are Hub repositories timm/<name> whose
model.safetensors is in torchvision's key layout: torchvision's own weights (`tv_in1k`, `tv2_in1k`)
and timm's (`a1_in1k`, ...) for resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d/64x4d and
wide_resnet50_2/101_2. Each carries its evaluation recipe into the meta and onto the model:
normalisation, test image size, crop_pct and interpolation, and the 1,000 ImageNet class names.

Downloads go through huggingface_hub, so its cache and settings apply (HF_HUB_CACHE or HF_HOME,
HF_HUB_OFFLINE, HF_TOKEN, HF_ENDPOINT for a mirror), and are read with safetensors.numpy: neither
torch nor TensorFlow is imported. A local file works too: `pretrained("model.safetensors",
arch="resnet50")`, or a torchvision `.pth` where torch is installed.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import os
from pathlib import Path
from typing import Any

import flax.linen as nn

from resnet_jax.checkpoint import CheckpointError, make_meta, model_from_meta
from resnet_jax.checkpoint.io import brief
from resnet_jax.convert import torchvision as tv
from resnet_jax.convert._mapping import to_numpy
from resnet_jax.hub.tags import NORMALIZATION, TAGS

FILENAME = "model.safetensors"
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
# torchvision's evaluation of its ImageNet weights: Resize(256) bilinear, CenterCrop(224).
_TORCHVISION_RECIPE = {"image_size": [224, 224], "crop_pct": 0.875, "interpolation": "bilinear"}


class PretrainedError(CheckpointError):
    """Pretrained weights that cannot be had or used: an unknown name, nothing cached and no network,
    or a file that is unreadable or not the architecture named. The message is one line with the fix."""


def available_pretrained() -> tuple[str, ...]:
    """The names `pretrained` downloads (Hub repositories timm/<name>), architecture by architecture."""
    return tuple(TAGS)


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in label order (torchvision's list, as its weights name them)."""
    text = importlib.resources.files(__name__).joinpath("imagenet_classes.txt").read_text("utf-8")
    return tuple(text.splitlines())


def pretrained(
    name_or_path: str | os.PathLike, *, arch: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """A pretrained model and its variables, like `load_checkpoint`; see `load`."""
    model, variables, _ = load(name_or_path, arch=arch)
    return model, variables


def load(
    name_or_path: str | os.PathLike, *, arch: str | None = None
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Pretrained weights by name (downloaded once into the Hugging Face cache) or from a local file.

    Args:
      name_or_path: a name of `available_pretrained()` such as 'resnet50.a1_in1k' (also spelled
        'timm/resnet50.a1_in1k'), or a local torchvision-layout state dict: `.safetensors`, or
        `.pth`/`.pt`/`.bin` where torch is installed.
      arch: for a local file, its architecture (resnet18/34/50/101/152, resnext50_32x4d,
        resnext101_32x8d/64x4d, wide_resnet50_2/101_2). For a name it is implied; if given, it must agree.

    Returns:
      (model, variables, meta). `model` carries `preprocess`, `image_size`, `crop_pct`,
      `interpolation` and `class_names`, so `make_predict_fn(model)` evaluates raw uint8 images as timm
      does: the shorter side resized to floor(image_size / crop_pct), the centre crop, the weights'
      normalisation. `image_size` is the size timm evaluates the weights at, its test size where that
      differs from the training size (e.g. 224 for tv2_in1k, trained at 176; 288 for a1_in1k, trained
      at 224); meta['train_image_size'] records the training size. A local file gets torchvision's
      recipe (224, crop_pct 0.875, bilinear, ImageNet mean and std) and the ImageNet class names when
      its head has 1,000 classes. `variables` is {'params', 'batch_stats'} of float32 arrays; `meta`
      is what `make_meta` writes, ready for `save_checkpoint(directory, variables, meta)`.

    Raises:
      PretrainedError: one line naming the problem and its fix: an unknown name or missing file, no
        cached copy while offline or without a network (with the `hf download` command that fetches
        it), a missing or wrong `arch` (naming the architecture that fits), an unreadable file.
    """
    text = os.fspath(name_or_path)
    name = text.removeprefix("timm/")
    if name in TAGS:
        implied = name.split(".")[0]
        if arch is not None and arch != implied:
            raise PretrainedError(f"{name} holds {implied} weights, not {arch}: drop arch, or pass {implied}")
        path = _download(name)
        weights = _state_dict(_read_safetensors(path, f"timm/{name} ({path})"), f"timm/{name}")
        model, variables = _convert(weights, implied, f"timm/{name}")
        meta = _tag_meta(name, model, path)
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise PretrainedError(_not_found(text, path))
        weights = _state_dict(_read_file(path), str(path))
        if arch is None:
            raise PretrainedError(f"{path}: pass the architecture of these weights as arch{_fits(weights)}")
        model, variables = _convert(weights, arch, str(path))
        classes = {"class_names": list(imagenet_class_names())} if model.num_classes == 1000 else {}
        meta = make_meta(
            arch,
            model,
            preprocess=tv.PREPROCESS,
            origin="torchvision",
            step=0,
            **_TORCHVISION_RECIPE,
            **classes,
            source_weights=path.name,
        )
    return model_from_meta(meta), variables, meta


def _tag_meta(name: str, model: nn.Module, path: str) -> dict[str, Any]:
    """The checkpoint meta of the weights `name` (a key of TAGS) converted to `model`, read from `path`."""
    tag = TAGS[name]
    mean, std = NORMALIZATION[tag.normalization]
    return make_meta(
        name.split(".")[0],
        model,
        preprocess={"kind": "mean_std", "mean": list(mean), "std": list(std)},
        origin="torchvision" if name.split(".")[1].startswith("tv") else "timm",
        step=0,
        image_size=[tag.test_size, tag.test_size],
        crop_pct=tag.crop_pct,
        interpolation=tag.interpolation,
        train_image_size=[tag.train_size, tag.train_size],
        class_names=list(imagenet_class_names()),
        source_weights=f"hf://timm/{name}@{Path(path).parent.name}",  # the snapshot's commit
        license=tag.license,
    )


def _not_found(text: str, path: Path) -> str:
    if os.sep in text or path.suffix.lower() in (".safetensors", *_TORCH_SUFFIXES):
        return f"no such file: {path}"
    name = text.removeprefix("timm/")
    arch = name.split(".")[0]
    close = [n for n in TAGS if n.startswith(f"{arch}.")] or difflib.get_close_matches(name, TAGS, n=5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    listing = "resnet_jax.available_pretrained() lists all"
    return f"unknown pretrained name {text!r} and no such file{hint} ({listing})"


def _download(name: str) -> str:
    # Core dependency imported here, not at module level, so that `import resnet_jax` stays light.
    from huggingface_hub import constants, errors, hf_hub_download

    repo = f"timm/{name}"
    try:
        return hf_hub_download(repo, FILENAME)
    except errors.LocalEntryNotFoundError:
        offline = constants.HF_HUB_OFFLINE
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub is unreachable"
        raise PretrainedError(
            f"{repo} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and cannot "
            f"be downloaded ({why}): fetch it where there is a network with `hf download {repo} {FILENAME}` "
            f"into the same HF_HUB_CACHE, or pass the file itself with arch={name.split('.')[0]!r}"
        ) from None
    except errors.RepositoryNotFoundError as e:  # also gated or private: the Hub answers 401/403/404
        raise PretrainedError(
            f"{repo} cannot be read from {constants.ENDPOINT} ({brief(e, 150)}); "
            "check HF_ENDPOINT, or set HF_TOKEN if the repository needs one"
        ) from None
    except errors.EntryNotFoundError:
        raise PretrainedError(f"{repo} has no {FILENAME} on {constants.ENDPOINT}") from None
    except (errors.HfHubHTTPError, OSError, ValueError) as e:
        raise PretrainedError(f"cannot download {repo}: {brief(e)}") from None


def _read_safetensors(path: str | Path, what: str) -> dict[str, Any]:
    # Core dependency imported here, not at module level, so that `import resnet_jax` stays light.
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, TypeError (dtypes)
        raise PretrainedError(f"cannot read {what} as a safetensors file: {brief(e)}") from None


def _read_file(path: Path) -> Any:
    if path.suffix.lower() not in _TORCH_SUFFIXES:
        return _read_safetensors(path, str(path))
    try:
        return tv.load_state_dict(path)
    except ImportError:
        raise PretrainedError(
            f"reading {path} needs torch: pip install 'resnet-jax-flax[torch]', or save the state dict "
            "with safetensors (safetensors.torch.save_file) and pass that"
        ) from None
    except ValueError as e:
        raise PretrainedError(str(e)) from None


def _state_dict(obj: Any, what: str) -> dict[str, Any]:
    try:
        return {k: to_numpy(v) for k, v in tv.unwrap_state_dict(obj).items()}
    except (ValueError, TypeError) as e:
        raise PretrainedError(f"{what}: {brief(e)}") from None


def _convert(weights: dict[str, Any], arch: str, what: str) -> tuple[nn.Module, dict[str, Any]]:
    if arch not in tv.ARCHS:
        raise PretrainedError(f"unknown arch {arch!r} for {what}; one of {', '.join(tv.ARCHS)}")
    try:
        return tv.from_torchvision(weights, arch)
    except ValueError as e:
        # One line: the converter's first (what does not fit, and the architecture that does) and its
        # counts of missing, unexpected and mis-shaped entries.
        first, _, rest = str(e).partition("\n")
        counts = rest.splitlines()[0].rstrip(":") if rest else ""
        fits = "" if "hint:" in first else _fits(weights)
        raise PretrainedError(f"{what}: {first}{fits}" + (f" ({counts})" if counts else "")) from None


def _fits(weights: dict[str, Any]) -> str:
    guess = tv.guess_arch(weights)
    return f"; its keys and shapes fit {guess}: pass arch={guess!r} (CLI: --arch {guess})" if guess else ""
