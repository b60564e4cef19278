"""`python -m train.eval --workdir DIR [--step N]`: a run checkpoint's accuracy on the whole eval split.

The data comes through the run's own input pipeline, rebuilt from its config (train/run_config.py): the
in-memory tfds dataset, grain over tfds, or image folders, with the run's eval transform, eval batch
size and resize.
The model and its normalisation come from the checkpoint's meta, the per-batch sums from the training
program's eval step. So the accuracy of the final checkpoint equals the final evaluation the run logged
in DIR/metrics.jsonl. `--data_dir`, `--split` and `--eval_dir` point the same pipeline at other data.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

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
    mean, std, reverse_channels = as_mean_std(meta["preprocess"])
    if reverse_channels:  # a run's own checkpoints are RGB: fine-tuning turned a Keras stem around
        raise ValueError(f"{step_dir} expects BGR (Keras 'caffe') input: evaluate it with make_predict_fn")
    model = model_from_meta(meta)
    variables = load_variables(step_dir, meta, sharding=NamedSharding(mesh, P()))
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
        result = programs.evaluate(eval_fn, state, pipeline.eval_inputs())
    finally:
        pipeline.close()
    return {**result, "step": meta["step"], "checkpoint": str(step_dir)}


def format_result(result: dict[str, Any]) -> str:
    """The one line train.eval prints: each figure once."""
    text = (
        f"test accuracy {result['accuracy']:.4f}, top-5 {result['accuracy_top5']:.4f}, loss "
        f"{result['loss']:.4f} on {result['examples']} examples"
    )
    if "accuracy_hflip" in result:
        text += f"; with flip test-time augmentation {result['accuracy_hflip']:.4f}"
    return f"{text} (checkpoint {result['checkpoint']}, step {result['step']})"


def main(argv: list[str]) -> None:
    from absl import flags, logging

    del argv
    # orbax and tfds log at INFO through absl; the result is the one line this prints.
    logging.set_verbosity(logging.WARNING)
    from resnet_jax.compilation_cache import enable_compilation_cache

    enable_compilation_cache()  # RESNET_JAX_CACHE_DIR=off disables it
    f = flags.FLAGS
    try:
        result = evaluate_checkpoint(
            f.workdir, step=f.step, data_dir=f.data_dir, split=f.split, eval_dir=f.eval_dir, hflip=f.hflip
        )
    except (FileNotFoundError, ValueError, CheckpointError, tfds_data.DatasetUnavailableError) as e:
        sys.exit(f"error: {e}")
    print(format_result(result))


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "A training run's directory (config.json, checkpoints/).")
    flags.mark_flag_as_required("workdir")
    flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
    flags.DEFINE_string("data_dir", None, "tfds data dir (default: the run's config.data_dir).")
    flags.DEFINE_string("split", None, "tfds split to evaluate (default: the run's config.eval_split).")
    flags.DEFINE_string("eval_dir", None, "Image folder to evaluate on (default: the run's eval_dir).")
    flags.DEFINE_bool("hflip", False, "Also report accuracy with flip test-time augmentation.")


if __name__ == "__main__":
    from absl import app

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    app.run(main)
