"""One checkpoint on disk: save, find, read the meta, load the model and its variables.

A checkpoint is an orbax step directory with two items: `state` ({'params', 'batch_stats', ...},
`ocp.args.StandardSave`) and `meta` (JSON, see `resnet_jax.checkpoint.meta`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import orbax.checkpoint as ocp
from etils import epath

from resnet_jax.checkpoint.errors import CheckpointError
from resnet_jax.checkpoint.meta import model_from_meta, validate_meta
from resnet_jax.checkpoint.trees import (
    abstract_variables,
    checksums,
    corrupted_keys,
    counts,
    flatten,
    listing,
    tree_differences,
)
from resnet_jax.preprocess import short_repr


def absolute(path: str | os.PathLike) -> epath.Path:
    """`path` as an absolute epath (local paths expanded; URLs such as gs://... kept)."""
    path = os.fspath(path)
    return epath.Path(path if "://" in path else os.path.abspath(os.path.expanduser(path)))


def save_checkpoint(
    directory: str | os.PathLike,
    variables: Mapping[str, Any],
    meta: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> epath.Path:
    """Writes one checkpoint step directory (items `state` and `meta`, with checksums), atomically.

    Orbax writes into a temporary directory and renames it when complete, so a killed save never
    leaves something `load_checkpoint` would take for a checkpoint.

    Args:
      directory: the step directory to create (local path or e.g. gs://...). It must not exist
        unless `overwrite`. Name it by the step (e.g. ckpts/0) to make its parent a checkpoints
        directory that `load_checkpoint` can pick the latest step from.
      variables: {'params', 'batch_stats', ...anything else to save}; jax or numpy arrays. 'batch_stats'
        only where the model has BatchNorm (a GroupNorm model has none).
      meta: see `make_meta`; checked against the contract and against the variables' shapes.
      overwrite: replace an existing directory, if it is empty or a checkpoint step directory (see
        `check_replaceable`); anything else is never deleted.

    Returns:
      The absolute path of the step directory.

    Raises:
      ValueError: for bad meta, or params/batch_stats that do not fit the model meta describes
        (listing the keys); FileExistsError if the directory exists and not `overwrite`, or holds
        something other than a checkpoint.
    """
    path = absolute(directory)
    validate_meta(meta)
    abstract = abstract_variables(model_from_meta(meta))
    missing = [c for c in abstract if c not in variables]
    if missing:
        raise ValueError(f"variables must contain {tuple(abstract)} for {meta['model']}; missing {missing}")
    expected = flatten(abstract)
    actual = flatten({c: variables[c] for c in abstract})
    problems = tree_differences(expected, actual, names=("model", "variables"))
    if any(problems.values()):
        what = f"{meta['model']}, {meta['model_kwargs']}"
        summary = f"variables do not fit the model meta describes ({what}): {counts(problems)}"
        raise ValueError("\n".join([summary, *listing(problems)]))
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    check_replaceable(path)
    state = flax.core.unfreeze(dict(variables))
    meta = {**meta, "checksums": checksums(state)}
    ocp.Checkpointer(ocp.CompositeCheckpointHandler()).save(
        path,
        ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=overwrite,
    )
    return path


def _reader() -> ocp.Checkpointer:
    # Explicit item handlers: a bare CompositeCheckpointHandler cannot report the state's metadata,
    # and PyTreeCheckpointHandler reads StandardSave's format with partial restores.
    return ocp.Checkpointer(
        ocp.CompositeCheckpointHandler(
            state=ocp.PyTreeCheckpointHandler(),
            meta=ocp.JsonCheckpointHandler(),
            # A training run's steps also hold the evaluation (`metrics`): known, so orbax does not warn
            # on every load that it found an item it could not restore.
            metrics=ocp.JsonCheckpointHandler(),
        )
    )


def _is_step_dir(path: epath.Path) -> bool:
    return (path / "state").is_dir() or (path / "meta").is_dir() or (path / "_CHECKPOINT_METADATA").exists()


# What a step directory holds: the items save_checkpoint and training runs write, and orbax's markers.
_STEP_ENTRIES = ("state", "meta", "metrics", "_CHECKPOINT_METADATA", "commit_success.txt")


def check_replaceable(path: str | os.PathLike) -> None:
    """Checks that `path` may be deleted to write a checkpoint there: it does not exist, is an empty
    directory, or is a finalized checkpoint step directory with a readable meta and nothing else in it.

    Raises:
      FileExistsError: naming what is there otherwise (a file, a folder of other files, a training
        workdir or checkpoints directory, an unreadable checkpoint), which is left as it is.
    """
    path = absolute(path)
    if not path.exists():
        return
    refuse = f"refusing to replace {path}: it"
    if not path.is_dir():
        raise FileExistsError(f"{refuse} is a file, not a checkpoint directory")
    entries = sorted(p.name for p in path.iterdir())
    other = [e for e in entries if e not in _STEP_ENTRIES]
    if other:
        more = f" and {len(other) - 5} more" if len(other) > 5 else ""
        raise FileExistsError(
            f"{refuse} holds files that are not a checkpoint's ({', '.join(other[:5])}{more}); "
            "choose another path, or move them away yourself"
        )
    if entries and not ocp.path.step.is_path_finalized(path):
        raise FileExistsError(f"{refuse} is an unfinished checkpoint save; remove it yourself")
    if entries:
        try:
            read_meta(path)
        except CheckpointError as e:
            raise FileExistsError(f"{refuse} is not a readable resnet-jax checkpoint ({e})") from e


def finalized_steps(checkpoints_dir: epath.Path) -> list[int]:
    """The steps of the complete (renamed) checkpoints in a checkpoints directory, ascending."""
    return sorted(ocp.path.step.checkpoint_steps(checkpoints_dir))


def step_of(step_dir: epath.Path) -> int | None:
    """The step a step directory is named for, or None if its name is not a number."""
    return int(step_dir.name) if step_dir.name.isdigit() else None


def find_checkpoint(path: str | os.PathLike, *, step: int | None = None) -> epath.Path:
    """The step directory `path` refers to.

    Args:
      path: a training workdir (its checkpoints/ subdirectory is used), a checkpoints directory
        (of <step>/ subdirectories, as orbax's CheckpointManager writes), or one step directory.
      step: which step to pick from a workdir or checkpoints directory; default the latest.
        Temporary (half-written) step directories are never picked.

    Raises:
      FileNotFoundError: for a missing path, no finalized checkpoint, or a step that is not there,
        naming the directory and the steps it has.
    """
    path = absolute(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: the path does not exist")
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}: it is a file, not a checkpoint directory")
    if _is_step_dir(path):
        if not ocp.path.step.is_path_finalized(path):
            raise FileNotFoundError(
                f"{path} is a temporary, uncommitted checkpoint (its save never finished)"
            )
        if step is not None and step_of(path) not in (None, step):
            raise FileNotFoundError(f"{path} is the checkpoint of step {step_of(path)}, not step {step}")
        return path
    checkpoints_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = finalized_steps(checkpoints_dir)
    if not steps:
        temporary = sorted(p.name for p in checkpoints_dir.iterdir() if ocp.path.step.is_path_temporary(p))
        hint = f" (only unfinished saves: {', '.join(temporary)})" if temporary else ""
        raise FileNotFoundError(f"no finalized checkpoint in {checkpoints_dir}{hint}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f"no checkpoint of step {step} in {checkpoints_dir}; it has steps {steps}")
    return checkpoints_dir / str(step)


def _older_steps_hint(step_dir: epath.Path) -> str:
    step = step_of(step_dir)
    older = [s for s in finalized_steps(step_dir.parent) if s < step] if step is not None else []
    if not older:
        return ""
    return (
        f" Older checkpoints in {step_dir.parent}: steps {older}; load one with "
        f"load_checkpoint({str(step_dir.parent)!r}, step={older[-1]})."
    )


def brief(error: Exception, limit: int = 300) -> str:
    """`Type: message`, cut to `limit` characters (tensorstore errors embed kilobytes of spec)."""
    return f"{type(error).__name__}: " + short_repr(str(error).replace("\n", " "), limit)


def unusable(step_dir: epath.Path, why: str) -> CheckpointError:
    """The error for a checkpoint that exists but cannot be used, naming it and the older ones."""
    step = step_of(step_dir)
    at = f"step {step} at {step_dir}" if step is not None else str(step_dir)
    return CheckpointError(f"checkpoint {at} is unusable: {why}." + _older_steps_hint(step_dir))


def read_meta(step_dir: epath.Path) -> dict[str, Any]:
    """The validated meta item of a step directory; CheckpointError if unreadable or malformed."""
    try:
        restored = _reader().restore(step_dir, ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = dict(restored["meta"])
        validate_meta(meta)
    except Exception as e:  # orbax and JSON raise many types
        raise unusable(step_dir, f"cannot read its meta ({brief(e)})") from e
    return meta


def load_meta(path: str | os.PathLike, *, step: int | None = None) -> dict[str, Any]:
    """The `meta` item of a checkpoint (model name and kwargs, preprocess spec, origin, step, ...).

    Args:
      path, step: as for `load_checkpoint`.
    """
    return read_meta(find_checkpoint(path, step=step))


def _shardings(sharding: Any, abstract: dict[str, Any]) -> Any:
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda _: sharding, abstract)
    try:
        return jax.tree.map(lambda _, s: s, abstract, flax.core.unfreeze(sharding))
    except ValueError as e:
        raise ValueError(
            "sharding must be one jax.sharding.Sharding or a pytree of them shaped like "
            f"{{'params', 'batch_stats'}}: {e}"
        ) from e


def load_checkpoint(
    path: str | os.PathLike,
    *,
    step: int | None = None,
    sharding: jax.sharding.Sharding | Any | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Loads a model and its variables from a checkpoint, verifying their checksums.

    Args:
      path: a training workdir (its latest checkpoint), a checkpoints directory (its latest step),
        or one checkpoint step directory. Local or e.g. gs://.
      step: pick this step from a workdir or checkpoints directory instead of the latest.
      sharding: where to put the arrays: one jax.sharding.Sharding for every array, or a pytree of
        them shaped like {'params', 'batch_stats'}; default the first device. The checkpoint may
        have been saved with any other sharding or number of devices.

    Returns:
      (model, variables): the model meta describes, carrying the checkpoint's `preprocess`,
      `image_size` and `class_names`, and {'params', 'batch_stats'} ('params' only for a GroupNorm
      model; the optimizer state is not read).

    Raises:
      FileNotFoundError: for a missing path, an empty directory or an absent step.
      CheckpointError: for a corrupted checkpoint (unreadable, or content that no longer matches the
        checksums saved with it) or one whose state does not fit its meta, naming its path and step
        and the older steps beside it.
    """
    step_dir = find_checkpoint(path, step=step)
    meta = read_meta(step_dir)
    return model_from_meta(meta), load_variables(step_dir, meta, sharding=sharding)


def load_variables(
    step_dir: epath.Path, meta: dict[str, Any], *, sharding: jax.sharding.Sharding | Any | None = None
) -> dict[str, Any]:
    """{'params', 'batch_stats'} of the step directory whose meta is `meta`, checksums verified.

    Args:
      step_dir: from `find_checkpoint`.
      meta: its meta, from `read_meta`.
      sharding: as for `load_checkpoint`.

    Raises:
      CheckpointError: as for `load_checkpoint`.
    """
    model = model_from_meta(meta)
    abstract = abstract_variables(model)
    try:
        saved = _reader().metadata(step_dir).item_metadata["state"]
        missing = [c for c in abstract if c not in saved]
        if missing:
            raise KeyError(f"state has no {missing}; it has {sorted(saved)}")
    except Exception as e:
        raise unusable(step_dir, f"cannot read its state metadata ({brief(e)})") from e
    saved_flat = flatten({c: saved[c] for c in abstract})
    problems = tree_differences(flatten(abstract), saved_flat, names=("model", "checkpoint"))
    if any(problems.values()):
        summary = (
            f"checkpoint {step_dir}: its state does not fit the model its meta describes "
            f"({meta['model']}, {meta['model_kwargs']}): {counts(problems)}"
        )
        raise CheckpointError("\n".join([summary, *listing(problems)]))
    # Restore with the saved dtypes so a round trip is bitwise, onto the requested sharding.
    target = flax.traverse_util.unflatten_dict(
        {k: jax.ShapeDtypeStruct(v.shape, saved_flat[k].dtype) for k, v in flatten(abstract).items()}, sep="/"
    )
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, _shardings(sharding, target)
    )
    try:
        restored = _reader().restore(
            step_dir,
            ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True,
                )
            ),
        )
        variables = {c: flax.core.unfreeze(restored["state"][c]) for c in abstract}
    except Exception as e:
        raise unusable(step_dir, f"cannot read its state ({brief(e)})") from e
    bad = corrupted_keys(variables, meta.get("checksums", {}))
    if bad:
        raise unusable(
            step_dir, f"its content does not match its checksums (corrupted: {', '.join(bad[:5])})"
        )
    return variables
