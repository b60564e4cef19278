"""A divergence leaves a resumable run, not a trap (train/health.py): nothing unhealthy is saved, the good
checkpoints stay bitwise, a rerun resumes from the last healthy one, metrics.jsonl stays JSON, and the
config record keeps what ran."""

import json
import os
import subprocess
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.checkpoint import RunCheckpoints
from tests.helpers import REPO, assert_same_run, smoke_command, smoke_config
from train import health, programs, run_config, steps
from train import train as train_lib
from train.health import TrainingDiverged


def files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def strict_json_lines(path: Path) -> list[dict]:
    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_divergence_then_lower_rate_resumes_from_the_last_healthy_checkpoint(data_dir, tmp_path, capsys):
    train_lib.train_and_evaluate(smoke_config(data_dir, stop_after_steps=4), str(tmp_path))
    assert RunCheckpoints(str(tmp_path), 2).all_steps() == [4]
    healthy = files(tmp_path / "checkpoints" / "4")
    with pytest.raises(TrainingDiverged) as e:
        train_lib.train_and_evaluate(smoke_config(data_dir, learning_rate=1e6), str(tmp_path))
    message = str(e.value)
    assert "training diverged by step" in message and "last healthy checkpoint is step 4" in message
    assert "\n" not in message and "--config.learning_rate (now 1000000.0)" in message
    # Nothing after the divergence was saved, and the checkpoint before it is bitwise what it was.
    assert RunCheckpoints(str(tmp_path), 2).all_steps() == [4]
    assert files(tmp_path / "checkpoints" / "4") == healthy
    strict_json_lines(tmp_path / "metrics.jsonl")
    # The same command with the paper's rate resumes from step 4 and finishes.
    capsys.readouterr()
    result = train_lib.train_and_evaluate(smoke_config(data_dir), str(tmp_path))
    out = capsys.readouterr().out
    assert result["step"] == 12 and result["stopped_by"] is None and np.isfinite(result["test_loss"])
    assert "(step 4 of 12)" in out
    assert strict_json_lines(tmp_path / "metrics.jsonl")[-1]["step"] == 12
    # config.json keeps the config the run started with; the history says what each resume changed.
    assert json.loads((tmp_path / "config.json").read_text())["learning_rate"] == 0.1
    history = strict_json_lines(tmp_path / run_config.HISTORY)
    assert [h["changed"]["learning_rate"] for h in history] == [[0.1, 1e6], [1e6, 0.1]]
    assert [h["step"] for h in history] == [4, 4]
    assert run_config.load(str(tmp_path)).learning_rate == 0.1


@pytest.mark.slow
def test_cli_exits_3_with_one_line_and_keeps_the_checkpoint(data_dir, tmp_path):
    train_lib.train_and_evaluate(smoke_config(data_dir, stop_after_steps=4), str(tmp_path))
    healthy = files(tmp_path / "checkpoints" / "4")
    env = dict(os.environ)
    cmd = smoke_command(tmp_path, data_dir, "--config.learning_rate=1e6")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: training diverged by step")
    assert "Traceback" not in done.stderr
    assert files(tmp_path / "checkpoints" / "4") == healthy
    assert RunCheckpoints(str(tmp_path), 2).all_steps() == [4]


@flax.struct.dataclass
class State:
    step: jax.Array
    params: dict


def test_the_message_names_the_first_non_finite_step():
    """A step program whose loss is NaN from the 4th step on: the window flags step 4, not a later one."""
    mesh = steps.make_mesh(jax.devices()[:1])

    def step_fn(state, batch, rng):
        del batch, rng
        loss = jnp.where(state.step >= 3, jnp.nan, 1.0)
        return state.replace(step=state.step + 1), {"loss": loss, "accuracy": loss}

    run = programs.make_train_fn(step_fn, mesh, lambda inputs, step: inputs, jax.random.key(0))
    state, sums = State(step=jnp.int32(0), params={"w": jnp.ones(3)}), programs.zero_sums()
    for _ in range(6):
        state, sums, _ = run(state, sums, {})
    host = jax.device_get(sums)
    assert int(host["first_nonfinite"]) == 4 and int(host["nonfinite"]) == 3
    assert health.problem(host, 1.0, None) == "the loss or the parameters became non-finite at step 4"


def test_exploded_parameters_and_nan_evaluation_are_unhealthy():
    host = {"nonfinite": 0, "first_nonfinite": 2**31 - 1, "param_norm": 52.0}
    assert health.problem(host, 50.0, {"loss": 2.3}) is None
    assert health.problem(host, 50.0, {"loss": float("nan")}) == "the evaluation loss is nan"
    exploded = health.problem({**host, "param_norm": 2e22}, 50.0, None)
    assert exploded.startswith("the parameters exploded: their norm grew from 50 to 2e+22")


@pytest.mark.slow
def test_a_poisoned_checkpoint_from_before_the_health_check_is_set_aside(data_dir, tmp_path, capsys):
    """A checkpoint whose saved evaluation loss is NaN (as older versions could save) is moved to
    unhealthy_checkpoints/ and the run resumes from the one before."""
    train_lib.train_and_evaluate(smoke_config(data_dir, stop_after_steps=8), str(tmp_path))
    assert RunCheckpoints(str(tmp_path), 2).all_steps() == [6, 8]
    meta_file = tmp_path / "checkpoints" / "8" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["eval"] = {"accuracy": 0.1, "loss": float("nan")}
    meta_file.write_text(json.dumps(meta))
    capsys.readouterr()
    result = train_lib.train_and_evaluate(smoke_config(data_dir, stop_after_steps=10), str(tmp_path))
    out = capsys.readouterr().out
    assert "checkpoint step 8 is unhealthy: its evaluation loss is nan" in out and "(step 6 of 12)" in out
    assert result["step"] == 10
    (aside,) = (tmp_path / "unhealthy_checkpoints").iterdir()
    assert aside.name.startswith("8-") and (aside / "meta" / "metadata").exists()


@pytest.mark.slow
def test_resume_step_picks_an_earlier_checkpoint_and_keeps_the_newer_ones(data_dir, tmp_path):
    whole = tmp_path / "whole"
    train_lib.train_and_evaluate(smoke_config(data_dir), str(whole))
    run = tmp_path / "run"
    train_lib.train_and_evaluate(smoke_config(data_dir, stop_after_steps=8), str(run))
    assert RunCheckpoints(str(run), 2).all_steps() == [6, 8]
    newer = files(run / "checkpoints" / "8")
    with pytest.raises(Exception, match=r"resume_step=5 is not a checkpoint of .* \(it has steps \[6, 8\]\)"):
        train_lib.train_and_evaluate(smoke_config(data_dir, resume_step=5), str(run))
    result = train_lib.train_and_evaluate(smoke_config(data_dir, resume_step=6), str(run))
    assert result["step"] == 12
    assert_same_run(whole, run)  # resumed at 6: the same as never stopping
    (aside,) = (run / "superseded_checkpoints").iterdir()
    assert aside.name.startswith("8-") and files(aside) == newer
