"""ResNet-110 on CIFAR-10: the paper's recipe with lr 0.01 for the first 400 iterations to warm up."""

from configs import default


def get_config():
    c = default.get_config()
    c.model = "resnet110"
    c.warmup = "constant"
    c.warmup_lr = 0.01
    c.warmup_steps = 400
    return c
