"""Real CIFAR-10 through the streaming path: a checkpoint trained in memory scores the same through grain.

Needs the offline copy in ../shared/data (skipped, with the reason, without it). That copy is JPEG
recompressed (quality 75): its accuracies run up to about a point below published CIFAR-10 figures.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import cifar10_resnet20
from resnet_jax.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    load_variables,
    model_from_meta,
    read_meta,
)
from train import programs, steps, train
from train.data import sources as data_sources
from train.data import streaming
from train.data.image_folder import image_folder_sources
from train.metrics import read_metrics

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"


@pytest.fixture(scope="module")
def cifar_folder(offline_cifar10) -> str:
    """The JPEG class-folder copy: DIR/train/<class>/*.jpg, DIR/test/<class>/*.jpg."""
    return offline_cifar10("folder")


@pytest.fixture(scope="module")
def cifar_array_record(offline_cifar10) -> str:
    """The tfds cifar10 copy in ArrayRecord format (what tfds.data_source reads)."""
    return offline_cifar10("tfds", "--file-format", "array_record")


@pytest.fixture(scope="module")
def in_memory_run(tmp_path_factory, offline_cifar10):
    """ResNet-20 trained 80 steps on the in-memory path (TFRecord tfds copy): its workdir and result."""
    data_dir = offline_cifar10("tfds")
    c = cifar10_resnet20.get_config()
    c.data_dir, c.num_train_steps, c.schedule, c.warmup_steps = data_dir, 80, "cosine", 0
    c.eval_every_steps, c.checkpoint_every_steps, c.progress_bar = -1, 80, False
    workdir = str(tmp_path_factory.mktemp("memory_run"))
    return workdir, train.train_and_evaluate(c, workdir)


def _streaming_accuracy(workdir: str, sources) -> float:
    """The checkpoint's test accuracy with eval batches from a StreamingPipeline over `sources`."""
    mesh = steps.make_mesh()
    step_dir = find_checkpoint(workdir)
    meta = read_meta(step_dir)
    variables = load_variables(step_dir, meta, sharding=NamedSharding(mesh, P()))
    state = steps.TrainState(
        step=meta["step"], apply_fn=model_from_meta(meta).apply, tx=None, opt_state=None, **variables
    )
    spec = meta["preprocess"]
    eval_fn = programs.image_eval(mesh, jnp.asarray(spec["mean"]), jnp.asarray(spec["std"]))
    with streaming.StreamingPipeline(
        *sources,
        mesh=mesh,
        batch_size=128,
        eval_batch_size=1000,
        seed=0,
        train_transform="none",
        eval_transform="none",
        num_classes=10,
        num_workers=1,
    ) as pipeline:
        summary = programs.evaluate(eval_fn, state, pipeline.eval_inputs())
    assert summary["examples"] == 10_000
    return summary["accuracy"]


@pytest.mark.parametrize("source", ["array_record", "folder"])
def test_in_memory_checkpoint_scores_the_same_through_the_streaming_path(in_memory_run, request, source):
    workdir, result = in_memory_run
    assert result["test_accuracy"] > 0.15, "80 steps should learn something (150 steps: 0.32)"
    if source == "folder":
        root = request.getfixturevalue("cifar_folder")
        pair = image_folder_sources(os.path.join(root, "train"), os.path.join(root, "test"))
    else:
        pair = data_sources.tfds_sources("cifar10", request.getfixturevalue("cifar_array_record"))
    start = time.perf_counter()
    accuracy = _streaming_accuracy(workdir, pair)
    seconds = time.perf_counter() - start
    print(f"{source}: {accuracy:.4f} vs in-memory {result['test_accuracy']:.4f} ({seconds:.0f} s)")
    assert accuracy == pytest.approx(result["test_accuracy"], abs=0.001)
    jax.clear_caches()


def one_epoch_command(root: str, workdir: str) -> list[str]:
    """One epoch of ResNet-20 through the folder path (BENCHMARKS.md "One epoch through image folders")."""
    return [
        sys.executable,
        "-m",
        "train",
        "--config",
        str(Path(__file__).resolve().parents[1] / "configs" / "cifar10_resnet20.py"),
        f"--workdir={workdir}",
        "--config.pipeline=grain",
        "--config.data_source=folder",
        f"--config.train_dir={root}/train",
        f"--config.eval_dir={root}/test",
        "--config.num_epochs=1",
        "--config.num_train_steps=-1",
        "--config.schedule=cosine",
        "--config.num_workers=1",
        "--config.progress_bar=False",
    ]


def test_one_epoch_through_the_folder_path_learns(cifar_folder, tmp_path):
    """The command of BENCHMARKS.md "One epoch through image folders" (51.0% in 5:22 on one CPU device):
    one epoch of ResNet-20 from the JPEG tree reaches more than 40% on all 10,000 test JPEGs (the copy is
    JPEG-recompressed), and the checkpoint records CIFAR-10's class names."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as the benchmark ran
    out = subprocess.run(
        one_epoch_command(cifar_folder, str(tmp_path)), capture_output=True, text=True, timeout=1800, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "390 steps of 128" in out.stdout and "final: test accuracy" in out.stdout, out.stdout
    meta, _ = load_checkpoint(str(tmp_path))
    assert list(meta.class_names)[:3] == ["airplane", "automobile", "bird"] and len(meta.class_names) == 10
    test = [r for r in read_metrics(str(tmp_path / "metrics.jsonl")) if r["split"] == "test"]
    assert test[-1]["examples"] == 10_000 and test[-1]["step"] == 390
    assert test[-1]["accuracy"] > 0.40, test[-1]
