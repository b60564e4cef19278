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
from resnet_jax.checkpoint import find_checkpoint, load_variables, model_from_meta, read_meta
from train import programs, streaming, train
from train.image_folder import image_folder_sources

SHARED = Path(__file__).resolve().parents[2] / "shared"
PREPARE = SHARED / "data" / "prepare_cifar10.py"


def _prepare(tmp_path_factory, *args: str) -> str:
    if not PREPARE.exists():
        pytest.skip(f"offline CIFAR-10 copy not found at {SHARED / 'data'} (needs ../shared beside the repo)")
    out = tmp_path_factory.mktemp(args[0])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, str(PREPARE), args[0], str(out), *args[1:]], check=True, env=env)
    return str(out)


@pytest.fixture(scope="module")
def in_memory_run(tmp_path_factory):
    """ResNet-20 trained 150 steps on the in-memory path (TFRecord tfds copy): its workdir and result."""
    data_dir = _prepare(tmp_path_factory, "tfds")
    c = cifar10_resnet20.get_config()
    c.data_dir, c.num_train_steps, c.schedule, c.warmup_steps = data_dir, 150, "cosine", 0
    c.eval_every_steps, c.checkpoint_every_steps, c.progress_bar = -1, 150, False
    workdir = str(tmp_path_factory.mktemp("memory_run"))
    return workdir, train.train_and_evaluate(c, workdir)


def _streaming_accuracy(workdir: str, sources) -> float:
    """The checkpoint's test accuracy with eval batches from a StreamingPipeline over `sources`."""
    mesh = train.make_mesh()
    step_dir = find_checkpoint(workdir)
    meta = read_meta(step_dir)
    variables = load_variables(step_dir, meta, sharding=NamedSharding(mesh, P()))
    state = train.TrainState(
        step=meta["step"], apply_fn=model_from_meta(meta).apply, tx=None, opt_state=None, **variables
    )
    spec = meta["preprocess"]
    eval_fn = train.make_eval_fn(mesh, jnp.asarray(spec["mean"]), jnp.asarray(spec["std"]))
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


@pytest.mark.slow
@pytest.mark.parametrize("source", ["array_record", "folder"])
def test_in_memory_checkpoint_scores_the_same_through_the_streaming_path(
    in_memory_run, tmp_path_factory, source
):
    workdir, result = in_memory_run
    assert result["test_accuracy"] > 0.3, "150 steps should learn something"
    if source == "folder":
        root = _prepare(tmp_path_factory, "folder")
        sources = image_folder_sources(os.path.join(root, "train"), os.path.join(root, "test"))
    else:
        data_dir = _prepare(tmp_path_factory, "tfds", "--file-format", "array_record")
        sources = streaming.tfds_sources("cifar10", data_dir)
    start = time.perf_counter()
    accuracy = _streaming_accuracy(workdir, sources)
    seconds = time.perf_counter() - start
    print(f"{source}: {accuracy:.4f} vs in-memory {result['test_accuracy']:.4f} ({seconds:.0f} s)")
    assert accuracy == pytest.approx(result["test_accuracy"], abs=0.001)
    jax.clear_caches()
