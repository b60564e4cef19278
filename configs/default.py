"""Default hyperparameters: ResNet-20 on CIFAR-10 with the paper's recipe (He et al. 2015, section 4.2).

Every other config starts from `get_config()` here and changes a few fields, so this file is also the
list of every field the training program accepts (`--config.<field>=value` overrides any of them).
"""

import ml_collections
from ml_collections import config_dict

# Per-channel statistics of the CIFAR-10 training set (the values torchvision recipes use).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # Model: a name from resnet_jax.available_models() plus create_model overrides. With init_checkpoint:
    # '' or the checkpoint's own architecture (fine-tuning never changes it).
    c.model = "resnet20"
    c.model_kwargs = ml_collections.ConfigDict()  # e.g. {'zero_init_last_bn': True}
    c.half_precision = False  # bf16 compute (params, BN statistics and logits stay float32)

    # Data (tensorflow-datasets). data_dir None: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
    c.dataset = "cifar10"
    c.data_dir = config_dict.placeholder(str)
    c.train_split = "train"
    c.eval_split = "test"
    c.num_classes = 10  # 0: the data's own count (image folders: their subfolders; tfds: its label feature)
    # 'mean_std': per-channel (img/255 - mean)/std; 'per_pixel': subtract the training set's mean
    # image (the paper's "per-pixel mean subtracted"), then divide by the per-channel std.
    c.normalization = "mean_std"
    c.mean = CIFAR10_MEAN
    c.std = CIFAR10_STD
    c.pad = 4  # pixels of zero padding before the random crop; 0 disables the crop
    c.flip = True  # random horizontal flips (memory pipeline; 'pad_crop_flip' below always flips)

    # Input pipeline. 'memory': both splits on the devices, augmented there by pad/flip (CIFAR-sized
    # data). 'grain': streamed from disk by train/data/streaming.py, decoded and augmented on the host by
    # train_transform/eval_transform (ImageNet, image folders); normalization must be 'mean_std'.
    c.pipeline = "memory"  # memory | grain
    c.data_source = "tfds"  # grain: tfds (dataset prepared as ArrayRecord) | folder (train_dir, eval_dir)
    c.train_dir = config_dict.placeholder(str)  # folder source: root/<class>/<image>; labels = sorted names
    c.eval_dir = config_dict.placeholder(str)
    # Side of the images the model sees. 0: the dataset's own size. memory: >0 resizes each batch inside
    # the jitted step (after pad/flip, before normalisation; bilinear with antialiasing,
    # resnet_jax.preprocess.resize_images), so the split stays uint8 at its stored size on the devices;
    # e.g. 224 feeds CIFAR-10 to an ImageNet backbone as the seed article does. grain: the side its sized
    # transforms (random_resized_crop, resize_shorter_center_crop, resize) output; they need >0.
    c.image_size = 0
    # grain transforms (train/data/image_ops.py TRANSFORMS): random_resized_crop |
    # resize_shorter_center_crop | resize | pad_crop_flip (pad by `pad`, random crop, flip; keeps the
    # size) | none (decode only).
    c.train_transform = "pad_crop_flip"
    c.eval_transform = "none"
    # resize_shorter_center_crop's view, timm's: the shorter side resized to floor(image_size / crop_pct),
    # then the centre crop. 0: the init checkpoint's (pretrained weights record theirs), else 0.875.
    c.crop_pct = 0.0
    # The grain transforms' resize filter: bilinear | bicubic. '': the init checkpoint's, else bilinear.
    c.interpolation = ""
    c.num_workers = 0  # grain worker processes per host decoding images; 0: in the training process
    # Folder source: every file's header is checked before training (train/data/image_check.py). False:
    # bad files stop the run before anything is written, listed with their reasons; True: they are
    # left out with one warning line (batches stay a function of (seed, step) over the other files).
    c.skip_bad_images = False
    c.prefetch = 2  # grain: global batches put on the devices ahead of the step

    # Optimisation: SGD with momentum; the paper's lr 0.1, /10 at 32k and 48k, stop at 64k, batch 128.
    c.batch_size = 128  # global, over all devices and processes
    c.eval_batch_size = 1000
    # Also report 'accuracy_hflip': the prediction from the mean softmax of each test image and its
    # mirror image (flip test-time augmentation). 'accuracy' always stays the single-view figure.
    c.eval_hflip = False
    c.num_train_steps = 64_000  # -1: num_epochs * steps per epoch
    c.num_epochs = -1.0
    c.learning_rate = 0.1  # base (peak) learning rate
    c.schedule = "piecewise"  # piecewise | cosine | onecycle | constant
    c.lr_boundaries = (32_000, 48_000)  # piecewise: steps where lr is multiplied by lr_decay_factor
    c.lr_decay_factor = 0.1
    c.warmup_steps = 0
    c.warmup = "linear"  # linear (0 -> lr) | constant (warmup_lr, then lr; the paper's ResNet-110)
    c.warmup_lr = 0.01
    c.onecycle_pct_start = 0.25  # onecycle: fraction of the steps spent rising to the peak lr
    c.onecycle_div_factor = 25.0  # onecycle: start lr = peak / div_factor
    c.onecycle_final_div_factor = 1e4  # onecycle: end lr = start lr / final_div_factor
    c.momentum = 0.9
    c.nesterov = False
    c.weight_decay = 1e-4
    c.weight_decay_on = "kernels"  # kernels (conv and dense kernels only) | all (every parameter)
    c.label_smoothing = 0.0

    # Initialisation from a checkpoint (fine-tuning, see train/finetune.py): a training workdir, a
    # checkpoints directory or a step directory (python -m resnet_jax.convert writes one); unset: none.
    c.init_checkpoint = config_dict.placeholder(str)
    c.init_step = -1  # -1: the checkpoint directory's latest step
    c.freeze_backbone = False  # only head_modules train; every BatchNorm keeps its running statistics
    # Partial fine-tuning (with freeze_backbone=False): none | stem | stage1 .. stageN (the stem and stages
    # 1..N) | all (the same as freeze_backbone=True). Frozen parameters get zero updates and their
    # BatchNorms use and keep their running statistics (ResNet's norm_frozen_up_to).
    c.freeze_up_to = "none"
    c.backbone_lr_multiplier = 1.0  # the unfrozen backbone trains at this times the head's learning rate
    # Frozen backbone (freeze_backbone) and in-memory data: run the backbone once over each split and
    # train the head on its pooled features (train/cache/memory.py). Used only where it gives the same result
    # as running it every step: pad=0 (a random crop cannot be cached; flip is: both views are cached)
    # and no dropout; otherwise the run says so in one line and runs the whole network every step.
    c.cache_features = True
    c.head_hidden = 0  # >0: Dense(head_hidden) + ReLU before the head (the seed article's 1024)
    c.head_modules = ("head",)  # top-level parameters that start fresh (frozen: the only ones trained)

    # Loop, logging, checkpoints.
    c.seed = 0
    c.log_every_steps = 100
    c.eval_every_steps = 2_000  # -1: only at the end
    c.checkpoint_every_steps = 2_000
    c.keep_checkpoints = 3  # the latest N; the best by test accuracy is kept as well
    c.stop_after_steps = -1  # >0: save and stop once this step is reached (simulates preemption)
    # >=0: resume from this checkpoint step instead of the latest healthy one; the newer checkpoints are
    # moved to superseded_checkpoints/ (never deleted) and config_history.jsonl records the choice.
    c.resume_step = -1
    c.progress_bar = True
    # How many steps the host may dispatch ahead of the device: keeps the progress bar on finished steps
    # and a stop request answered within a step or two.
    c.max_steps_ahead = 2
    # Multi-host: call jax.distributed.initialize() before anything touches the devices. On TPU pods,
    # SLURM and Open MPI the three fields below are detected; elsewhere set all three on every process.
    c.distributed = False
    c.coordinator_address = config_dict.placeholder(str)  # "host:port" of process 0
    c.num_processes = config_dict.placeholder(int)
    c.process_id = config_dict.placeholder(int)
    return c
