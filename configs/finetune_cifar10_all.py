"""Fine-tune everything: the backbone too, with its own small learning rate (see finetune_cifar10.py)."""

import ml_collections

from configs import finetune_cifar10


def get_config() -> ml_collections.ConfigDict:
    c = finetune_cifar10.get_config()
    c.freeze_backbone = False  # every parameter trains and BatchNorm statistics adapt to the new data
    c.learning_rate = 0.01  # pretrained weights want a much smaller step than training from scratch
    c.warmup_steps = 100
    c.weight_decay = 1e-4
    c.num_epochs = 10.0
    return c
