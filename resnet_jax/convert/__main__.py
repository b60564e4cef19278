"""Converts ResNet weights between resnet-jax checkpoints and torchvision or Keras.

Import (--from) torchvision or Keras weights into an orbax checkpoint step directory:

  python -m resnet_jax.convert --from torchvision --arch resnet50 --weights resnet50-11ad3fa6.pth --out DIR
  python -m resnet_jax.convert --from keras --arch resnet50 \\
      --weights resnet50_weights_tf_dim_ordering_tf_kernels.h5 --out DIR

  --arch: torchvision: resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d, resnext101_64x4d,
    wide_resnet50_2, wide_resnet101_2; keras: resnet50/101/152, resnet50v2/101v2/152v2.
  DIR becomes one checkpoint step directory (items `state` and `meta`) that
  `resnet_jax.checkpoint.load_checkpoint(DIR)` and fine-tuning restore. Its meta records the source
  ("origin") and the input preprocessing the weights expect.

Export (--to) a checkpoint of a torchvision-layout model (any of the archs above, any number of classes,
frozen BatchNorm included) as a torchvision state dict in a .safetensors file:

  python -m resnet_jax.convert --to torchvision --checkpoint CKPT --out model.safetensors

  CKPT: a training workdir (its latest checkpoint), a checkpoints directory or one step directory.
  In PyTorch:
    torchvision.models.resnet50(num_classes=N).load_state_dict(safetensors.torch.load_file(FILE))
  The file's metadata records the architecture and the input preprocessing the model expects.

--overwrite: --from replaces an existing --out only if it is empty or a checkpoint step directory (never
a folder of other files); --to replaces an existing .safetensors file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnet_jax.convert import keras as keras_convert
from resnet_jax.convert import torchvision as torchvision_convert

_IMPORT_ONLY = ("arch", "weights", "num_classes")
_EXPORT_ONLY = ("checkpoint", "step")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.convert",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="source", choices=("torchvision", "keras"), help="import weights")
    direction.add_argument("--to", dest="target", choices=("torchvision",), help="export a checkpoint")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="PATH",
        help="--from: the checkpoint step directory to create; --to: the .safetensors file to write",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (see above)")
    imports = parser.add_argument_group("import (--from)")
    imports.add_argument(
        "--arch", metavar="ARCH", help="a registry name of the source architecture (listed above)"
    )
    imports.add_argument(
        "--weights",
        type=Path,
        metavar="FILE",
        help="torchvision: a .pth state dict (also {'state_dict': ...} / {'model': ...} wrapped, "
        "'module.' prefixed); keras: a .h5, .weights.h5 or .keras weights file",
    )
    imports.add_argument(
        "--num-classes",
        type=int,
        default=None,
        metavar="N",
        help="keras only: outputs of the file's 'predictions' layer (default 1000)",
    )
    exports = parser.add_argument_group("export (--to)")
    exports.add_argument(
        "--checkpoint", type=Path, metavar="CKPT", help="a workdir, checkpoints directory or step directory"
    )
    exports.add_argument(
        "--step", type=int, default=None, metavar="N", help="the step to export (default: the latest)"
    )
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    needed, foreign, flag = (
        (("arch", "weights"), _EXPORT_ONLY, "--from")
        if args.source
        else (("checkpoint",), _IMPORT_ONLY, "--to")
    )
    for name in needed:
        if getattr(args, name) is None:
            parser.error(f"{flag} needs --{name}")
    for name in foreign:
        if getattr(args, name) is not None:
            parser.error(f"--{name.replace('_', '-')} does not go with {flag}")
    return args


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


def _import(args: argparse.Namespace) -> str:
    from resnet_jax.checkpoint import save_checkpoint
    from resnet_jax.checkpoint.io import check_replaceable

    if args.out.exists():
        # Before converting (minutes for big nets), and naming the CLI flag rather than the Python argument.
        if not args.overwrite:
            raise FileExistsError(f"--out {args.out} exists; pass --overwrite to replace it")
        check_replaceable(args.out)
    model, variables, meta = convert_file(args.source, args.arch, args.weights, args.num_classes)
    if args.out.exists() and not args.overwrite:  # created meanwhile
        raise FileExistsError(f"--out {args.out} exists; pass --overwrite to replace it")
    path = save_checkpoint(args.out, variables, meta, overwrite=args.overwrite)
    return (
        f"wrote {path}: {args.arch}, {model.num_classes} classes, from {args.source} {args.weights}\n"
        f"inputs must be preprocessed as {meta['preprocess']}\n"
        f"load with: resnet_jax.checkpoint.load_checkpoint({str(path)!r})"
    )


def _export(args: argparse.Namespace) -> str:
    import safetensors.numpy

    from resnet_jax.checkpoint import find_checkpoint, load_variables, model_from_meta, read_meta
    from resnet_jax.convert.torchvision_export import to_torchvision, torchvision_arch

    out = args.out
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: name the file *.safetensors (it is written in that format)")
    if out.is_dir():
        raise FileExistsError(f"--out {out} is a directory; name a .safetensors file")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: the folder {out.parent} does not exist")
    step_dir = find_checkpoint(args.checkpoint, step=args.step)
    meta = read_meta(step_dir)
    model, variables = model_from_meta(meta), load_variables(step_dir, meta)
    arch = torchvision_arch(model)
    state_dict = to_torchvision(model, variables)
    info = {"format": "pt", "arch": arch, "num_classes": str(model.num_classes), "step": str(meta["step"])}
    info |= {k: json.dumps(meta[k]) for k in ("preprocess", "image_size", "class_names") if k in meta}
    # Written beside --out and renamed over it: a failed write leaves any earlier file whole.
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        safetensors.numpy.save_file(state_dict, str(partial), metadata=info)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return (
        f"wrote {out}: torchvision {arch}, {model.num_classes} classes, "
        f"from {step_dir} (step {meta['step']})\n"
        f"inputs must be preprocessed as {meta['preprocess']} (NCHW)\n"
        f"load with: torchvision.models.{arch}(num_classes={model.num_classes})"
        f".load_state_dict(safetensors.torch.load_file({str(out)!r}))"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit status (errors are one message on stderr, status 1)."""
    args = _parse(argv)
    try:
        print(_import(args) if args.source else _export(args))
    except ImportError as e:
        extra = {"torchvision": "torch", "keras": "keras"}.get(args.source)
        fix = f"pip install 'resnet-jax-flax[{extra}]'" if extra else f"pip install {e.name}"
        print(f"error: {args.source or args.target} conversion needs {e.name}: {fix}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:  # FileExistsError, FileNotFoundError and CheckpointError included
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
