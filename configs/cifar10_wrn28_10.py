"""WRN-28-10 on CIFAR-10 with the Wide ResNet paper's recipe (Zagoruyko & Komodakis 2016, section 3).

SGD with Nesterov momentum 0.9, batch 128, weight decay 5e-4, lr 0.1 divided by 5 (x0.2) at epochs
60, 120 and 160 of 200. 50,000 // 128 = 390 steps per epoch, so the boundaries are in steps.
The authors' Torch code decays every parameter (optim.sgd's weightDecay), BatchNorm's included.

Dropout: the paper's best CIFAR-10 result uses dropout 0.3 between the convs of each block
(`--config.model_kwargs.dropout_rate=0.3`); train_step draws each step's dropout key from the step's own
key, so a resumed run drops the same units. Evaluation (train=False) has no dropout.
"""

from configs import default

STEPS_PER_EPOCH = 50_000 // 128


def get_config():
    c = default.get_config()
    c.model = "wrn28_10"
    c.model_kwargs.dropout_rate = 0.0  # 0.3: the paper's dropout (see the module docstring)
    c.batch_size = 128
    c.num_train_steps = 200 * STEPS_PER_EPOCH
    c.learning_rate = 0.1
    c.schedule = "piecewise"
    c.lr_boundaries = tuple(e * STEPS_PER_EPOCH for e in (60, 120, 160))
    c.lr_decay_factor = 0.2
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 5e-4
    c.weight_decay_on = "all"
    return c
