"""resnet-jax: ResNet v1 and v2, ResNeXt and Wide ResNet in JAX and Flax linen."""

from resnet_jax import convert, hub, images, layers
from resnet_jax.blocks import (
    BasicBlock,
    BottleneckBlock,
    PreActBasicBlock,
    PreActBottleneckBlock,
    ResidualBlock,  # old name of BasicBlock, kept for existing imports
)
from resnet_jax.checkpoint import CheckpointError, load_checkpoint, load_meta, save_checkpoint
from resnet_jax.compilation_cache import enable_compilation_cache
from resnet_jax.hub import available_pretrained, pretrained
from resnet_jax.models import ResNet
from resnet_jax.predict import make_predict_fn
from resnet_jax.registry import available_models, create_model
from resnet_jax.xla_flags import set_xla_cpu_defaults

__all__ = [
    "BasicBlock",
    "BottleneckBlock",
    "CheckpointError",
    "PreActBasicBlock",
    "PreActBottleneckBlock",
    "ResNet",
    "ResidualBlock",
    "available_models",
    "available_pretrained",
    "convert",
    "create_model",
    "enable_compilation_cache",
    "hub",
    "images",
    "layers",
    "load_checkpoint",
    "load_meta",
    "make_predict_fn",
    "pretrained",
    "save_checkpoint",
    "set_xla_cpu_defaults",
]
