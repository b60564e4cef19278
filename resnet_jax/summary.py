"""Print a model's layers, output shapes and parameter counts.

python -m resnet_jax.summary resnet50 --num-classes 10 --image-size 224
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


def summary(
    name: str, *, num_classes: int | None = None, image_size: int = 224, depth: int | None = 2
) -> str:
    """The layer table of `name` for one `image_size`² RGB image, ending with the trainable total."""
    model = create_model(name, num_classes=num_classes)
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    table = model.tabulate(
        jax.random.key(0),
        x,
        train=False,
        depth=depth,
        console_kwargs={"width": 140, "force_terminal": sys.stdout.isatty()},
    )
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    return f"{table}\nTrainable parameters: {count_params(variables):,}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_jax.summary", description=__doc__.splitlines()[0])
    parser.add_argument("model", help=f"one of: {', '.join(available_models())}")
    parser.add_argument("--num-classes", type=int, default=None, help="head outputs (default: the family's)")
    parser.add_argument("--image-size", type=int, default=224, help="input height and width in pixels")
    parser.add_argument("--depth", type=int, default=2, help="module nesting shown (0 = whole model only)")
    args = parser.parse_args(argv)
    if args.image_size < 1:
        parser.error(f"--image-size must be positive, got {args.image_size}")
    try:
        text = summary(args.model, num_classes=args.num_classes, image_size=args.image_size, depth=args.depth)
    except ValueError as e:
        parser.error(str(e))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
