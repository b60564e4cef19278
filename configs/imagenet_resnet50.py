"""ResNet-50 on ImageNet (tfds `imagenet2012`) streamed through grain: Goyal et al. 2017's recipe.

Global batch 1024, lr 0.1 x 1024/256 = 0.4 reached by a linear warm-up over 5 epochs then annealed by a
cosine, SGD with momentum 0.9, weight decay 1e-4 on the kernels, 90 epochs, no label smoothing.
Training images: random_resized_crop to 224 and a random flip; eval: shorter side 256, centre 224.
The dataset must be prepared as ArrayRecord (see README "Streaming input").

Two options of the paper, off here so that the default is the plain fp32 ResNet-50:
  --config.half_precision=True                     bf16 compute (params, BN statistics, logits in fp32)
  --config.model_kwargs.zero_init_last_bn=True     zero gamma in each block's last BN (Goyal et al. 5.1)
"""

from configs import default

TRAIN_EXAMPLES = 1_281_167  # imagenet2012 'train'
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_config():
    c = default.get_config()
    c.model = "resnet50"
    c.model_kwargs.zero_init_last_bn = False
    c.half_precision = False

    c.pipeline, c.data_source = "grain", "tfds"
    c.dataset, c.train_split, c.eval_split = "imagenet2012", "train", "validation"
    c.num_classes = 1000
    c.mean, c.std = IMAGENET_MEAN, IMAGENET_STD
    c.image_size = 224
    c.train_transform, c.eval_transform = "random_resized_crop", "resize_shorter_center_crop"
    c.num_workers = 8  # per host: decoding 1024 JPEGs a step needs many cores
    c.prefetch = 2

    c.batch_size = 1024  # global
    c.eval_batch_size = 1000  # 50 batches cover the 50,000 validation images exactly
    c.num_epochs = 90.0
    c.num_train_steps = -1  # from num_epochs
    c.learning_rate = 0.1 * c.batch_size / 256
    c.schedule = "cosine"
    c.warmup = "linear"
    # The config counts steps; 5 epochs of whole batches (the loop drops each epoch's partial batch).
    c.warmup_steps = 5 * (TRAIN_EXAMPLES // c.batch_size)
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.label_smoothing = 0.0

    c.log_every_steps = 100
    c.eval_every_steps = 5 * (TRAIN_EXAMPLES // c.batch_size)  # every 5 epochs
    c.checkpoint_every_steps = 1000
    return c
