"""`python -m resnet_jax.predict --workdir DIR IMAGE...`: the top-5 classes of image files.

Images of any size and format Pillow reads are converted to RGB and resized as the model expects:
  - the size is the checkpoint's `image_size` (recorded by training runs), else 32x32 for CIFAR-family
    models (3x3 stem) and 224x224 for ImageNet-family ones;
  - CIFAR-family models: the whole image is resized to that size (bilinear; the aspect ratio is not kept);
  - ImageNet-family models: the shorter side is resized to size * 256/224 (256 for 224), then the
    centre size x size crop is taken (the usual ImageNet evaluation transform).
The model's own normalisation comes from the checkpoint. Classes are named by the checkpoint's
`class_names` when it has them, else by index. Errors are one line and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

CIFAR_SIZE = (32, 32)
IMAGENET_SIZE = (224, 224)


class PredictError(Exception):
    """Bad input to the command: a one-line message for the user."""


def target_size(model: Any) -> tuple[int, int]:
    """(height, width) the model's images are resized to: the recorded image_size, else the family's."""
    if getattr(model, "image_size", None):
        h, w = model.image_size
        return int(h), int(w)
    return CIFAR_SIZE if getattr(model, "cifar_stem", False) else IMAGENET_SIZE


def load_image(path: str, size: tuple[int, int], *, center_crop: bool) -> np.ndarray:
    """An image file as uint8 RGB (height, width, 3) of `size`.

    Args:
      path: any image file Pillow opens.
      size: (height, width) of the result.
      center_crop: resize the shorter side to size * 256/224, then crop the centre (ImageNet); else
        resize the whole image to `size`.

    Raises:
      PredictError: Pillow is missing, or the file is missing or not a readable image.
    """
    try:
        from PIL import Image
    except ImportError:
        raise PredictError("reading image files needs Pillow: pip install pillow") from None
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            h, w = size
            if center_crop:
                scale = max(h, w) * 256 / 224 / min(image.height, image.width)
                resized = (max(w, round(image.width * scale)), max(h, round(image.height * scale)))
                image = image.resize(resized, Image.Resampling.BILINEAR)
                left, top = (image.width - w) // 2, (image.height - h) // 2
                image = image.crop((left, top, left + w, top + h))
            else:
                image = image.resize((w, h), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError) as e:  # missing file, not an image, truncated data
        raise PredictError(f"cannot read image {path}: {e}") from None


def top_classes(
    probs: np.ndarray, class_names: Sequence[str] | None, k: int = 5
) -> list[list[tuple[str, float]]]:
    """Per image, the k most probable classes as (name or index, probability), most probable first."""
    order = np.argsort(-probs, axis=-1)[:, :k]
    name = (lambda i: class_names[i]) if class_names else str
    return [[(name(int(i)), float(p[i])) for i in row] for p, row in zip(probs, order, strict=True)]


def predict_files(
    workdir: str, images: Sequence[str], *, step: int | None = None, k: int = 5
) -> list[list[tuple[str, float]]]:
    """The top-k classes of each image file under the checkpoint in `workdir`.

    Args:
      workdir: a training workdir, checkpoints directory or checkpoint step directory.
      images: image file paths.
      step: a checkpoint step of `workdir` (default the latest).
      k: how many classes per image.

    Raises:
      PredictError: for a missing checkpoint or an unreadable image.
      resnet_jax.CheckpointError: for a corrupt checkpoint.
    """
    import jax

    import resnet_jax

    try:
        model, variables = resnet_jax.load_checkpoint(workdir, step=step)
    except FileNotFoundError as e:
        raise PredictError(str(e)) from None
    size = target_size(model)
    batch = np.stack([load_image(p, size, center_crop=not model.cifar_stem) for p in images])
    logits = resnet_jax.make_predict_fn(model)(variables, batch)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    return top_classes(probs, model.class_names, k)


def main(argv: Sequence[str] | None = None) -> int:
    """The command; returns the exit status (0, or 1 after a one-line error on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.predict", description="Top classes of image files under a checkpoint."
    )
    parser.add_argument("--workdir", required=True, help="training workdir or checkpoint directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--top", type=int, default=5, help="classes to print per image (default 5)")
    parser.add_argument("images", nargs="+", help="image files (any size; PNG, JPEG, ...)")
    args = parser.parse_args(argv)

    from resnet_jax.checkpoint import CheckpointError
    from resnet_jax.compilation_cache import enable_compilation_cache
    from resnet_jax.xla_flags import set_xla_cpu_defaults

    set_xla_cpu_defaults()  # before JAX starts its backend; a flag the user set in XLA_FLAGS wins
    enable_compilation_cache()  # RESNET_JAX_CACHE_DIR=off disables it
    try:
        results = predict_files(args.workdir, args.images, step=args.step, k=max(args.top, 1))
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
