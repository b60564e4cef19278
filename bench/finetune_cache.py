"""Fine-tuning a frozen backbone with cached features against the uncached step, on the offline CIFAR-10.

    python bench/finetune_cache.py --data_dir /tmp/cifar_tfds --out /tmp/ft_bench

Trains a ResNet-20 backbone briefly on one slice of the training set, then fine-tunes a new head on it
(frozen backbone, no augmentation) on another slice, twice: cache_features=True and False, in this
process one after the other. Prints one JSON line per run: wall time (the whole train_and_evaluate call:
data, compilation, feature extraction, steps, eval) and test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from configs import finetune_cifar10, smoke
from train import tfds_data
from train.train import train_and_evaluate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--backbone_steps", type=int, default=150)
    parser.add_argument("--finetune_epochs", type=float, default=2.0)
    args = parser.parse_args()
    tfds_data.hide_gpus_from_tensorflow()

    backbone = smoke.get_config()
    backbone.update(
        data_dir=args.data_dir,
        train_split="train[:5000]",
        eval_split="test[:2000]",
        batch_size=64,
        eval_batch_size=500,
        num_train_steps=args.backbone_steps,
        learning_rate=0.1,
        warmup_steps=10,
        log_every_steps=50,
        eval_every_steps=-1,
        checkpoint_every_steps=10_000,
    )
    backbone_dir = os.path.join(args.out, "backbone")
    # A finished backbone run rerun on its workdir trains no step (it evaluates again).
    print(json.dumps({"run": "backbone", **train_and_evaluate(backbone, backbone_dir)}), flush=True)
    for cache in (True, False):
        config = finetune_cifar10.get_config()
        config.update(
            init_checkpoint=backbone_dir,
            data_dir=args.data_dir,
            train_split="train[10000:15000]",
            eval_split="test[:2000]",
            batch_size=64,
            eval_batch_size=500,
            num_epochs=args.finetune_epochs,
            pad=0,
            flip=False,
            cache_features=cache,
            learning_rate=0.1,
            log_every_steps=50,
            eval_every_steps=-1,
            checkpoint_every_steps=10_000,
            progress_bar=False,
        )
        start = time.perf_counter()
        workdir = os.path.join(args.out, f"finetune_{args.finetune_epochs:g}ep_cache_{cache}")
        result = train_and_evaluate(config, workdir)
        result["outer_wall_s"] = time.perf_counter() - start
        print(json.dumps({"run": f"finetune cache_features={cache}", **result}), flush=True)


if __name__ == "__main__":
    main()
