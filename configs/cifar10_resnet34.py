"""ResNet-34 (ImageNet layout with a 3x3 CIFAR stem) on CIFAR-10.

The 3x3 stride-1 stem without max-pool suits 32x32 images; the seed article's exact model (7x7 stem,
21,289,802 parameters) is `--config.model_kwargs.cifar_stem=False`.

Cosine schedule with warm-up, 100 epochs, batch 128.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.model = "resnet34"
    c.model_kwargs.cifar_stem = True
    c.schedule = "cosine"
    c.warmup_steps = 1_000
    c.num_train_steps = -1
    c.num_epochs = 100.0
    c.weight_decay = 5e-4
    c.eval_every_steps = 3_900
    c.checkpoint_every_steps = 3_900
    return c
