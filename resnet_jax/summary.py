"""Print a model's layers, output shapes and parameter counts.

python -m resnet_jax.summary resnet50 --num-classes 10 --image-size 224

The image size defaults to the model's native one: 32 for the CIFAR nets, 224 for the ImageNet nets.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

from resnet_jax.registry import available_models, create_model


def count_params(variables: dict) -> int:
    """Number of trainable parameters (the `params` collection), as torchvision and Keras count them."""
    return sum(x.size for x in jax.tree.leaves(variables["params"]))


def native_image_size(name: str) -> int:
    """The input size a registry model is designed for: 32 for the CIFAR nets, 224 for ImageNet's."""
    return 32 if create_model(name).cifar_stem else 224


def summary(
    name: str, *, num_classes: int | None = None, image_size: int | None = None, depth: int | None = 2
) -> str:
    """The layer table of `name` for one RGB image, ending with the trainable and total counts.

    Args:
      name: a registry name (`available_models()`).
      num_classes: head outputs; None: the family's.
      image_size: input height and width; None: `native_image_size(name)`.
      depth: module nesting shown in the table (0: the whole model only).
    """
    model = create_model(name, num_classes=num_classes)
    size = native_image_size(name) if image_size is None else image_size
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    table = model.tabulate(
        jax.random.key(0),
        x,
        train=False,
        depth=depth,
        console_kwargs={"width": 140, "force_terminal": sys.stdout.isatty()},
    )
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    stats = sum(x.size for c, tree in variables.items() if c != "params" for x in jax.tree.leaves(tree))
    return (
        f"{name} on {size}x{size}x3 images. The table's total counts every variable, BatchNorm running "
        f"statistics (batch_stats: {stats:,}) included; the trainable count below is the params only.\n"
        f"{table}\nTrainable parameters: {count_params(variables):,}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_jax.summary", description=__doc__.splitlines()[0])
    parser.add_argument("model", help=f"one of: {', '.join(available_models())}")
    parser.add_argument("--num-classes", type=int, default=None, help="head outputs (default: the family's)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input height and width in pixels (default: the model's native size, 32 CIFAR or 224 ImageNet)",
    )
    parser.add_argument("--depth", type=int, default=2, help="module nesting shown (0 = whole model only)")
    args = parser.parse_args(argv)
    if args.image_size is not None and args.image_size < 1:
        parser.error(f"--image-size must be positive, got {args.image_size}")
    try:
        text = summary(args.model, num_classes=args.num_classes, image_size=args.image_size, depth=args.depth)
    except ValueError as e:
        parser.error(str(e))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
