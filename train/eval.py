"""`python -m train.eval --workdir DIR [--step N]`: a run checkpoint's accuracy on the whole test split.

The dataset, split and eval batch size come from the run's DIR/config.json; the model and its
normalisation from the checkpoint's meta; batches and per-batch sums from the training program's
input pipeline and `eval_step`. So the accuracy of the latest checkpoint equals the final evaluation
the run logged in DIR/metrics.jsonl.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.checkpoint import CheckpointError, find_checkpoint, load_variables, model_from_meta, read_meta
from resnet_jax.preprocess import as_mean_std
from train import input_pipeline, programs, tfds_data, train


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run saved as `workdir`/config.json.

    Raises:
      FileNotFoundError: naming the file when the workdir holds no config.
    """
    path = os.path.join(os.path.abspath(workdir), "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: --workdir must be a training run's directory")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def evaluate(
    workdir: str,
    *,
    step: int | None = None,
    data_dir: str | None = None,
    split: str | None = None,
    hflip: bool = False,
) -> dict[str, Any]:
    """Evaluates a run's checkpoint over a whole split.

    Args:
      workdir: the training run's directory (config.json and checkpoints/).
      step: the checkpoint to evaluate; default the latest.
      data_dir: tfds data dir; default the run's config.data_dir.
      split: the split; default the run's config.eval_split.
      hflip: also report 'accuracy_hflip' (flip test-time augmentation, see train.eval_step).

    Returns:
      {'accuracy', 'loss', 'examples', 'step', 'checkpoint'} and 'accuracy_hflip' if `hflip`.
    """
    config = load_config(workdir)
    mesh = train.make_mesh()
    if config.eval_batch_size % mesh.size:
        raise ValueError(
            f"the run's eval_batch_size {config.eval_batch_size} is not a multiple of the {mesh.size} devices"
        )
    step_dir = find_checkpoint(workdir, step=step)
    meta = read_meta(step_dir)
    model = model_from_meta(meta)
    variables = load_variables(step_dir, meta, sharding=NamedSharding(mesh, P()))
    mean, std, reverse_channels = as_mean_std(meta["preprocess"])

    builder = tfds_data.get_builder(config.dataset, data_dir or config.data_dir)
    images, labels = tfds_data.load_split(builder, split or config.eval_split)
    if reverse_channels:
        images = np.ascontiguousarray(images[..., ::-1])
    # A run that resized its images (config.image_size) recorded the size it trained at: resize the same way.
    size = tuple(meta.get("image_size") or images.shape[1:3])
    resize_to = size if size != tuple(images.shape[1:3]) else 0
    data = input_pipeline.put_eval(images, labels, config.eval_batch_size, mesh)
    state = train.TrainState(step=meta["step"], apply_fn=model.apply, tx=None, opt_state=None, **variables)
    eval_fn = train.make_eval_fn(
        mesh, jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32), hflip=hflip, image_size=resize_to
    )
    stack = {"image": data.images, "label": data.labels, "mask": data.mask}
    return {**programs.evaluate(eval_fn, state, [stack]), "step": meta["step"], "checkpoint": str(step_dir)}


def main(argv: list[str]) -> None:
    from absl import flags, logging

    from resnet_jax.compilation_cache import enable_compilation_cache
    from resnet_jax.xla_flags import set_xla_cpu_defaults

    del argv
    set_xla_cpu_defaults()  # before JAX starts its backend; a flag the user set in XLA_FLAGS wins
    # orbax and tfds log at INFO through absl; the result is the one line this prints.
    logging.set_verbosity(logging.WARNING)
    tfds_data.hide_gpus_from_tensorflow()

    enable_compilation_cache()  # RESNET_JAX_CACHE_DIR=off disables it
    flags_ = flags.FLAGS
    try:
        result = evaluate(
            flags_.workdir, step=flags_.step, data_dir=flags_.data_dir, split=flags_.split, hflip=flags_.hflip
        )
    except (FileNotFoundError, ValueError, CheckpointError, tfds_data.DatasetUnavailableError) as e:
        sys.exit(f"error: {e}")
    print(
        f"test accuracy {result['accuracy']:.4f} ({result['accuracy']!r}) loss {result['loss']:.4f} "
        f"on {result['examples']} examples, checkpoint {result['checkpoint']} (step {result['step']})"
    )
    if "accuracy_hflip" in result:
        print(f"with flip test-time augmentation: test accuracy {result['accuracy_hflip']:.4f}")


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "A training run's directory (config.json, checkpoints/).")
    flags.mark_flag_as_required("workdir")
    flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
    flags.DEFINE_string("data_dir", None, "tfds data dir (default: the run's config.data_dir).")
    flags.DEFINE_string("split", None, "Split to evaluate (default: the run's config.eval_split).")
    flags.DEFINE_bool("hflip", False, "Also report accuracy with flip test-time augmentation.")


if __name__ == "__main__":
    from absl import app

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    app.run(main)
