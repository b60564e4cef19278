"""resnet-jax: ResNet (He et al. 2015) in JAX and Flax linen."""

from resnet_jax import convert
from resnet_jax.checkpoint import CheckpointError, load_checkpoint, load_meta, save_checkpoint
from resnet_jax.models import BottleneckBlock, ResidualBlock, ResNet
from resnet_jax.predict import make_predict_fn
from resnet_jax.registry import available_models, create_model

__all__ = [
    "BottleneckBlock",
    "CheckpointError",
    "ResNet",
    "ResidualBlock",
    "available_models",
    "convert",
    "create_model",
    "load_checkpoint",
    "load_meta",
    "make_predict_fn",
    "save_checkpoint",
]
