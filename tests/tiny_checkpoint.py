"""A ResNet-20 checkpoint written without training, for tests of the tools that read checkpoints."""

from __future__ import annotations

import os
from collections.abc import Sequence

CIFAR_SPEC = {"kind": "mean_std", "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def save_tiny_checkpoint(
    workdir: str | os.PathLike,
    *,
    model_name: str = "resnet20",
    num_classes: int = 10,
    class_names: Sequence[str] | None = CIFAR10_CLASSES,
    image_size: Sequence[int] | None = (32, 32),
    seed: int = 0,
) -> str:
    """Saves freshly initialised variables as `workdir`/checkpoints/0, laid out like a training run.

    Args:
      workdir: the directory to create (a training run's layout: checkpoints/<step>/).
      model_name, num_classes: the model.
      class_names, image_size: recorded in the meta as a training run records them; None leaves out.
      seed: initialisation seed.

    Returns:
      the workdir path.
    """
    import jax
    import jax.numpy as jnp

    from resnet_jax import create_model, save_checkpoint
    from resnet_jax.checkpoint import make_meta

    model = create_model(model_name, num_classes=num_classes)
    size = tuple(image_size) if image_size else (32, 32)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, *size, 3)), train=False)
    extra = {}
    if class_names is not None:
        extra["class_names"] = list(class_names)
    if image_size is not None:
        extra["image_size"] = list(image_size)
    meta = make_meta(model_name, model, preprocess=CIFAR_SPEC, origin="resnet-jax", step=0, **extra)
    save_checkpoint(os.path.join(workdir, "checkpoints", "0"), dict(variables), meta)
    return str(workdir)
