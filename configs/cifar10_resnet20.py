"""ResNet-20 on CIFAR-10, the paper's recipe: SGD 0.1, /10 at 32k and 48k, 64k steps, batch 128."""

from configs import default


def get_config():
    return default.get_config()
