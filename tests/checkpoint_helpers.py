"""A ResNet-20 with non-trivial BatchNorm statistics, saved and compared: shared by the checkpoint and
prediction tests."""

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.checkpoint import (
    make_meta,
    save_checkpoint,
)

CIFAR_SPEC = {"kind": "mean_std", "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}


def random_variables(model, seed=0):
    """Initialised variables with random (non-default) batch statistics, so restores are meaningful."""
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)), train=False)
    leaves, treedef = jax.tree.flatten(variables["batch_stats"])
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    stats = [jax.random.uniform(k, x.shape, x.dtype, 0.5, 1.5) for k, x in zip(keys, leaves, strict=True)]
    return {"params": variables["params"], "batch_stats": jax.tree.unflatten(treedef, stats)}


def assert_bitwise(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for path, x in jax.tree_util.tree_leaves_with_path(a):
        y = b
        for key in path:
            y = y[key.key]
        assert x.dtype == y.dtype, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def save(directory, model, variables, step=0, spec=CIFAR_SPEC, name="resnet20", **extra):
    meta = make_meta(name, model, preprocess=spec, origin="resnet-jax", step=step)
    return save_checkpoint(directory, {**variables, **extra}, meta)


def uint8_images(n, seed=0, size=32):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
