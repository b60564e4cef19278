"""Checkpoints for research code: save, load, predict, and restore into a new model.

A checkpoint is an orbax step directory with two items:

  state   {'params', 'batch_stats', ...} saved with `ocp.args.StandardSave` (training adds
          'opt_state', 'step' and whatever resuming needs; loading reads only params and batch_stats)
  meta    JSON: {"model": registry name, "model_kwargs": create_model overrides (dtypes as strings),
          "preprocess": a spec from `resnet_jax.preprocess`, "origin": "resnet-jax" | "torchvision" |
          "keras", "step": int, ...anything else}

A training workdir keeps them in WORKDIR/checkpoints/<step>/ (orbax CheckpointManager). Typical use:

    model, variables = load_checkpoint(workdir)
    predict = make_predict_fn(model)          # uint8 images are normalised as the checkpoint says
    logits = predict(variables, images)
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from resnet_jax.models import ResNet
from resnet_jax.preprocess import preprocess_images, validate_preprocess
from resnet_jax.registry import create_model

__all__ = [
    "ORIGINS",
    "CheckpointError",
    "PretrainedResNet",
    "find_checkpoint",
    "load_checkpoint",
    "load_meta",
    "make_meta",
    "make_predict_fn",
    "model_from_meta",
    "preprocess_images",
    "restore_matching",
    "save_checkpoint",
    "validate_meta",
]

ORIGINS = ("resnet-jax", "torchvision", "keras")
VARIABLE_COLLECTIONS = ("params", "batch_stats")
_DTYPE_FIELDS = ("dtype", "param_dtype")
_RESNET_FIELDS = tuple(
    f.name for f in dataclasses.fields(ResNet) if f.init and f.name not in ("parent", "name")
)
# Fields create_model takes as overrides; stage_sizes and stage_widths come from the registry name.
_OVERRIDABLE = tuple(f for f in _RESNET_FIELDS if f not in ("stage_sizes", "stage_widths"))


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be used (corrupted, or its meta and state disagree)."""


class PretrainedResNet(ResNet):
    """A ResNet restored from a checkpoint, carrying how its uint8 inputs must be normalised.

    Attributes:
      preprocess: the checkpoint's preprocess spec (a frozen mapping), used by `make_predict_fn`.
    """

    preprocess: Mapping[str, Any] | None = None


# ----------------------------------------------------------------------------------------------
# meta


def _encode(field: str, value: Any) -> Any:
    if field in _DTYPE_FIELDS:
        return jnp.dtype(value).name
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


def _model_fields(model: ResNet) -> dict[str, Any]:
    return {f: _encode(f, getattr(model, f)) for f in _RESNET_FIELDS}


def make_meta(
    model_name: str,
    model: ResNet,
    *,
    preprocess: Mapping[str, Any],
    origin: str,
    step: int,
    **extra: Any,
) -> dict[str, Any]:
    """Builds a checkpoint's `meta` for a model made by `create_model(model_name, ...)`.

    Args:
      model_name: the registry name the model was built from (e.g. 'resnet50').
      model: the model; every field that differs from the registry default goes into model_kwargs
        (num_classes always does).
      preprocess: the preprocess spec its training used (see `resnet_jax.preprocess`).
      origin: 'resnet-jax', 'torchvision' or 'keras'.
      step: the training step (0 for converted weights).
      **extra: any other JSON-able entries (e.g. dataset, accuracy).

    Raises:
      ValueError: if the model cannot be rebuilt from `model_name` plus overrides, or for a bad spec.
    """
    reference = create_model(model_name)
    fields = _model_fields(model)
    reference_fields = _model_fields(reference)
    kwargs = {f: fields[f] for f in _OVERRIDABLE if f == "num_classes" or fields[f] != reference_fields[f]}
    meta = {
        "model": model_name,
        "model_kwargs": kwargs,
        "preprocess": preprocess,
        "origin": origin,
        "step": step,
        **extra,
    }
    validate_meta(meta)
    rebuilt = _model_fields(model_from_meta(meta))
    differ = [f for f in _RESNET_FIELDS if rebuilt[f] != fields[f]]
    if differ:
        raise ValueError(
            f"model is not a {model_name} (differs in {', '.join(differ)}); pass its registry name"
        )
    return meta


def validate_meta(meta: Mapping[str, Any]) -> None:
    """Checks a checkpoint's meta against the contract (see the module docstring).

    Raises:
      ValueError: naming each missing or malformed entry.
    """
    if not isinstance(meta, Mapping):
        raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
    problems = [
        f"missing {key!r}"
        for key in ("model", "model_kwargs", "preprocess", "origin", "step")
        if key not in meta
    ]
    if "model_kwargs" in meta and not isinstance(meta["model_kwargs"], Mapping):
        problems.append(f"'model_kwargs' must be a dict, got {meta['model_kwargs']!r}")
    if "origin" in meta and meta["origin"] not in ORIGINS:
        problems.append(f"'origin' must be one of {ORIGINS}, got {meta['origin']!r}")
    if "step" in meta and (not isinstance(meta["step"], int | np.integer) or isinstance(meta["step"], bool)):
        problems.append(f"'step' must be an int, got {meta['step']!r}")
    if problems:
        raise ValueError(f"bad checkpoint meta ({'; '.join(problems)}): {dict(meta)!r}")
    validate_preprocess(meta["preprocess"])


def model_from_meta(meta: Mapping[str, Any]) -> PretrainedResNet:
    """The model a checkpoint's meta describes: create_model(meta['model'], **model_kwargs).

    Dtype strings ('float32', 'bfloat16') in model_kwargs are decoded; the preprocess spec is
    attached as `model.preprocess`.
    """
    validate_meta(meta)
    kwargs = dict(meta["model_kwargs"])
    for field in _DTYPE_FIELDS:
        if field in kwargs:
            kwargs[field] = jnp.dtype(kwargs[field])
    base = create_model(meta["model"], **kwargs)
    spec = flax.core.FrozenDict(validate_preprocess(meta["preprocess"]))
    return PretrainedResNet(**{f: getattr(base, f) for f in _RESNET_FIELDS}, preprocess=spec)


# ----------------------------------------------------------------------------------------------
# trees


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def _tree_differences(
    target: Mapping[str, Any], source: Mapping[str, Any], names=("target", "source")
) -> list[str]:
    """One line per key whose shape differs, then per key missing from / unexpected in `source`."""
    first, second = names
    lines = [
        f"shape mismatch {key}: {first} {tuple(target[key].shape)} vs {second} {tuple(source[key].shape)}"
        for key in sorted(target.keys() & source.keys())
        if tuple(target[key].shape) != tuple(source[key].shape)
    ]
    lines += [
        f"missing from {names[1]}: {key} {tuple(target[key].shape)}"
        for key in sorted(target.keys() - source.keys())
    ]
    lines += [
        f"unexpected in {names[1]}: {key} {tuple(source[key].shape)}"
        for key in sorted(source.keys() - target.keys())
    ]
    return lines


def _abstract_variables(model: ResNet) -> dict[str, Any]:
    # Parameter shapes do not depend on the image size (global average pooling before the head).
    images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)
    return {c: flax.core.unfreeze(shapes[c]) for c in VARIABLE_COLLECTIONS}


def restore_matching(
    target_variables: Mapping[str, Any],
    source_variables: Mapping[str, Any],
    *,
    skip: Sequence[str] = (),
) -> dict[str, Any]:
    """Copies source into target for every key except those under a skipped prefix.

    This puts a pretrained backbone into a model with a new head: the result has target's structure,
    source's values (cast to target's dtype, placed with target's sharding) and target's own values
    under `skip`.

    Args:
      target_variables: variables of the new model, e.g. {'params', 'batch_stats'} from model.init.
      source_variables: variables to copy from, e.g. from `load_checkpoint`.
      skip: key prefixes to keep from target, as path components joined by '/', with or without the
        collection: 'head' skips params/head/* (and any other collection's head/*), 'params/head'
        only the params.

    Raises:
      ValueError: listing every key whose shape differs (with both shapes), every key missing from
        source, every unexpected key in source, and every skip prefix that matches no key. Nothing is
        partially loaded.
    """
    prefixes = tuple(p.strip("/") for p in skip)

    def under(key: str, prefix: str) -> bool:
        # A prefix matches whole path components, with or without the leading collection name.
        return any(k == prefix or k.startswith(prefix + "/") for k in (key, key.split("/", 1)[-1]))

    def skipped(key: str) -> bool:
        return any(under(key, p) for p in prefixes)

    target = _flatten(target_variables)
    source = _flatten(source_variables)
    problems = _tree_differences(
        {k: v for k, v in target.items() if not skipped(k)},
        {k: v for k, v in source.items() if not skipped(k)},
    )
    keys = target.keys() | source.keys()
    problems += [f"skip prefix {p!r} matches no key" for p in prefixes if not any(under(k, p) for k in keys)]
    if problems:
        skipping = f" (skipping {', '.join(map(repr, prefixes))})" if prefixes else ""
        raise ValueError(f"cannot restore source into target{skipping}:\n  " + "\n  ".join(problems))

    def copy(key: str, value: Any) -> Any:
        if skipped(key):
            return value
        restored = jnp.asarray(source[key], dtype=value.dtype)
        return jax.device_put(restored, value.sharding) if isinstance(value, jax.Array) else restored

    return flax.traverse_util.unflatten_dict({k: copy(k, v) for k, v in target.items()}, sep="/")


# ----------------------------------------------------------------------------------------------
# save / load


def _absolute(path: str | os.PathLike) -> epath.Path:
    path = os.fspath(path)
    return epath.Path(path if "://" in path else os.path.abspath(os.path.expanduser(path)))


def save_checkpoint(
    directory: str | os.PathLike,
    variables: Mapping[str, Any],
    meta: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> epath.Path:
    """Writes one checkpoint step directory (items `state` and `meta`), atomically.

    Orbax writes into a temporary directory and renames it when complete, so a killed save never
    leaves something `load_checkpoint` would take for a checkpoint.

    Args:
      directory: the step directory to create (local path or e.g. gs://...). It must not exist
        unless `overwrite`. Name it by the step (e.g. ckpts/0) to make its parent a checkpoints
        directory that `load_checkpoint` can pick the latest step from.
      variables: {'params', 'batch_stats', ...anything else to save}; jax arrays (any sharding) or
        numpy arrays.
      meta: see `make_meta`; checked against the contract and against the variables' shapes.
      overwrite: replace an existing directory.

    Returns:
      The absolute path of the step directory.

    Raises:
      ValueError: for bad meta, or params/batch_stats that do not fit the model meta describes
        (listing the keys); FileExistsError if the directory exists and not `overwrite`.
    """
    path = _absolute(directory)
    missing = [c for c in VARIABLE_COLLECTIONS if c not in variables]
    if missing:
        raise ValueError(f"variables must contain {VARIABLE_COLLECTIONS}; missing {missing}")
    model = model_from_meta(meta)
    expected = _flatten(_abstract_variables(model))
    actual = _flatten({c: variables[c] for c in VARIABLE_COLLECTIONS})
    problems = _tree_differences(expected, actual, names=("model", "variables"))
    if problems:
        raise ValueError(
            f"variables do not fit the model meta describes ({meta['model']}, {meta['model_kwargs']}):\n  "
            + "\n  ".join(problems)
        )
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    state = flax.core.unfreeze(dict(variables))
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    checkpointer.save(
        path,
        ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))),
        force=overwrite,
    )
    return path


def _reader() -> ocp.Checkpointer:
    # Explicit item handlers: a bare CompositeCheckpointHandler cannot report the state's metadata,
    # and PyTreeCheckpointHandler reads StandardSave's format with partial restores.
    return ocp.Checkpointer(
        ocp.CompositeCheckpointHandler(state=ocp.PyTreeCheckpointHandler(), meta=ocp.JsonCheckpointHandler())
    )


def _is_step_dir(path: epath.Path) -> bool:
    return (path / "state").is_dir() or (path / "meta").is_dir() or (path / "_CHECKPOINT_METADATA").exists()


def _finalized_steps(checkpoints_dir: epath.Path) -> list[int]:
    return sorted(ocp.path.step.checkpoint_steps(checkpoints_dir))


def _step_of(step_dir: epath.Path) -> int | None:
    name = step_dir.name
    return int(name) if name.isdigit() else None


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
    path = _absolute(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: the path does not exist")
    if _is_step_dir(path):
        if not ocp.path.step.is_path_finalized(path):
            raise FileNotFoundError(
                f"{path} is a temporary, uncommitted checkpoint (its save never finished)"
            )
        if step is not None and _step_of(path) not in (None, step):
            raise FileNotFoundError(f"{path} is the checkpoint of step {_step_of(path)}, not step {step}")
        return path
    checkpoints_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = _finalized_steps(checkpoints_dir)
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
    step = _step_of(step_dir)
    older = [s for s in _finalized_steps(step_dir.parent) if s < step] if step is not None else []
    if not older:
        return ""
    return (
        f" Older checkpoints in {step_dir.parent}: steps {older}; load one with "
        f"load_checkpoint({str(step_dir.parent)!r}, step={older[-1]})."
    )


def _brief(error: Exception, limit: int = 300) -> str:
    # tensorstore errors embed a multi-kilobyte spec; the full text stays on the chained exception.
    text = str(error)
    return text if len(text) <= limit else text[:limit] + "..."


def _unreadable(step_dir: epath.Path, what: str, error: Exception) -> CheckpointError:
    step = _step_of(step_dir)
    at = f"step {step} at {step_dir}" if step is not None else str(step_dir)
    return CheckpointError(
        f"checkpoint {at} is unusable: cannot read {what} ({type(error).__name__}: {_brief(error)})."
        + _older_steps_hint(step_dir)
    )


def _read_meta(step_dir: epath.Path) -> dict[str, Any]:
    try:
        restored = _reader().restore(step_dir, ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = dict(restored["meta"])
        validate_meta(meta)
    except Exception as e:
        raise _unreadable(step_dir, "its meta", e) from e
    return meta


def load_meta(path: str | os.PathLike, *, step: int | None = None) -> dict[str, Any]:
    """The `meta` item of a checkpoint (model name and kwargs, preprocess spec, origin, step).

    Args:
      path, step: as for `load_checkpoint`.
    """
    return _read_meta(find_checkpoint(path, step=step))


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
) -> tuple[PretrainedResNet, dict[str, Any]]:
    """Loads a model and its variables from a checkpoint.

    Args:
      path: a training workdir (its latest checkpoint), a checkpoints directory (its latest step),
        or one checkpoint step directory. Local or e.g. gs://.
      step: pick this step from a workdir or checkpoints directory instead of the latest.
      sharding: where to put the arrays: one jax.sharding.Sharding for every array, or a pytree of
        them shaped like {'params', 'batch_stats'}; default the first device. The checkpoint may
        have been saved with any other sharding or number of devices.

    Returns:
      (model, variables): the model meta describes, with the checkpoint's preprocess spec as
      `model.preprocess`, and {'params', 'batch_stats'} (the optimizer state is not read).

    Raises:
      FileNotFoundError: for a missing path, an empty directory or an absent step.
      CheckpointError: for a corrupted checkpoint or one whose state does not fit its meta, naming
        its path and step and the older steps beside it.
    """
    step_dir = find_checkpoint(path, step=step)
    meta = _read_meta(step_dir)
    model = model_from_meta(meta)
    abstract = _abstract_variables(model)
    try:
        saved = _reader().metadata(step_dir).item_metadata["state"]
        missing = [c for c in VARIABLE_COLLECTIONS if c not in saved]
        if missing:
            raise KeyError(f"state has no {missing}; it has {sorted(saved)}")
    except Exception as e:
        raise _unreadable(step_dir, "its state metadata", e) from e
    problems = _tree_differences(
        _flatten(abstract),
        _flatten({c: saved[c] for c in VARIABLE_COLLECTIONS}),
        names=("model", "checkpoint"),
    )
    if problems:
        raise CheckpointError(
            f"checkpoint {step_dir}: its state does not fit the model its meta describes "
            f"({meta['model']}, {meta['model_kwargs']}):\n  " + "\n  ".join(problems)
        )
    saved_flat = _flatten({c: saved[c] for c in VARIABLE_COLLECTIONS})
    # Restore with the saved dtypes so a round trip is bitwise, onto the requested sharding.
    target = flax.traverse_util.unflatten_dict(
        {k: jax.ShapeDtypeStruct(v.shape, saved_flat[k].dtype) for k, v in _flatten(abstract).items()},
        sep="/",
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
        variables = {c: flax.core.unfreeze(restored["state"][c]) for c in VARIABLE_COLLECTIONS}
    except Exception as e:
        raise _unreadable(step_dir, "its state", e) from e
    return model, variables


# ----------------------------------------------------------------------------------------------
# predict


def make_predict_fn(
    model: ResNet, preprocess: Mapping[str, Any] | None = None
) -> Callable[[Mapping[str, Any], jax.Array | np.ndarray], jax.Array]:
    """A jitted `predict(variables, images) -> float32 logits` in eval mode.

    Args:
      model: the model, e.g. from `load_checkpoint`.
      preprocess: the spec for uint8 images; default `model.preprocess` (set by `load_checkpoint`).

    The returned function takes variables {'params', 'batch_stats'} (other entries are ignored) and
    NHWC images of any batch size: uint8 raw pixels (0-255), normalised by the spec inside the jit,
    or floats already normalised the way training normalised them. It compiles once per input
    shape and dtype; repeated calls with the same shape do not retrace.

    Raises (when called):
      ValueError: for uint8 images and no spec, or images that are not (N, H, W, 3).
    """
    spec = preprocess if preprocess is not None else getattr(model, "preprocess", None)
    if spec is not None:
        spec = validate_preprocess(spec)

    @jax.jit
    def predict(variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
        if images.dtype == jnp.uint8 and spec is None:
            raise ValueError(
                "uint8 images need a preprocess spec: pass make_predict_fn(model, preprocess=spec), "
                "load the model with load_checkpoint, or pass images already normalised as floats"
            )
        if spec is not None:
            images = preprocess_images(images, spec)
        elif images.ndim != 4:
            raise ValueError(
                f"images must be NHWC (batch, height, width, channels), got shape {images.shape}"
            )
        return model.apply({c: variables[c] for c in VARIABLE_COLLECTIONS}, images, train=False)

    return predict
