"""Variable trees: flat views, differences, restoring one tree into another, content checksums."""

from __future__ import annotations

import functools
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The collections a checkpoint holds, those the model has: a GroupNorm model has no batch_stats.
VARIABLE_COLLECTIONS = ("params", "batch_stats")


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b/c': leaf} for a nested dict of arrays."""
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


# How many entries of each kind an error lists before "... and N more": a wrong architecture differs in
# hundreds of keys, and the first few say what is wrong.
LISTED = 10


def tree_differences(
    target: Mapping[str, Any], source: Mapping[str, Any], names: tuple[str, str] = ("target", "source")
) -> dict[str, list[str]]:
    """The keys whose shape differs, those missing from `source` and those unexpected in it.

    Args:
      target, source: flat dicts (see `flatten`) of arrays or shape-carrying leaves.
      names: how the two are called in the lines.

    Returns:
      {'shape mismatch': lines, 'missing from <source>': lines, 'unexpected in <source>': lines}, one
      self-describing line per key (e.g. 'missing from source: params/head/bias (10,)'), sorted; empty
      lists where nothing differs. `counts` and `listing` make them an error message.
    """
    first, second = names
    mismatched = sorted(
        k for k in target.keys() & source.keys() if tuple(target[k].shape) != tuple(source[k].shape)
    )
    return {
        "shape mismatch": [
            f"shape mismatch {k}: {first} {tuple(target[k].shape)} vs {second} {tuple(source[k].shape)}"
            for k in mismatched
        ],
        f"missing from {second}": [
            f"missing from {second}: {k} {tuple(target[k].shape)}"
            for k in sorted(target.keys() - source.keys())
        ],
        f"unexpected in {second}": [
            f"unexpected in {second}: {k} {tuple(source[k].shape)}"
            for k in sorted(source.keys() - target.keys())
        ],
    }


def counts(groups: Mapping[str, Sequence[str]]) -> str:
    """'2 shape mismatch, 83 missing from source': the size of every non-empty group of error lines."""
    return ", ".join(f"{len(lines)} {label}" for label, lines in groups.items() if lines)


def listing(groups: Mapping[str, Sequence[str]], limit: int = LISTED) -> list[str]:
    """The first `limit` lines of every group, indented, each group's rest as '... and N more <label>'."""
    out = []
    for label, lines in groups.items():
        out += [f"  {line}" for line in lines[:limit]]
        if len(lines) > limit:
            out.append(f"  ... and {len(lines) - limit} more {label}")
    return out


def abstract_variables(model: nn.Module) -> dict[str, Any]:
    """The model's collections among VARIABLE_COLLECTIONS as ShapeDtypeStructs, computing nothing.

    'params' always; 'batch_stats' only for a model with BatchNorm layers.
    """
    # Parameter shapes do not depend on the image size (global average pooling before the head).
    images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)
    return {c: flax.core.unfreeze(shapes[c]) for c in VARIABLE_COLLECTIONS if c in shapes}


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
        only the params. Keys under a skipped prefix may exist on either side only.

    Raises:
      ValueError: counting the keys whose shape differs (with both shapes), the keys missing from source,
        the unexpected keys in source and the skip prefixes that match no key, and listing the first
        `LISTED` of each. Nothing is partially loaded.
    """
    prefixes = tuple(p.strip("/") for p in skip)

    def under(key: str, prefix: str) -> bool:
        # A prefix matches whole path components, with or without the leading collection name.
        return any(k == prefix or k.startswith(prefix + "/") for k in (key, key.split("/", 1)[-1]))

    def skipped(key: str) -> bool:
        return any(under(key, p) for p in prefixes)

    target = flatten(target_variables)
    source = flatten(source_variables)
    problems = tree_differences(
        {k: v for k, v in target.items() if not skipped(k)},
        {k: v for k, v in source.items() if not skipped(k)},
    )
    keys = target.keys() | source.keys()
    problems["skip prefix matching no key"] = [
        f"skip prefix {p!r} matches no key" for p in prefixes if not any(under(k, p) for k in keys)
    ]
    if any(problems.values()):
        skipping = f" (skipping {', '.join(map(repr, prefixes))})" if prefixes else ""
        raise ValueError(
            "\n".join(
                [f"cannot restore source into target{skipping}: {counts(problems)}", *listing(problems)]
            )
        )

    def copy(key: str, value: Any) -> Any:
        if skipped(key):
            return value
        restored = jnp.asarray(source[key], dtype=value.dtype)
        return jax.device_put(restored, value.sharding) if isinstance(value, jax.Array) else restored

    return flax.traverse_util.unflatten_dict({k: copy(k, v) for k, v in target.items()}, sep="/")


def _host_value(leaf: Any) -> np.ndarray | None:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        if not leaf.is_fully_replicated:
            return None  # only part of it lives on this process; its owner checks it
        leaf = leaf.addressable_data(0)
    return np.ascontiguousarray(np.asarray(leaf))


def checksums(tree: Any) -> dict[str, str]:
    """{path: crc32 of the array's bytes (hex)} for every array leaf of a pytree (a host copy each).

    Paths join dict keys, attribute names and sequence indices with '/': 'params/head/kernel'.
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = _host_value(leaf)
        if value is not None:
            out[jax.tree_util.keystr(path, simple=True, separator="/")] = f"{zlib.crc32(value.tobytes()):08x}"
    return out


def corrupted_keys(tree: Any, expected: Mapping[str, str]) -> list[str]:
    """The paths of `tree` whose content differs from the `expected` checksums (absent paths pass)."""
    actual = checksums(tree)
    return sorted(k for k, v in actual.items() if k in expected and expected[k] != v)
