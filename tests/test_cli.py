"""`python -m train` argument and config errors: one clear message and a non-zero exit, before any work.

The CLI's full smoke run (train, SIGTERM, resume, outputs) is in test_resume.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=180):
    cmd = [sys.executable, "-m", "train", "--config", str(REPO / "configs" / "smoke.py"), *args]
    env = {**os.environ, "RESNET_JAX_OFFLINE": "1"}  # as offline, whatever this machine's network
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--config.bogus_field=1"], "error: unknown config field 'bogus_field'"),
        (["--config.batch_size=abc"], "batch_size"),
        (["--config.batch_size=12"], "batch_size=12 must be a positive multiple of the 8 devices"),
        (["--config.schedule=linear", "--config.momentum=2.0"], "schedule='linear' must be one of"),
    ],
)
def test_bad_config_is_one_clear_error(args, expected, tmp_path):
    out = run_cli(f"--workdir={tmp_path}", *args)
    assert out.returncode != 0
    assert expected in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


def test_missing_workdir_flag():
    out = run_cli()
    assert out.returncode != 0 and "workdir" in out.stderr


def test_missing_dataset_names_the_fixes(tmp_path):
    out = run_cli(f"--workdir={tmp_path / 'run'}", f"--config.data_dir={tmp_path / 'empty'}")
    assert out.returncode != 0
    assert "RESNET_JAX_OFFLINE=1 forbids downloading it" in out.stderr
    assert f"cifar-10-binary.tar.gz in {tmp_path / 'empty'}/downloads/manual/" in out.stderr, out.stderr[
        -2000:
    ]
    assert "TFDS_DATA_DIR" in out.stderr and "Traceback" not in out.stderr
    # Only that line: tfds's warning about the folder it searched is off (on with --verbose, test_quiet.py).
    assert "Variant folder" not in out.stderr, out.stderr[-2000:]
