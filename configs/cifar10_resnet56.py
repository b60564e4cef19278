"""ResNet-56 on CIFAR-10, the paper's recipe (same schedule as ResNet-20)."""

from configs import default


def get_config():
    c = default.get_config()
    c.model = "resnet56"
    return c
