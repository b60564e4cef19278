"""Fine-tuning a frozen backbone with cached features against the uncached step, on the offline CIFAR-10.

    python bench/finetune_cache.py --data_dir /tmp/cifar_tfds --out /tmp/ft_bench
    python bench/finetune_cache.py --data_dir /tmp/cifar_tfds --out /tmp/ft_bench --folder /tmp/cifar_folder

Trains a ResNet-20 backbone briefly on one slice of the training set, then fine-tunes a new head on it
(frozen backbone, no augmentation) on another slice, twice: cache_features=True and False, in this
process one after the other. Prints one JSON line per run: wall time (the whole train_and_evaluate call:
data, compilation, feature extraction, steps, eval) and test accuracy. With --folder (the JPEG class-folder
tree of prepare_cifar10.py) the fine-tuning reads 5,000 training and 2,000 test JPEGs (links under --out)
through the streaming pipeline, decoding every step when uncached.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from configs import finetune_cifar10, smoke
from train.train import train_and_evaluate


def _folder_slices(tree: str, out: str) -> tuple[str, str]:
    """Links to 500 training images a class (files 1000-1499) and 200 test images a class of a
    prepare_cifar10.py folder tree: 5,000 and 2,000 images."""
    for split, lo, hi in (("train", 1000, 1500), ("test", 0, 200)):
        for cls in sorted(os.listdir(os.path.join(tree, split))):
            os.makedirs(os.path.join(out, split, cls), exist_ok=True)
            for name in os.listdir(os.path.join(tree, split, cls)):
                link = os.path.join(out, split, cls, name)
                if lo <= int(os.path.splitext(name)[0]) < hi and not os.path.exists(link):
                    os.symlink(os.path.join(tree, split, cls, name), link)
    return os.path.join(out, "train"), os.path.join(out, "test")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--backbone_steps", type=int, default=150)
    parser.add_argument("--finetune_epochs", type=float, default=2.0)
    parser.add_argument("--folder", default=None, help="class-folder tree: fine-tune from image files")
    args = parser.parse_args()

    # Both runs: the same data, batches, rate and logging; no evaluation before the end.
    common = dict(
        data_dir=args.data_dir,
        eval_split="test[:2000]",
        batch_size=64,
        eval_batch_size=500,
        learning_rate=0.1,
        log_every_steps=50,
        eval_every_steps=-1,
        checkpoint_every_steps=10_000,
    )
    backbone = smoke.get_config()
    backbone.update(common, train_split="train[:5000]", num_train_steps=args.backbone_steps, warmup_steps=10)
    backbone_dir = os.path.join(args.out, "backbone")
    # A finished backbone run rerun on its workdir trains no step (it evaluates again).
    print(json.dumps({"run": "backbone", **train_and_evaluate(backbone, backbone_dir)}), flush=True)
    for cache in (True, False):
        config = finetune_cifar10.get_config()
        config.update(
            common,
            init_checkpoint=backbone_dir,
            train_split="train[10000:15000]",
            num_epochs=args.finetune_epochs,
            pad=0,
            flip=False,
            cache_features=cache,
            progress_bar=False,
        )
        if args.folder:
            train_dir, eval_dir = _folder_slices(args.folder, os.path.join(args.out, "folder"))
            config.update(pipeline="grain", data_source="folder", train_dir=train_dir, eval_dir=eval_dir)
            config.update(train_transform="none", eval_transform="none")
        start = time.perf_counter()
        source = "folder" if args.folder else "memory"
        workdir = os.path.join(args.out, f"finetune_{source}_{args.finetune_epochs:g}ep_cache_{cache}")
        result = train_and_evaluate(config, workdir)
        result["outer_wall_s"] = time.perf_counter() - start
        print(json.dumps({"run": f"finetune cache_features={cache}", **result}), flush=True)


if __name__ == "__main__":
    main()
