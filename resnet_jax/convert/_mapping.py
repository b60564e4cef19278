"""Shared machinery: fill a Flax ResNet's variables from a flat {name: array} dict of another framework.

Each converter supplies `source_key(path)`, which names the source entry for one Flax variable and
says how to permute its axes; the same function maps both ways (`assemble_variables` imports,
`source_arrays` exports). Checking every Flax variable against the source in one pass lets the error
count all missing, unexpected and mis-shaped entries at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_jax.checkpoint.trees import listing
from resnet_jax.models import ResNet

# A Flax variable path, e.g. ('params', 'stage1_block0', 'conv1', 'kernel').
Path = tuple[str, ...]
# Source entry name and the axis permutation taking the source array to the Flax layout (None: as is).
SourceKey = tuple[str, tuple[int, ...] | None]


def to_numpy(value: Any) -> np.ndarray:
    """A float32 numpy copy of a torch tensor, a Keras variable or anything array-like."""
    if hasattr(value, "detach"):  # torch.Tensor; .float() first because numpy has no bfloat16
        value = value.detach().cpu().float().numpy()
    # A keras.Variable holds its backend's array (jax.Array, tf.Tensor, ...) in `.value`.
    return np.asarray(getattr(value, "value", value), dtype=np.float32)


def variable_shapes(model: ResNet) -> dict[Path, tuple[int, ...]]:
    """Shapes of every variable of `model`, keyed by flattened path, without allocating them."""
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(abstract).items()}


def source_shape(flax_shape: tuple[int, ...], perm: tuple[int, ...] | None) -> tuple[int, ...]:
    """The source array's shape for a Flax variable of `flax_shape` reached by transposing with `perm`."""
    # np.transpose(src, perm) has shape src.shape[perm[i]] at axis i; invert that.
    if perm is None:
        return flax_shape
    shape = [0] * len(perm)
    for i, axis in enumerate(perm):
        shape[axis] = flax_shape[i]
    return tuple(shape)


def assemble_variables(
    model: ResNet,
    source: Mapping[str, np.ndarray],
    source_key: Callable[[Path], SourceKey],
    *,
    what: str,
    ignored: Iterable[str] = (),
    hint: str = "",
) -> dict[str, Any]:
    """Builds `{'params', 'batch_stats'}` for `model` from `source`, checking names and shapes.

    Args:
      model: the Flax ResNet the variables are for.
      source: flat mapping of source entry name -> float32 numpy array.
      source_key: maps a Flax variable path to (source name, axis permutation or None).
      what: describes the source in the error message, e.g. "torchvision resnet50 state dict".
      ignored: source names with no Flax counterpart that are dropped silently.
      hint: what to do, put first in the error message (e.g. which architecture the keys fit).

    Raises:
      ValueError: the hint, then the counts of missing, unexpected and mis-shaped entries, then the
        first `LISTED` of each (mis-shaped ones with both shapes).
    """
    flat, missing, misshaped = {}, [], []
    used = set(ignored)
    for path, shape in variable_shapes(model).items():
        name, perm = source_key(path)
        used.add(name)
        want = source_shape(shape, perm)
        if name not in source:
            missing.append(f"missing {name} (expected shape {want})")
        elif tuple(source[name].shape) != want:
            misshaped.append(f"mis-shaped {name}: got shape {tuple(source[name].shape)}, expected {want}")
        else:
            array = source[name] if perm is None else np.transpose(source[name], perm)
            flat[path] = jnp.asarray(array, jnp.float32)
    unexpected = [
        f"unexpected {name} (shape {tuple(source[name].shape)})" for name in source if name not in used
    ]
    problems = {"missing": missing, "unexpected": unexpected, "mis-shaped": misshaped}
    if missing or unexpected or misshaped:
        # The hint (the architecture that fits, say) first: the lists can run to hundreds of keys.
        first = f"{what} does not fit the model" + (f"; {hint}" if hint else "")
        summary = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(misshaped)} mis-shaped:"
        raise ValueError("\n".join([first, summary, *listing(problems)]))
    return traverse_util.unflatten_dict(flat)


def source_arrays(
    variables: Mapping[str, Any], source_key: Callable[[Path], SourceKey]
) -> dict[str, np.ndarray]:
    """The inverse of `assemble_variables`: {source name: numpy array in the source's layout}.

    Args:
      variables: {'params', 'batch_stats'} of a model whose every variable `source_key` names.
      source_key: as for `assemble_variables`.
    """
    out = {}
    for path, value in traverse_util.flatten_dict(flax.core.unfreeze(variables)).items():
        name, perm = source_key(path)
        array = np.asarray(value)
        # assemble_variables took transpose(source, perm); argsort(perm) undoes it. A writable C-order copy:
        # torch.from_numpy and safetensors take it as it is.
        array = array if perm is None else np.transpose(array, np.argsort(perm))
        out[name] = np.array(array, order="C", copy=True)
    return out
