"""Transfer learning (the seed article's last section): a pretrained backbone, a new head, frozen backbone.

    python -m resnet_jax.convert ... --out /ckpts/resnet50_torchvision       # or any training workdir
    python -m train --config configs/finetune_cifar10.py --workdir DIR \\
        --config.init_checkpoint=/ckpts/resnet50_torchvision

The model (architecture) and the input normalisation come from the checkpoint (see train/finetune.py);
only the new `head` trains and every BatchNorm keeps its running statistics. CIFAR images stay 32x32,
so an ImageNet backbone sees small feature maps; its accuracy is a transfer baseline, not a record.
finetune_cifar10_seed.py is the article's recipe as written (224 px, Dense(1024) head, no augmentation,
cached features). With pad=4 here the features cannot be cached: the whole network runs every step.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model = ""  # the init checkpoint's architecture (train/finetune.py)
    # Required: --config.init_checkpoint=PATH (workdir, checkpoints dir or step dir).
    c.freeze_backbone = True
    c.head_hidden = 0  # 1024: the seed article's head, Dense(1024) + ReLU + Dense(num_classes)
    c.num_classes = 10
    c.batch_size = 128
    c.num_train_steps = -1
    c.num_epochs = 5.0
    c.schedule = "cosine"
    c.learning_rate = 0.1  # the head only: a linear classifier on frozen features
    c.warmup_steps = 0
    c.weight_decay = 0.0
    c.pad = 4
    c.eval_every_steps = 390
    c.checkpoint_every_steps = 390
    return c
