"""The PyTorch side of the comparison: a ResNet-20 written from the paper, torchvision's resnet50, and
their training and eval steps.

ResNet-20 follows He et al. 2015, section 4.2: a 3x3 conv with 16 filters, then three stages of n=3 basic
blocks with 16, 32 and 64 filters (the first block of stages 2 and 3 has stride 2), option-A shortcuts
(stride-2 subsampling with the extra channels zero-filled; no parameters), global average pooling and a
10-way fully connected layer. Convs have no bias (each is followed by BatchNorm); weights use Kaiming-normal
(fan_out), as resnet_jax does. Nothing here imports resnet_jax: it is an independent reference.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus the option-A shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.extra = planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.extra == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))  # zero channels appended (option A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
    """The paper's 6n+2-layer CIFAR ResNet (n=3 is ResNet-20)."""

    def __init__(self, n: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, in_planes = [], 16
        for s, planes in enumerate((16, 32, 64)):
            for b in range(n):
                blocks.append(BasicBlock(in_planes, planes, 2 if s > 0 and b == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def create(name: str) -> nn.Module:
    """'resnet20' (above) or 'resnet50' (torchvision, random init)."""
    if name == "resnet20":
        return CifarResNet(3)
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50()
    raise ValueError(f"unknown model {name!r}; use resnet20 or resnet50")


def make_steps(model: nn.Module, dtype: str, lr: float = 0.1, weight_decay: float = 1e-4):
    """(train_step(x, y), eval_step(x)) in float32 eager or under CPU bf16 autocast.

    train_step is forward + cross-entropy + backward + SGD(momentum 0.9) update, the same optimiser as
    the project's; eval_step is a no_grad forward in eval mode.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    autocast = dtype == "bfloat16"

    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    @torch.no_grad()
    def eval_step(x: torch.Tensor) -> torch.Tensor:
        model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return model(x)

    return train_step, eval_step


def forward_flops(model: nn.Module, size: int) -> float:
    """FLOPs of one forward pass per image, counted as 2 x the multiply-adds of every conv and linear layer.

    The documented convention for "model FLOPs" (BatchNorm, ReLU, pooling and the residual adds are
    left out; they are under 1% here): a conv contributes out_h * out_w * out_ch * (in_ch / groups) * kh * kw
    multiply-adds. ResNet-20 gives 40.55 M multiply-adds (81.1 MFLOPs), torchvision resnet50 4.09 G
    (8.18 GFLOPs) at 224x224.
    """
    macs = []

    def hook(m, inputs, out):
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            macs.append(out[0].numel() * (m.in_channels // m.groups) * kh * kw)
        else:
            macs.append(out[0].numel() * m.in_features)

    # Shapes are all the count needs: run a copy on the meta device, which computes no values.
    model = copy.deepcopy(model).to("meta").eval()
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size, device="meta"))
    return 2.0 * sum(macs)
