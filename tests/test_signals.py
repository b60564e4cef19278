"""Stop requests answer at once and tell the truth: the step named is the step saved, a second signal
quits without saving, a signal before training ends the run at once, and a fine-tune says what it does
before it extracts features."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, backbone_checkpoint
from train import signals


def _raise_in_a_moment(signum):
    os.kill(os.getpid(), signum)
    time.sleep(2)  # the handler runs at the next bytecode boundary


def test_first_signal_names_the_step_the_loop_stops_after_and_a_second_quits(capsys):
    with signals.StopRequest() as stop:
        stop.dispatched, stop.checked = 7, False  # step 7 dispatched, its stop check still to come
        _raise_in_a_moment(signal.SIGINT)
        assert stop.name == "SIGINT" and stop.requested(7)
        assert "SIGINT received: stopping after step 7, saving a checkpoint" in capsys.readouterr().err
        with pytest.raises(signals.Interrupted, match="second SIGINT: quit at once without saving") as e:
            _raise_in_a_moment(signal.SIGINT)
        assert e.value.signum == signal.SIGINT
    with signals.StopRequest() as stop:
        stop.dispatched, stop.checked = 7, True  # step 7 already checked: the loop stops after step 8
        _raise_in_a_moment(signal.SIGTERM)
        assert "stopping after step 8" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_a_signal_while_preparing_ends_the_run_at_once():
    with (
        pytest.raises(signals.Interrupted, match="SIGTERM received before training started") as e,
        signals.quit_on_signal(),
    ):
        _raise_in_a_moment(signal.SIGTERM)
    assert e.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.slow
def test_fine_tune_banner_comes_before_feature_extraction(data_dir, tmp_path):
    spec = {"kind": "mean_std", "mean": [0.5] * 3, "std": [0.25] * 3}
    path, _ = backbone_checkpoint(tmp_path / "backbone", spec)
    cmd = [
        sys.executable, "-m", "train", "--config", str(REPO / "configs" / "finetune_cifar10.py"),
        f"--workdir={tmp_path / 'run'}", f"--config.init_checkpoint={path}", "--config.pad=0",
        "--config.num_train_steps=2", "--config.num_epochs=-1", "--config.batch_size=16",
        "--config.eval_batch_size=16", "--config.dataset=fake_cifar", f"--config.data_dir={data_dir}",
        "--config.log_every_steps=1",
    ]  # fmt: skip
    out = subprocess.run(
        cmd, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=600,
    ).stdout  # fmt: skip
    banner, features = out.find("resnet20 on fake_cifar: 2 steps"), out.find("train features")
    assert 0 <= banner < features, out[-3000:]
    assert "head_img_s" in out or "head_img_per_sec" in (tmp_path / "run" / "metrics.jsonl").read_text()
