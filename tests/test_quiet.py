"""Commands print their own lines, not other libraries' start-up logs (resnet_jax/logs.py), unless --verbose
or RESNET_JAX_VERBOSE=1; and runs that read no TFRecord never import TensorFlow (`python -X importtime`
lists every module a process and its grain workers import).
"""

import logging
import os
import subprocess
import sys

import pytest

from resnet_jax.logs import VERBOSE_ENV, quiet_logs
from tests.helpers import REPO, smoke_command, write_image_folder
from train import metrics as metrics_lib
from train.data.testing import write_fake_dataset

# TensorFlow's absl pre-init warning, its oneDNN and CPU-instruction banners, tfds's folder warning, JAX's
# backend search (INFO).
NOISE = (
    "absl::InitializeLog()",
    "oneDNN custom operations",
    "This TensorFlow binary is optimized",
    "Variant folder",
    "Unable to initialize backend",
)
# What quiet_logs sets, removed so that the commands, not this test's environment, must set them.
SET_BY_QUIET = (VERBOSE_ENV, "TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "GRPC_VERBOSITY")


def _env():
    """This environment (the session's compilation cache included) without what quiet_logs sets."""
    return {k: v for k, v in os.environ.items() if k not in SET_BY_QUIET}


def _run(command, env, timeout=600):
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _imported(stderr: str) -> list[str]:
    """Module names from `python -X importtime` lines ('import time: self | cumulative | name')."""
    return [line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")]


def _console(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:"))


def _assert_quiet(stderr: str) -> None:
    console = _console(stderr)
    for line in NOISE:
        assert line not in console, console[-3000:]


def _tensorflow_modules(stderr: str) -> list[str]:
    return [m for m in _imported(stderr) if m == "tensorflow" or m.startswith("tensorflow.")]


@pytest.mark.slow
def test_tfds_run_on_array_record_never_imports_tensorflow_and_eval_on_tfrecord_agrees(tmp_path):
    """A smoke run on the ArrayRecord copy: no TensorFlow, no library logs. Its checkpoint evaluated on a
    TFRecord copy of the same records (TensorFlow decodes there) gives the figures the run logged."""
    data = {f: tmp_path / f for f in ("array_record", "tfrecord")}
    for file_format, data_dir in data.items():
        write_fake_dataset(str(data_dir), num_train=64, num_test=20, file_format=file_format)
    workdir = tmp_path / "run"
    env = _env()
    command = smoke_command(workdir, data["array_record"])
    out = _run([command[0], "-X", "importtime", *command[1:]], env)
    assert out.returncode == 0, _console(out.stderr)[-3000:]
    assert "tensorflow_datasets" in _imported(out.stderr)  # the probe sees the tfds reader's imports
    assert _tensorflow_modules(out.stderr) == []
    _assert_quiet(out.stderr)
    final = [r for r in metrics_lib.read_metrics(str(workdir / "metrics.jsonl")) if r["split"] == "test"][-1]

    evaluated = _run(
        [sys.executable, "-m", "train.eval", f"--workdir={workdir}", f"--data_dir={data['tfrecord']}"], env
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"test accuracy {final['accuracy']:.4f}" in evaluated.stdout, (final, evaluated.stdout)
    assert f"loss {final['loss']:.4f} on 20 examples" in evaluated.stdout, (final, evaluated.stdout)
    _assert_quiet(evaluated.stderr)  # TensorFlow read the TFRecords here: its banners stayed off


@pytest.mark.slow
def test_folder_run_with_grain_workers_imports_no_tensorflow_and_is_quiet(tmp_path):
    write_image_folder(tmp_path / "images")
    command = [
        *smoke_command(tmp_path / "run", tmp_path / "unused"),
        "--config.pipeline=grain",
        "--config.data_source=folder",
        f"--config.train_dir={tmp_path / 'images' / 'train'}",
        f"--config.eval_dir={tmp_path / 'images' / 'test'}",
        "--config.num_classes=4",
        "--config.num_workers=2",
    ]
    out = _run([command[0], "-X", "importtime", *command[1:]], _env())
    assert out.returncode == 0, _console(out.stderr)[-3000:]
    assert "final: test accuracy" in out.stdout  # our own lines stay
    assert _imported(out.stderr).count("grain") >= 2, "the worker processes' imports must be listed too"
    assert _tensorflow_modules(out.stderr) == [] and "tensorflow_datasets" not in _imported(out.stderr)
    _assert_quiet(out.stderr)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_verbose_brings_the_library_logs_back(tmp_path, how):
    """A missing dataset (tfds warns about the folder it searched): quiet by default (tests/test_cli.py),
    the warning is back with --verbose or RESNET_JAX_VERBOSE=1, and the error stays one clear line."""
    env = {**_env(), "RESNET_JAX_OFFLINE": "1", **({VERBOSE_ENV: "1"} if how == "env" else {})}
    command = smoke_command(tmp_path / "run", tmp_path / "empty")
    out = _run([*command, "--config.dataset=cifar10", *(["--verbose"] if how == "flag" else [])], env, 180)
    assert out.returncode == 1
    assert "Variant folder" in out.stderr, out.stderr[-3000:]
    assert "error: dataset 'cifar10' is not prepared" in out.stderr and "Traceback" not in out.stderr


def test_quiet_logs_sets_defaults_keeps_the_users_values_and_drops_tfds_warnings(monkeypatch):
    for name in SET_BY_QUIET:  # set then deleted, so monkeypatch restores them as they were
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # the user's own choice
    root_level = logging.root.level
    absl_logger = logging.getLogger("absl")  # absl.logging is loaded (flax imports it)
    filters = list(absl_logger.filters)
    try:
        logging.root.setLevel(logging.INFO)
        assert quiet_logs() is False
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1" and os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
        assert os.environ["GRPC_VERBOSITY"] == "ERROR" and logging.root.level == logging.WARNING

        def kept(level, path):
            return absl_logger.filter(logging.LogRecord("absl", level, path, 1, "m", None, None))

        tfds_file = os.path.join(os.sep, "site-packages", "tensorflow_datasets", "core", "file_utils.py")
        assert not kept(logging.WARNING, tfds_file) and kept(logging.ERROR, tfds_file)
        assert kept(logging.WARNING, os.path.join(os.sep, "site-packages", "orbax", "checkpoint.py"))
    finally:
        logging.root.setLevel(root_level)
        absl_logger.filters[:] = filters
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    assert quiet_logs(verbose=True) is True  # changes nothing, and tells the processes it starts
    assert os.environ[VERBOSE_ENV] == "1" and "TF_ENABLE_ONEDNN_OPTS" not in os.environ
    assert quiet_logs() is True  # RESNET_JAX_VERBOSE=1 alone
