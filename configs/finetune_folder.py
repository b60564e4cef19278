"""Fine-tune a pretrained backbone on your own image folders: frozen, a new head, 224 px.

    python -m resnet_jax.convert --from torchvision --arch resnet50 --weights resnet50.pth --out ckpts/r50
    python -m train --config configs/finetune_folder.py --workdir runs/mine \\
        --config.init_checkpoint=ckpts/r50 --config.train_dir=DATA/train --config.eval_dir=DATA/val

DATA/train/<class>/<image> and DATA/val/<class>/<image>, images of any size and format PIL reads; the
labels are the sorted subfolder names, their count is the head's size (num_classes=0), and the checkpoint
keeps them (`python -m resnet_jax.predict --workdir runs/mine IMAGE` prints them).

Images stream from disk through grain (train/data/streaming.py): the shorter side resized to 256, then the
centre 224x224, for training and evaluation alike. That is not random, so with the frozen backbone each
image has the same features every epoch: they are computed once (cache_features,
train/cache/streaming.py) and each step runs only the head. To augment instead (when more than the
head trains: --config.freeze_backbone=False --config.freeze_up_to=stage3), pass
--config.train_transform=random_resized_crop; the whole network then runs every step.
--config.head_hidden=1024 gives the seed article's Dense(1024) + ReLU head.
"""

import ml_collections

from configs import finetune_cifar10


def get_config() -> ml_collections.ConfigDict:
    c = finetune_cifar10.get_config()
    c.pipeline = "grain"
    c.data_source = "folder"  # required: --config.train_dir, --config.eval_dir
    c.num_classes = 0  # the folders'
    c.image_size = 224
    c.train_transform = "resize_shorter_center_crop"
    c.eval_transform = "resize_shorter_center_crop"
    c.num_workers = 2  # grain processes decoding JPEGs (only the extraction pass, when cached)
    c.batch_size = 64
    c.eval_batch_size = 128  # also the batch of the feature extraction
    c.num_epochs = 10.0
    c.learning_rate = 0.05  # the head only; batch 64
    c.eval_every_steps = 200  # cheap with cached features: the head over the cached eval split
    c.checkpoint_every_steps = 1_000
    return c
