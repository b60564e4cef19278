"""Pre-activation ResNet-164 on CIFAR-10 with the recipe of He et al. 2016 ("Identity Mappings in Deep
Residual Networks", section 4 and its code).

Batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k and 48k iterations, stop at
64k; lr 0.01 for the first 400 iterations, the warm-up the paper uses for ResNet-110 and 164. The authors'
Torch code decays every parameter (optim.sgd's weightDecay), BatchNorm's included.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.model = "preact_resnet164"
    c.batch_size = 128
    c.num_train_steps = 64_000
    c.learning_rate = 0.1
    c.schedule = "piecewise"
    c.lr_boundaries = (32_000, 48_000)
    c.lr_decay_factor = 0.1
    c.warmup = "constant"
    c.warmup_lr = 0.01
    c.warmup_steps = 400
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.weight_decay_on = "all"
    return c
