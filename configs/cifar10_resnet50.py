"""ResNet-50 (bottleneck, ImageNet layout with a 3x3 CIFAR stem) on CIFAR-10.

The recipe of cifar10_resnet34.py (cosine with warm-up, 100 epochs, batch 128) plus a zero-initialised
last BN in each block. The seed article's exact model (7x7 stem, 23,528,522 parameters) is
`--config.model_kwargs.cifar_stem=False`.
"""

from configs import cifar10_resnet34


def get_config():
    c = cifar10_resnet34.get_config()
    c.model = "resnet50"
    c.model_kwargs.zero_init_last_bn = True
    return c
