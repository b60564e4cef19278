"""Accuracy over a whole eval split: a run's checkpoint, or pretrained ImageNet weights.

    python -m train.eval --workdir DIR [--step N] [--data_dir D | --split S | --eval_dir FOLDER] [--hflip]
    python -m train.eval --pretrained resnet50.a1_in1k (--data_dir TFDS_DIR | --eval_dir IMAGENET_VAL)

A run's data comes through its own input pipeline, rebuilt from its config (train/run_config.py): the
in-memory tfds dataset, grain over tfds, or image folders, with the run's eval transform, eval batch size
and resize; the model and its normalisation come from the checkpoint's meta and the per-batch sums from
the training program's eval step. So the accuracy of the final checkpoint equals the final evaluation the
run logged in DIR/metrics.jsonl. `--data_dir`, `--split` and `--eval_dir` point the same pipeline at
other data.

Pretrained weights (resnet_jax.hub) are evaluated on ImageNet's validation images, tfds `imagenet2012`
prepared as ArrayRecord or a folder of class folders, through the streaming pipeline with the weights'
own view: their test size, timm's centre crop (crop_pct) and filter, and their normalisation. Top-1 and
top-5 are printed; timm publishes the figures to compare with.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import hub
from resnet_jax.checkpoint import CheckpointError, find_checkpoint, load_variables, model_from_meta, read_meta
from resnet_jax.preprocess import as_mean_std
from train import programs, run_config, steps
from train.data import create as data_create
from train.data import tfds_data


def evaluate_checkpoint(
    workdir: str,
    *,
    step: int | None = None,
    data_dir: str | None = None,
    split: str | None = None,
    eval_dir: str | None = None,
    hflip: bool = False,
) -> dict[str, Any]:
    """Evaluates a run's checkpoint over a whole eval split, through the run's own input pipeline.

    Args:
      workdir: the training run's directory (config.json and checkpoints/).
      step: the checkpoint to evaluate; default the latest.
      data_dir: tfds data dir; default the run's config.data_dir.
      split: the tfds split; default the run's config.eval_split.
      eval_dir: an image folder (root/<class>/<image>) to evaluate on instead of the run's eval_dir
        (folder runs only: the classes must be the run's).
      hflip: also report 'accuracy_hflip' (flip test-time augmentation, see steps.eval_step).

    Returns:
      {'accuracy', 'accuracy_top5', 'loss', 'examples', 'step', 'checkpoint'} and 'accuracy_hflip' if
      `hflip`.

    Raises:
      FileNotFoundError, CheckpointError, DatasetUnavailableError, ValueError: one line each.
    """
    config = run_config.load(workdir)
    if eval_dir and not (config.get("pipeline") == "grain" and config.get("data_source") == "folder"):
        raise ValueError("--eval_dir is for runs on image folders; this run read a tfds dataset (--data_dir)")
    overrides = {"data_dir": data_dir, "eval_split": split, "eval_dir": eval_dir}
    config.update({k: v for k, v in overrides.items() if v})
    mesh = steps.make_mesh()
    if config.eval_batch_size % mesh.size:
        raise ValueError(
            f"the run's eval_batch_size {config.eval_batch_size} is not a multiple of the {mesh.size} devices"
        )
    step_dir = find_checkpoint(workdir, step=step)
    meta = read_meta(step_dir)
    variables = load_variables(step_dir, meta, sharding=NamedSharding(mesh, P()))
    result = _evaluate(config, mesh, model_from_meta(meta), variables, meta, hflip)
    return {**result, "step": meta["step"], "checkpoint": str(step_dir)}


def evaluate_pretrained(
    name: str,
    *,
    arch: str | None = None,
    data_dir: str | None = None,
    eval_dir: str | None = None,
    dataset: str = "imagenet2012",
    split: str = "validation",
    batch_size: int = 128,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Evaluates pretrained weights (a resnet_jax.hub name, or a weights file with `arch`) on ImageNet.

    Args:
      name, arch: as for resnet_jax.hub.load.
      data_dir: the tfds data dir holding `dataset` prepared as ArrayRecord.
      eval_dir: instead, a folder of class folders whose sorted names are ImageNet's synsets (n01440764
        ... n15075141: the layout of ILSVRC2012_img_val sorted into folders), so labels are the weights'.
      dataset, split: the tfds dataset and split.
      batch_size: images per evaluation batch (a multiple of the device count).
      num_workers: grain worker processes decoding images.

    Returns:
      {'accuracy', 'accuracy_top5', 'loss', 'examples', 'checkpoint'}.
    """
    model, variables, meta = hub.load(name, arch=arch)
    (size, _), mean, std = meta["image_size"], *as_mean_std(meta["preprocess"])[:2]
    view = {"crop_pct": meta.get("crop_pct", 0.875), "interpolation": meta.get("interpolation", "bilinear")}
    config = ml_collections.ConfigDict(
        dict(
            pipeline="grain", data_source="folder" if eval_dir else "tfds", train_dir=eval_dir,
            eval_dir=eval_dir, dataset=dataset, data_dir=data_dir, train_split=split, eval_split=split,
            batch_size=batch_size, eval_batch_size=batch_size, seed=0, image_size=size,
            train_transform="resize_shorter_center_crop", eval_transform="resize_shorter_center_crop",
            num_workers=num_workers, prefetch=2, num_classes=model.num_classes, mean=tuple(mean),
            std=tuple(std), pad=0, **view,
        )
    )  # fmt: skip
    mesh = steps.make_mesh()
    if batch_size % mesh.size:
        raise ValueError(f"--batch_size={batch_size} must be a multiple of the {mesh.size} devices")
    variables = jax.device_put(variables, NamedSharding(mesh, P()))
    return {**_evaluate(config, mesh, model, variables, meta, False), "checkpoint": meta["source_weights"]}


def _evaluate(config, mesh, model, variables, meta, hflip) -> dict[str, Any]:
    """The eval split of `config`'s pipeline through the training program's eval step."""
    mean, std, reverse_channels = as_mean_std(meta["preprocess"])
    if reverse_channels:  # a run's own checkpoints are RGB: fine-tuning turned a Keras stem around
        raise ValueError("these weights expect BGR (Keras 'caffe') input: evaluate them with make_predict_fn")
    state = steps.TrainState(
        step=meta["step"],
        apply_fn=model.apply,
        tx=None,
        opt_state=None,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
    )
    pipeline = data_create.create(config, mesh, jax.random.PRNGKey(config.seed), eval_only=True)
    try:
        mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
        eval_fn = programs.image_eval(mesh, mean, std, hflip=hflip, image_size=pipeline.resize_to)
        return programs.evaluate(eval_fn, state, pipeline.eval_inputs())
    finally:
        pipeline.close()


def format_result(result: dict[str, Any]) -> str:
    """The one line train.eval prints: each figure once."""
    text = (
        f"test accuracy {result['accuracy']:.4f}, top-5 {result['accuracy_top5']:.4f}, loss "
        f"{result['loss']:.4f} on {result['examples']} examples"
    )
    if "accuracy_hflip" in result:
        text += f"; with flip test-time augmentation {result['accuracy_hflip']:.4f}"
    if "step" in result:
        return f"{text} (checkpoint {result['checkpoint']}, step {result['step']})"
    return f"{text} ({result['checkpoint']})"


def main(argv: list[str]) -> None:
    from absl import flags

    from resnet_jax.compilation_cache import enable_compilation_cache
    from resnet_jax.logs import quiet_logs
    from resnet_jax.xla_flags import set_xla_cpu_defaults

    del argv
    f = flags.FLAGS
    quiet_logs(f.verbose)  # the result is the one line this prints
    set_xla_cpu_defaults()  # before JAX starts its backend; a flag the user set in XLA_FLAGS wins
    enable_compilation_cache()  # RESNET_JAX_CACHE_DIR=off disables it
    try:
        if (f.workdir is None) == (f.pretrained is None):
            raise ValueError("pass either --workdir (a training run) or --pretrained (weights to evaluate)")
        if f.pretrained:
            result = evaluate_pretrained(
                f.pretrained, arch=f.arch, data_dir=f.data_dir, eval_dir=f.eval_dir,
                split=f.split or "validation", batch_size=f.batch_size, num_workers=f.num_workers,
            )  # fmt: skip
        else:
            result = evaluate_checkpoint(
                f.workdir, step=f.step, data_dir=f.data_dir, split=f.split, eval_dir=f.eval_dir, hflip=f.hflip
            )
    except (FileNotFoundError, ValueError, CheckpointError, tfds_data.DatasetUnavailableError) as e:
        sys.exit(f"error: {e}")
    print(format_result(result))


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "A training run's directory (config.json, checkpoints/).")
    flags.DEFINE_string("pretrained", None, "Pretrained weights: a resnet_jax.hub name or a weights file.")
    flags.DEFINE_string("arch", None, "--pretrained FILE: its architecture, e.g. resnet50.")
    flags.DEFINE_integer("batch_size", 128, "--pretrained: images per evaluation batch.")
    flags.DEFINE_integer("num_workers", 0, "--pretrained: grain worker processes decoding images.")
    flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
    flags.DEFINE_string("data_dir", None, "tfds data dir (default: the run's config.data_dir).")
    flags.DEFINE_string(
        "split", None, "tfds split (default: the run's config.eval_split; --pretrained: validation)."
    )
    flags.DEFINE_string("eval_dir", None, "Image folder to evaluate on (default: the run's eval_dir).")
    flags.DEFINE_bool("hflip", False, "Also report accuracy with flip test-time augmentation.")
    flags.DEFINE_bool(
        "verbose", False, "Also print other libraries' start-up logs (RESNET_JAX_VERBOSE=1 too)."
    )


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
