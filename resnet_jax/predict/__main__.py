"""`python -m resnet_jax.predict (--workdir DIR | --pretrained NAME) IMAGE...`: top-5 classes of images.

  python -m resnet_jax.predict --pretrained resnet50.a1_in1k cat.jpg      # timm's weights, ImageNet names
  python -m resnet_jax.predict --pretrained model.safetensors --arch resnet50 cat.jpg
  python -m resnet_jax.predict --workdir RUN_DIR cat.jpg                  # a training run's checkpoint

Images of any size and format Pillow reads are decoded by `resnet_jax.images.decode` (RGB, EXIF
orientation applied, 16-bit scaled to 8) and brought to the model's input as its weights were evaluated:
  - weights recording crop_pct (every --pretrained name or file): timm's evaluation transform, the
    shorter side resized to floor(size / crop_pct) with the recorded interpolation exactly as Pillow
    does, then the centre crop (`resnet_jax.predict.resize_input`);
  - other checkpoints: the size is the checkpoint's `image_size`, else 32x32 for CIFAR-family models
    (3x3 stem) and 224x224 for ImageNet-family ones; CIFAR-family models get the whole image resized
    (as training resized it), ImageNet-family ones the centre crop with crop_pct 0.875 (256 -> 224).
The model's own normalisation comes from the checkpoint. Classes are named by the checkpoint's
`class_names` when it has them (ImageNet names for --pretrained), else by index. Errors are one line
and exit status 1.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

CIFAR_SIZE = (32, 32)
IMAGENET_SIZE = (224, 224)
IMAGENET_CROP_PCT = 0.875  # the usual ImageNet evaluation: resize to 256, crop 224


class PredictError(Exception):
    """Bad input to the command: a one-line message for the user."""


def input_recipe(model: Any) -> tuple[tuple[int, int], float | None, str | None]:
    """(size, crop_pct, interpolation) the command brings images to for `model` (see the module docstring)."""
    if getattr(model, "crop_pct", None) is not None:
        return tuple(model.image_size), model.crop_pct, model.interpolation
    cifar = getattr(model, "cifar_stem", False)
    size = getattr(model, "image_size", None) or (CIFAR_SIZE if cifar else IMAGENET_SIZE)
    size = (int(size[0]), int(size[1]))
    return (size, None, None) if cifar else (size, IMAGENET_CROP_PCT, "bilinear")


def read_images(paths: Sequence[str]) -> list[np.ndarray]:
    """Image files decoded to uint8 [H, W, 3] RGB arrays (`resnet_jax.images.decode`).

    Raises:
      PredictError: Pillow is missing, or a file is missing or not a readable image.
    """
    from resnet_jax.images import DataError, decode

    try:
        return [decode(path) for path in paths]
    except (DataError, ImportError) as e:
        raise PredictError(str(e)) from None


def fit_images(
    images: Sequence[np.ndarray], size: tuple[int, int], crop_pct: float | None, interpolation: str | None
) -> np.ndarray:
    """Images of any sizes as one uint8 [N, H, W, 3] batch of `size`, each resized by `resize_input`."""
    import jax

    from resnet_jax.predict import resize_input

    # Compiled once per distinct image shape; tiny next to the model.
    transform = jax.jit(
        functools.partial(resize_input, image_size=size, crop_pct=crop_pct, interpolation=interpolation)
    )
    return np.stack([np.asarray(transform(image[None]))[0] for image in images])


def top_classes(
    probs: np.ndarray, class_names: Sequence[str] | None, k: int = 5
) -> list[list[tuple[str, float]]]:
    """Per image, the k most probable classes as (name or index, probability), most probable first."""
    order = np.argsort(-probs, axis=-1)[:, :k]
    name = (lambda i: class_names[i]) if class_names else str
    return [[(name(int(i)), float(p[i])) for i in row] for p, row in zip(probs, order, strict=True)]


def predict_files(
    images: Sequence[str],
    *,
    workdir: str | None = None,
    pretrained: str | None = None,
    arch: str | None = None,
    step: int | None = None,
    k: int = 5,
) -> list[list[tuple[str, float]]]:
    """The top-k classes of each image file under a checkpoint or pretrained weights.

    Args:
      images: image file paths.
      workdir: a training workdir, checkpoints directory or checkpoint step directory; or
      pretrained: a name of `resnet_jax.available_pretrained()` or a local weights file (exactly one).
      arch: the architecture of a local `pretrained` file.
      step: a checkpoint step of `workdir` (default the latest).
      k: how many classes per image.

    Raises:
      PredictError: for a missing checkpoint or an unreadable image.
      resnet_jax.CheckpointError: for a corrupt checkpoint, or pretrained weights that cannot be had
        (resnet_jax.hub.PretrainedError).
    """
    import jax

    import resnet_jax
    from resnet_jax.compilation_cache import enable_compilation_cache

    if (workdir is None) == (pretrained is None):
        raise PredictError("pass exactly one of --workdir and --pretrained")
    decoded = read_images(images)  # bad files fail before a download
    if pretrained is not None:
        model, variables = resnet_jax.pretrained(pretrained, arch=arch)
    else:
        try:
            model, variables = resnet_jax.load_checkpoint(workdir, step=step)
        except FileNotFoundError as e:
            raise PredictError(str(e)) from None
    # After the weights are in hand, so that a run that fails to get them leaves no cache directory behind.
    enable_compilation_cache()  # RESNET_JAX_CACHE_DIR=off disables it
    batch = fit_images(decoded, *input_recipe(model))
    logits = resnet_jax.make_predict_fn(model, resize=False)(variables, batch)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    return top_classes(probs, model.class_names, k)


def main(argv: Sequence[str] | None = None) -> int:
    """The command; returns the exit status (0, or 1 after a one-line error on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.predict", description="Top classes of image files under a checkpoint."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="training workdir or checkpoint directory")
    source.add_argument(
        "--pretrained",
        help="pretrained weights: a name such as resnet50.a1_in1k (downloaded from the Hugging Face Hub "
        "once), or a .safetensors/.pth file of torchvision layout (with --arch)",
    )
    parser.add_argument("--arch", default=None, help="architecture of a --pretrained file, e.g. resnet50")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--top", type=int, default=5, help="classes to print per image (default 5)")
    parser.add_argument("images", nargs="+", help="image files (any size; PNG, JPEG, ...)")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print JAX's and XLA's start-up logs (RESNET_JAX_VERBOSE=1 too)",
    )
    args = parser.parse_args(argv)
    if args.arch is not None and args.pretrained is None:
        parser.error("--arch goes with --pretrained FILE")
    if args.step is not None and args.workdir is None:
        parser.error("--step goes with --workdir")

    from resnet_jax.checkpoint import CheckpointError
    from resnet_jax.logs import quiet_logs
    from resnet_jax.xla_flags import set_xla_cpu_defaults

    quiet_logs(args.verbose)  # before the JAX backend starts
    set_xla_cpu_defaults()  # before JAX starts its backend; a flag the user set in XLA_FLAGS wins
    try:
        results = predict_files(
            args.images,
            workdir=args.workdir,
            pretrained=args.pretrained,
            arch=args.arch,
            step=args.step,
            k=max(args.top, 1),
        )
    except (PredictError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path, top in zip(args.images, results, strict=True):
        print(path)
        for name, p in top:
            print(f"  {p:7.2%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
