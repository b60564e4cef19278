"""Save and resume: a stopped run resumed ends bitwise identical to an uninterrupted one.

All runs use the smoke config (resnet20, batch 16, 12 steps) on a small prepared tfds dataset of random
images; checkpoints every 4 steps and at the evaluations (steps 6 and 12).
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from resnet_jax.checkpoint import RunCheckpoints
from tests.helpers import (
    assert_same_run,
    logged,
    saved_state,
    smoke_command,
    smoke_config,
    start_training,
)
from train import metrics as metrics_lib
from train import programs, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def uninterrupted_run(data_dir, tmp_path_factory):
    """(workdir, result) of the smoke config's 12 steps, never stopped."""
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    result = train.train_and_evaluate(smoke_config(data_dir), workdir)
    assert result["step"] == 12 and result["stopped_by"] is None
    return workdir, result


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run):
    return uninterrupted_run[0]


def test_an_uninterrupted_run_writes_everything(data_dir, uninterrupted_run):
    c, tmp_path, result = smoke_config(data_dir), Path(uninterrupted_run[0]), uninterrupted_run[1]
    assert result["step"] == 12 and result["stopped_by"] is None and 0 <= result["test_accuracy"] <= 1
    records = metrics_lib.read_metrics(str(tmp_path / "metrics.jsonl"))
    train_rows = [r for r in records if r["split"] == "train"]
    test_rows = [r for r in records if r["split"] == "test"]
    # Step 1 too: the first loss shows as soon as the program has compiled, whatever log_every_steps is.
    assert [r["step"] for r in train_rows] == [1, 2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in test_rows] == [6, 12]
    assert all({"loss", "accuracy", "lr", "img_per_sec"} <= set(r) for r in train_rows)
    assert all(r["examples"] == 20 for r in test_rows), "eval must count each of the 20 test examples once"
    assert test_rows[-1]["accuracy"] == result["test_accuracy"]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
    assert json.loads((tmp_path / "config.json").read_text())["dataset"] == "fake_cifar"
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    # keep_checkpoints=2 latest (8, 12) plus the best-by-accuracy among the evaluated ones (6 or 12).
    assert steps[-2:] == [8, 12] and set(steps) <= {6, 8, 12}
    meta = json.loads((tmp_path / "checkpoints" / "12" / "meta" / "metadata").read_text())
    assert meta["origin"] == "resnet-jax" and meta["model"] == "resnet20" and meta["step"] == 12
    assert meta["model_kwargs"]["num_classes"] == 10
    assert meta["preprocess"] == {"kind": "mean_std", "mean": list(c.mean), "std": list(c.std)}
    restored = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "12" / "state")
    assert {"params", "batch_stats", "opt_state", "step"} <= set(restored)
    assert int(restored["step"]) == 12


def test_resume_from_a_checkpoint_ends_bitwise_as_the_uninterrupted_run(data_dir, uninterrupted, tmp_path):
    # The fast tier's resume: a copy of the finished run resumed from its step-8 checkpoint (4 steps).
    run = shutil.copytree(uninterrupted, tmp_path / "run")
    resumed = train.train_and_evaluate(smoke_config(data_dir, resume_step=8), str(run))
    assert resumed["step"] == 12 and resumed["stopped_by"] is None
    assert (run / "superseded_checkpoints").is_dir()  # the copy's own step 12, set aside
    a, b = saved_state(uninterrupted, 12), saved_state(run, 12)
    for key in ("params", "batch_stats", "opt_state", "step"):
        for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key]), strict=True):
            np.testing.assert_array_equal(x, y, err_msg=key)


@pytest.mark.slow
def test_stop_mid_window_and_resume_is_bitwise_identical(data_dir, uninterrupted, tmp_path):
    # Step 5 is between checkpoints (4, 8) and inside a logging window (4..6).
    stopped = train.train_and_evaluate(smoke_config(data_dir, stop_after_steps=5), str(tmp_path))
    assert stopped["stopped_by"] == "stop_after_steps" and stopped["step"] == 5
    assert RunCheckpoints(str(tmp_path), 2).latest_step() == 5
    resumed = train.train_and_evaluate(smoke_config(data_dir), str(tmp_path))
    assert resumed["step"] == 12 and resumed["stopped_by"] is None
    assert_same_run(uninterrupted, tmp_path)


@pytest.mark.slow
def test_checkpoint_written_before_checksums_and_signatures_existed_resumes(
    data_dir, uninterrupted, tmp_path
):
    """Older versions wrote run checkpoints without 'checksums' and 'state_signature' in their meta: such
    a checkpoint still resumes, bitwise (the library's load of one: tests/fixtures/resnet20_v0)."""
    train.train_and_evaluate(smoke_config(data_dir, stop_after_steps=5), str(tmp_path))
    meta_file = tmp_path / "checkpoints" / "5" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    assert {"checksums", "state_signature"} <= set(meta)
    meta_file.write_text(
        json.dumps({k: v for k, v in meta.items() if k not in ("checksums", "state_signature")})
    )
    resumed = train.train_and_evaluate(smoke_config(data_dir), str(tmp_path))
    assert resumed["step"] == 12
    assert_same_run(uninterrupted, tmp_path)


@pytest.mark.slow
def test_the_host_dispatches_at_most_max_steps_ahead(data_dir, tmp_path, monkeypatch):
    """Each step sleeps 50 ms on the device; the host's lead over the finished steps stays within the
    bound (the step just dispatched plus max_steps_ahead unfinished ones), and it does run ahead."""
    dispatched, finished, lead = [0], set(), []
    original = programs.make_train_fn

    def make_train_fn(step_fn, mesh, device_batch, aug_key):
        def slow_step(state, batch, rng):
            def ran(step):
                time.sleep(0.05)
                finished.add(int(step))

            jax.debug.callback(ran, state.step)  # runs when the device executes the step
            return step_fn(state, batch, rng)

        run = original(slow_step, mesh, device_batch, aug_key)

        def dispatch(*args):
            dispatched[0] += 1
            lead.append(dispatched[0] - len(finished))
            return run(*args)

        return dispatch

    monkeypatch.setattr(programs, "make_train_fn", make_train_fn)
    c = smoke_config(data_dir, max_steps_ahead=2, log_every_steps=100, eval_every_steps=-1)
    c.checkpoint_every_steps = 100
    train.train_and_evaluate(c, str(tmp_path))
    assert dispatched[0] == 12 and len(finished) == 12
    assert 2 <= max(lead) <= 3, lead


@pytest.mark.slow
def test_dropout_run_resumes_bitwise_identical(data_dir, uninterrupted, tmp_path):
    """Dropout keys come from the step's key: a resumed run drops the same units as an uninterrupted one."""
    dropout = dict(model_kwargs={"dropout_rate": 0.3})
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    train.train_and_evaluate(smoke_config(data_dir, **dropout), whole)
    train.train_and_evaluate(smoke_config(data_dir, stop_after_steps=5, **dropout), resumed)
    train.train_and_evaluate(smoke_config(data_dir, **dropout), resumed)
    assert_same_run(whole, resumed)
    with_dropout, without = saved_state(whole)["params"], saved_state(uninterrupted)["params"]
    conv = ("stage1_block0", "conv2", "kernel")  # the conv after the dropout
    assert not np.array_equal(with_dropout[conv[0]][conv[1]][conv[2]], without[conv[0]][conv[1]][conv[2]])


class Killed(Exception):
    pass


@pytest.mark.slow
def test_kill_between_checkpoints_resumes_from_the_last_one(
    data_dir, uninterrupted, tmp_path, monkeypatch, capsys
):
    original = metrics_lib.MetricsWriter.write

    def write_then_die(self, step, split, metrics):
        original(self, step, split, metrics)
        if step == 10:  # after checkpoint 8 and after logging step 10: like kill -9 there
            raise Killed

    monkeypatch.setattr(metrics_lib.MetricsWriter, "write", write_then_die)
    with pytest.raises(Killed):
        train.train_and_evaluate(smoke_config(data_dir), str(tmp_path))
    monkeypatch.setattr(metrics_lib.MetricsWriter, "write", original)
    assert max(r["step"] for r in logged(tmp_path)) == 10
    time.sleep(1)  # let the killed run's background save of step 8 land, as it would have on disk
    capsys.readouterr()
    train.train_and_evaluate(smoke_config(data_dir), str(tmp_path))
    assert f"resuming from {tmp_path}/checkpoints/8 (step 8 of 12)" in capsys.readouterr().out
    assert_same_run(uninterrupted, tmp_path)


@pytest.mark.slow
def test_half_written_checkpoint_is_never_latest(data_dir, uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    partial = workdir / "checkpoints" / "20.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "junk").write_bytes(b"\0" * 10)
    assert RunCheckpoints(str(workdir), 2).latest_step() == 12
    # Rerunning the finished command resumes at 12: nothing to train, the logged final result stands.
    result = train.train_and_evaluate(smoke_config(data_dir), str(workdir))
    assert result["step"] == 12 and result["test_accuracy"] == logged(uninterrupted)[-1]["accuracy"]


@pytest.mark.slow
def test_corrupted_latest_checkpoint_is_named_set_aside_and_the_run_resumes_from_an_intact_one(
    data_dir, uninterrupted, tmp_path, capsys
):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    latest = workdir / "checkpoints" / "12"
    for f in (latest / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":  # the array data files
            f.write_bytes(b"corrupted")
    result = train.train_and_evaluate(smoke_config(data_dir), str(workdir))
    out = capsys.readouterr().out
    # Named in one line, moved aside (not deleted), and the run resumed from the newest intact one.
    assert "checkpoint step 12 is corrupt" in out and "resuming from" in out and "(step 8 of 12)" in out
    (moved,) = (workdir / "corrupt_checkpoints").iterdir()
    assert moved.name.startswith("12-") and (moved / "state").is_dir()
    assert result["step"] == 12
    assert_same_run(uninterrupted, workdir)


@pytest.mark.slow
def test_cli_sigterm_saves_at_the_next_step_and_rerun_resumes(data_dir, uninterrupted, tmp_path):
    """The smoke run of the CLI: `python -m train` stopped by SIGTERM, then rerun to the end."""
    env = dict(os.environ)
    cmd = smoke_command(tmp_path, data_dir)
    proc = start_training(cmd, tmp_path, env)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out  # a scheduler must not take it for finished
    assert "SIGTERM received: stopping after step" in out, out  # acknowledged at once
    assert "stopped by SIGTERM at step" in out and "resume with:" in out, out
    stopped_at = int(out.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert stopped_at < 12, "the signal came early; the run should not have finished"
    assert RunCheckpoints(str(tmp_path), 2).latest_step() == stopped_at
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming from {tmp_path}/checkpoints/{stopped_at}" in done.stdout
    assert "final: test accuracy" in done.stdout.strip().splitlines()[-1]
    assert (tmp_path / "curves.png").exists() and (tmp_path / "config.json").exists()
    a, b = saved_state(uninterrupted), saved_state(tmp_path)
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_array_equal(x, y)
