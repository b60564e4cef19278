"""Checkpoints: the on-disk format, one checkpoint's save and load, and a training run's checkpoints.

A checkpoint is an orbax step directory with two items:

  state   {'params', 'batch_stats', ...} saved with `ocp.args.StandardSave` (training adds
          'opt_state', 'step' and whatever resuming needs; loading reads only params and batch_stats)
  meta    JSON: how to rebuild and feed the model, and checksums of every array (see `meta`)

Typical use:

    model, variables = load_checkpoint(workdir)
    predict = make_predict_fn(model)          # uint8 images are normalised as the checkpoint says
    logits = predict(variables, images)

Modules: `meta` (the schema), `trees` (restore_matching, checksums), `io` (one checkpoint),
`run` (a training run's checkpoints: retention, integrity, resume), `errors` (CheckpointError).
"""

from resnet_jax.checkpoint.errors import CheckpointError
from resnet_jax.checkpoint.io import (
    find_checkpoint,
    load_checkpoint,
    load_meta,
    load_variables,
    read_meta,
    save_checkpoint,
)
from resnet_jax.checkpoint.meta import ORIGINS, make_meta, model_from_meta, validate_meta
from resnet_jax.checkpoint.run import RunCheckpoints
from resnet_jax.checkpoint.trees import restore_matching

__all__ = [
    "ORIGINS",
    "CheckpointError",
    "RunCheckpoints",
    "find_checkpoint",
    "load_checkpoint",
    "load_meta",
    "load_variables",
    "make_meta",
    "model_from_meta",
    "read_meta",
    "restore_matching",
    "save_checkpoint",
    "validate_meta",
]
