"""Test setup: 8 CPU devices for the data-parallel tests, set before JAX initialises its backend."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite's runs never read or write ~/.cache: the `compilation_cache` fixture below gives the session
# a fresh cache of its own (tests/test_compilation_cache.py tests the user-facing setting itself).
os.environ.setdefault("RESNET_JAX_CACHE_DIR", "off")

# triton (which torch imports for its compiler) segfaults when it loads after TensorFlow (`python -c
# "import tensorflow; import triton"` exits 139), so a torch test after a tfds test in the same process
# would crash the run. Loading it first, as the order torch-then-TensorFlow does, is safe.
with contextlib.suppress(ImportError):
    import triton  # noqa: F401

# The programs' XLA:CPU defaults (resnet_jax.xla_flags), as `python -m train` adds them: in-process runs
# then compute bitwise what the suite's CLI subprocesses compute (test_resume compares the two).
from resnet_jax.xla_flags import set_xla_cpu_defaults

set_xla_cpu_defaults()

# On CI every test must run: a skip there means a broken install (../shared missing, torch or keras not
# installed, a bench module that fails to import), which must fail the run instead of passing it green.
_skipped: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and _skipped and exitstatus == 0:
        print("\nCI forbids skipped tests; these skipped:\n  " + "\n  ".join(_skipped))
        session.exitstatus = 1


SHARED = Path(__file__).resolve().parents[2] / "shared"
_prepared: dict[tuple[str, ...], str] = {}


@pytest.fixture(scope="session")
def offline_cifar10(tmp_path_factory):
    """prepare(kind, *flags) -> directory of the offline CIFAR-10 copy, prepared once per session.

    kind 'tfds' (TFRecord, the in-memory path), 'tfds' with '--file-format', 'array_record' (grain), or
    'folder' (the JPEG class-folder tree). Skips, saying why, where ../shared is absent (CI fails then).
    """
    script = SHARED / "data" / "prepare_cifar10.py"

    def prepare(*args: str) -> str:
        if not script.exists():
            pytest.skip(
                f"offline CIFAR-10 copy not found at {SHARED / 'data'} (needs ../shared beside the repo)"
            )
        if args not in _prepared:
            out = tmp_path_factory.mktemp("_".join(a.strip("-") for a in args))
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            subprocess.run([sys.executable, str(script), args[0], str(out), *args[1:]], check=True, env=env)
            _prepared[args] = str(out)
        return _prepared[args]

    return prepare


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A tfds data_dir holding `fake_cifar`: 64 train, 20 test random 32x32 images, 10 classes (read only)."""
    from train.data.testing import write_fake_dataset

    path = str(tmp_path_factory.mktemp("fake_tfds"))
    write_fake_dataset(path, num_train=64, num_test=20)
    return path


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent compilation cache for the whole session, in a fresh directory (never ~/.cache): a
    program compiled by one test (the smoke ResNet-20's steps, above all) is loaded by the next, in this
    process and in every subprocess (CLI runs, multi-host processes, the notebook), which inherit it
    through JAX's own environment variables."""
    import jax

    cache = str(tmp_path_factory.mktemp("jax_cache"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return cache


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache directory, read offline (huggingface_hub reads both settings at call
    time); tests/hub_cache.py publishes timm models into it."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def resnet20():
    """(ResNet-20, its variables with non-trivial BatchNorm statistics), for checkpoint and predict tests."""
    from checkpoint_helpers import random_variables

    from resnet_jax import create_model

    model = create_model("resnet20")
    return model, random_variables(model)
