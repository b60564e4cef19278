"""Converts torchvision or Keras ResNet weights into a resnet-jax orbax checkpoint.

--arch: torchvision: resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d, resnext101_64x4d,
  wide_resnet50_2, wide_resnet101_2; keras: resnet50/101/152, resnet50v2/101v2/152v2.

  python -m resnet_jax.convert --from torchvision --arch resnet50 --weights resnet50-11ad3fa6.pth --out DIR
  python -m resnet_jax.convert --from keras --arch resnet50 \\
      --weights resnet50_weights_tf_dim_ordering_tf_kernels.h5 --out DIR

DIR becomes one checkpoint step directory (items `state` and `meta`) that
`resnet_jax.checkpoint.load_checkpoint(DIR)` and fine-tuning restore. Its meta records the source
("origin") and the input preprocessing the weights expect.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnet_jax.convert import keras as keras_convert
from resnet_jax.convert import torchvision as torchvision_convert


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.convert",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--from", dest="source", required=True, choices=("torchvision", "keras"))
    parser.add_argument(
        "--arch", required=True, help="a registry name of the source architecture (listed above)"
    )
    parser.add_argument(
        "--weights",
        required=True,
        type=Path,
        help="torchvision: a .pth state dict (also {'state_dict': ...} / {'model': ...} wrapped, "
        "'module.' prefixed); keras: a .h5, .weights.h5 or .keras weights file",
    )
    parser.add_argument("--out", required=True, type=Path, help="checkpoint step directory to create")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="keras only: outputs of the file's 'predictions' layer (default 1000)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    return parser


def convert_file(
    source: str, arch: str, weights: Path, num_classes: int | None = None
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Reads a weights file and converts it.

    Args:
      source: 'torchvision' or 'keras'.
      arch: registry name of the source architecture (torchvision_convert.ARCHS or keras_convert.ARCHS).
      weights: the weights file.
      num_classes: Keras only: classes of the file's head (default 1000).

    Returns:
      (model, variables, meta) ready for `resnet_jax.checkpoint.save_checkpoint`.
    """
    from resnet_jax.checkpoint import make_meta

    if not weights.is_file():
        raise ValueError(f"--weights {weights}: no such file")
    if source == "torchvision":
        if num_classes is not None:
            raise ValueError("--num-classes is for --from keras; torchvision's comes from fc.weight")
        if arch not in torchvision_convert.ARCHS:
            raise ValueError(
                f"unknown torchvision arch {arch!r}; supported: {', '.join(torchvision_convert.ARCHS)}"
            )
        state_dict = torchvision_convert.load_state_dict(weights)
        model, variables = torchvision_convert.from_torchvision(state_dict, arch)
        preprocess, origin = torchvision_convert.PREPROCESS, "torchvision"
    else:
        # Keras on JAX needs no TensorFlow and shares the JAX runtime already loaded here.
        os.environ.setdefault("KERAS_BACKEND", "jax")
        keras_model = keras_convert.load_keras_model(
            weights, arch, 1000 if num_classes is None else num_classes
        )
        model, variables = keras_convert.from_keras(keras_model)
        preprocess, origin = keras_convert.preprocess_for(arch), "keras"
    meta = make_meta(arch, model, preprocess=preprocess, origin=origin, step=0, source_weights=weights.name)
    return model, variables, meta


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit status (errors are one message on stderr, status 1)."""
    args = _parser().parse_args(argv)
    from resnet_jax.checkpoint import save_checkpoint

    if args.out.exists() and not args.overwrite:
        # Before converting (minutes for big nets), and naming the CLI flag rather than the Python argument.
        print(f"error: --out {args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    try:
        model, variables, meta = convert_file(args.source, args.arch, args.weights, args.num_classes)
        path = save_checkpoint(args.out, variables, meta, overwrite=args.overwrite)
    except ImportError as e:
        extra = "torch" if args.source == "torchvision" else "keras"
        print(
            f"error: reading {args.source} weights needs {e.name}: pip install 'resnet-jax-flax[{extra}]'",
            file=sys.stderr,
        )
        return 1
    except FileExistsError:  # created meanwhile
        print(f"error: --out {args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {path}: {args.arch}, {model.num_classes} classes, from {args.source} {args.weights}\n"
        f"inputs must be preprocessed as {meta['preprocess']}\n"
        f"load with: resnet_jax.checkpoint.load_checkpoint({str(path)!r})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
