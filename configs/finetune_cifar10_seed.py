"""The seed article's transfer recipe as written: an ImageNet ResNet-50 on CIFAR-10 at 224x224, frozen.

    python -m train --config configs/finetune_cifar10_seed.py --workdir DIR

The weights are the ones the article's PyTorch code loads, `torchvision.models.resnet50(pretrained=True)`:
torchvision's IMAGENET1K_V1 (76.13% top-1), which timm publishes on the Hugging Face Hub as
`timm/resnet50.tv_in1k`. They are downloaded once into the Hugging Face cache (no PyTorch needed):
init_checkpoint=hub:resnet50.tv_in1k. Offline, fetch them elsewhere with
`hf download timm/resnet50.tv_in1k model.safetensors` and copy the cache, or point init_checkpoint at any
checkpoint. The article's Keras version loads Keras' own ResNet50 weights (converted from Caffe, another
training run): convert those with `python -m resnet_jax.convert --from keras --arch resnet50 --weights
W.h5 --out CKPT` and pass --config.init_checkpoint=CKPT.

The article's Keras version: ResNet50(weights='imagenet', include_top=False) fed 224x224 inputs, every
layer frozen, then GlobalAveragePooling -> Dense(1024, relu) -> Dense(10, softmax). Here: CIFAR-10's
32x32 images are resized to 224 inside the jitted step (bilinear, antialiased:
resnet_jax.preprocess.resize_images; make_predict_fn resizes raw images the same way), the backbone is
frozen with its BatchNorm running statistics, and head_hidden=1024 gives Dense(1024) + ReLU + Dense(10)
(softmax is in the loss).

The article's PyTorch variant replaces `fc` by Linear(2048, 10) and trains only it: the same config with
one field changed, --config.head_hidden=0.

Optimiser and epochs: what the article compiles its Keras model with and how many epochs it trains are
not recorded in this repository, so this config keeps the project's SGD with momentum 0.9 (the only
optimiser train/optim.py builds, and what the PyTorch transfer-learning tutorial that the article's
PyTorch variant follows uses for `fc`: lr 0.001 there for batch 4; here lr 0.01 for batch 128 with a
cosine decay) for 10 epochs. No augmentation, as the article's recipe: the frozen backbone then gives
each image the same features every epoch, so they are computed once (cache_features, train/cache/memory.py)
and only the head runs per step. --config.flip=True adds flips (cached too); --config.pad=4 adds random
crops, which cannot be cached (the whole network then runs every step).
"""

import ml_collections

from configs import finetune_cifar10


def get_config() -> ml_collections.ConfigDict:
    c = finetune_cifar10.get_config()
    c.init_checkpoint = "hub:resnet50.tv_in1k"  # torchvision's IMAGENET1K_V1: the article's weights
    c.image_size = 224
    c.freeze_backbone = True
    c.head_hidden = 1024  # 0: the article's PyTorch variant (a new Linear(2048, 10) only)
    c.cache_features = True
    c.pad = 0
    c.flip = False
    c.num_epochs = 10.0
    c.learning_rate = 0.01
    c.momentum = 0.9
    c.weight_decay = 0.0
    c.schedule = "cosine"
    c.eval_batch_size = 500  # also the batch of the one feature-extraction pass
    return c
