"""A full disk: one `error:` line ("no space left on DIR: N MB needed, M free"), exit 1, the checkpoints
written before intact and no orbax temporary directory left behind.

The workdir lives on a small tmpfs (mounted here when the tests run as root, as CI does); elsewhere the
free space the checkpoint layer sees is injected instead.
"""

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from resnet_jax.checkpoint import RunCheckpoints
from resnet_jax.checkpoint import run as checkpoint_run
from tests.helpers import REPO, smoke_command, smoke_config
from train import train

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"

# One smoke checkpoint (ResNet-20: params and momentum, 2 x 1.1 MB) and the run's small files fit; two do not.
SIZE = "4M"


@contextlib.contextmanager
def small_disk(path: Path, monkeypatch):
    """`path` on a 4 MB filesystem: a tmpfs where mounting works, else an injected free-space figure."""
    path.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:  # what the pre-check sees: 4 MB minus what the run has written
        real = checkpoint_run.shutil.disk_usage

        def usage(p):
            used = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            return real(p)._replace(free=4 * 2**20 - used)

        monkeypatch.setattr(checkpoint_run.shutil, "disk_usage", usage)
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=True)


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_a_save_that_does_not_fit_is_refused_before_it_starts(data_dir, tmp_path, monkeypatch):
    disk = tmp_path / "disk"
    with small_disk(disk, monkeypatch):
        workdir = disk / "run"
        with pytest.raises(checkpoint_run.NoSpaceError) as e:
            train.train_and_evaluate(smoke_config(data_dir), str(workdir))
        message = str(e.value)
        assert message.startswith(f"no space left on {workdir}/checkpoints: ") and "MB needed, " in message
        assert "\n" not in message and "MB free" in message
        assert RunCheckpoints(str(workdir), 2).all_steps() == [4]  # the first save fitted, the second not
        assert not list((workdir / "checkpoints").glob("*tmp*"))


def test_a_write_that_fails_midway_leaves_no_temporary_directory(data_dir, tmp_path, monkeypatch):
    """With the pre-check fooled, orbax itself hits the full disk: the same line, the temporary directory
    removed, the earlier checkpoint intact."""
    disk = tmp_path / "disk"
    with small_disk(disk, monkeypatch) as mounted:
        if not mounted:  # without a real small filesystem a write cannot fail for lack of space
            return
        monkeypatch.setattr(checkpoint_run, "_SPACE_MARGIN", 0.0)
        monkeypatch.setattr(checkpoint_run, "_SPACE_EXTRA", 0)
        workdir = disk / "run"
        train.train_and_evaluate(smoke_config(data_dir, stop_after_steps=4), str(workdir))
        first = _files(workdir / "checkpoints" / "4")
        with pytest.raises(checkpoint_run.NoSpaceError, match=r"no space left on .*MB free"):
            train.train_and_evaluate(smoke_config(data_dir), str(workdir))
        assert RunCheckpoints(str(workdir), 2).all_steps() == [4]
        assert _files(workdir / "checkpoints" / "4") == first
        assert not list((workdir / "checkpoints").glob("*orbax-checkpoint-tmp*"))


def test_cli_says_it_in_one_line(data_dir, tmp_path, monkeypatch):
    disk = tmp_path / "disk"
    with small_disk(disk, monkeypatch) as mounted:
        if not mounted:  # the injected figure does not reach a subprocess
            return
        done = subprocess.run(
            smoke_command(disk / "run", data_dir), cwd=REPO, env=dict(os.environ), capture_output=True,
            text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr[-2000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert (
            len(errors) == 1
            and errors[0].startswith("error: no space left on ")
            and "Traceback" not in done.stderr
        )
        assert RunCheckpoints(str(disk / "run"), 2).all_steps() == [4]
