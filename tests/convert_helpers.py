"""Reference models for the weight-conversion tests (tests/test_convert_*.py, tests/test_export.py).

The references are the frameworks' own ResNets with random weights, every BatchNorm given random
affine parameters and running statistics measured on random batches (then perturbed), so a wrong
layout, a missing bias, a swapped stride or a wrong epsilon moves the logits far past 1e-4.
The last BN of each block gets a small scale (as trained nets have): otherwise a random 152-layer
net is so ill-conditioned that float32 torch itself differs from float64 torch by ~5e-4.
"""

import os
import subprocess
import sys
from pathlib import Path

# Keras on JAX keeps TensorFlow out of this process; must be set before keras is first imported.
os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4
TORCH_REASON = "torch/torchvision not installed (pip install 'resnet-jax-flax[torch]')"
KERAS_REASON = "keras not installed (pip install 'resnet-jax-flax[keras]')"


def torch_modules():
    """(torch, torchvision.models), skipping the test where they are not installed (CI fails then)."""
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    models = pytest.importorskip("torchvision.models", reason=TORCH_REASON)
    return torch, models


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def torchvision_net(arch: str, num_classes: int, hw: tuple[int, int], seed: int = 0):
    """A torchvision ResNet in eval mode with random weights and non-trivial BatchNorm state."""
    torch, models = torch_modules()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = getattr(models, arch)(weights=None, num_classes=num_classes)
    last_bn = "bn3" if arch.startswith(("resnet5", "resnet1", "resnext", "wide")) else "bn2"
    bns = [(name, m) for name, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for name, bn in bns:
            low, high = (0.1, 0.5) if name.endswith(last_bn) else (0.5, 1.5)
            bn.weight.uniform_(low, high, generator=gen)
            bn.bias.normal_(0.0, 0.2, generator=gen)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
        net.train()
        for _ in range(2):
            net(torch.randn(4, 3, *hw, generator=gen))
        for _, bn in bns:
            bn.running_mean.add_(0.1 * bn.running_var.sqrt() * torch.randn(bn.num_features, generator=gen))
            bn.running_var.mul_(torch.empty(bn.num_features).uniform_(0.8, 1.25, generator=gen))
    return net.eval()


def torch_logits(net, x_nhwc: np.ndarray) -> np.ndarray:
    """The eval-mode logits of a torch model for NHWC images (given to it as NCHW)."""
    torch, _ = torch_modules()
    with torch.no_grad():
        return net(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def meta_state_dict(arch: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of torchvision's `arch` state dict, without allocating its weights."""
    torch, models = torch_modules()
    with torch.device("meta"):
        net = getattr(models, arch)(weights=None)
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def randomize_keras(model, seed: int, calibration: np.ndarray, last_bn: str = "_3_bn") -> None:
    """Random conv biases and BN affine parameters, then BN moving statistics from `calibration`."""
    rng = np.random.default_rng(seed)
    bns = [layer for layer in model.layers if layer.name.endswith("_bn")]
    for layer in model.layers:
        if layer.name.endswith("_conv") and layer.bias is not None:
            layer.bias.assign(rng.normal(0.0, 0.1, layer.bias.shape).astype(np.float32))
    for bn in bns:
        low, high = (0.1, 0.5) if bn.name.endswith(last_bn) else (0.5, 1.5)
        bn.gamma.assign(rng.uniform(low, high, bn.gamma.shape).astype(np.float32))
        bn.beta.assign(rng.normal(0.0, 0.2, bn.beta.shape).astype(np.float32))
        bn.momentum = 0.0  # the moving statistics become the calibration batch's
    model(calibration, training=True)
    for bn in bns:
        bn.momentum = 0.99
        mean, var = np.asarray(bn.moving_mean.value), np.asarray(bn.moving_variance.value)
        bn.moving_mean.assign(mean + 0.1 * np.sqrt(var) * rng.normal(size=mean.shape).astype(np.float32))
        bn.moving_variance.assign(var * rng.uniform(0.8, 1.25, var.shape).astype(np.float32))


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m resnet_jax.convert ARGS` in a fresh interpreter, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "resnet_jax.convert", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
        timeout=300,
    )
