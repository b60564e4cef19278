"""Faults that happen while a grain run trains (the table is in tests/test_data_faults.py): a file that
goes bad after the start-of-run check, a SIGKILLed run's worker processes, and a normal run's shared
memory. Each runs `python -m train` with configs/smoke.py on a 4-class folder of 64 + 20 PNGs.
"""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, start_training, write_image_folder

pytestmark = pytest.mark.slow


@pytest.fixture
def folder(tmp_path) -> Path:
    write_image_folder(tmp_path / "data")
    return tmp_path / "data"


def command(folder: Path, workdir: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "train", "--config", str(REPO / "configs" / "smoke.py"),
            f"--workdir={workdir}", "--config.pipeline=grain", "--config.data_source=folder",
            f"--config.train_dir={folder / 'train'}", f"--config.eval_dir={folder / 'test'}",
            "--config.num_classes=4", "--config.log_every_steps=1", *flags]  # fmt: skip


def saved_checkpoints(workdir: Path) -> dict[Path, str]:
    """sha256 of every file of the finished checkpoints (step folders; not orbax's temporary ones)."""
    root = workdir / "checkpoints"
    steps = [d for d in root.iterdir() if d.name.isdigit()] if root.exists() else []
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for d in steps for p in d.rglob("*") if p.is_file()}


def _wait_for_a_checkpoint(proc: subprocess.Popen, workdir: Path) -> dict[Path, str]:
    deadline = time.time() + 240
    while not saved_checkpoints(workdir) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # let the step folder finish (orbax renames it into place when complete)
    saved = saved_checkpoints(workdir)
    assert saved and proc.poll() is None, "the run should be training, with a checkpoint saved"
    return saved


@pytest.mark.parametrize(
    "fault, workers, expected",
    [
        ("delete", 0, "No such file or directory; restore or remove the file"),
        ("truncate", 2, "image file is truncated; remove or replace the file"),
    ],
)
def test_a_file_that_goes_bad_mid_run_is_one_line_and_keeps_the_checkpoints(
    folder, tmp_path, fault, workers, expected
):
    workdir = tmp_path / "run"
    flags = (f"--config.num_workers={workers}", "--config.num_train_steps=100000",
             "--config.eval_every_steps=-1", "--config.checkpoint_every_steps=2",
             "--config.keep_checkpoints=100000")  # fmt: skip
    proc = start_training(command(folder, workdir, *flags), workdir, dict(os.environ))
    saved = _wait_for_a_checkpoint(proc, workdir)
    victims = sorted((folder / "train" / "cat").iterdir())  # 16 of the 64: read within an epoch
    for path in victims:
        if fault == "delete":
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[:100])
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    line = errors[0]
    assert any(f"image {p}:" in line for p in victims) and expected in line, line
    assert f"checkpoint(s) in {workdir / 'checkpoints'} are kept" in line
    assert "rerun the same command to resume from step" in line
    for path, digest in saved.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} changed"


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # fields after the name: state, ppid
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (now PID 1) has yet to reap it


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc (Linux)")
def test_worker_processes_die_with_a_sigkilled_run(folder, tmp_path):
    workdir = tmp_path / "run"
    flags = ("--config.num_workers=2", "--config.num_train_steps=100000", "--config.eval_every_steps=-1")
    proc = start_training(command(folder, workdir, *flags), workdir, dict(os.environ))
    assert proc.poll() is None, proc.stdout.read()
    children = _children(proc.pid)
    workers = [c for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) == 2, children  # grain's two workers (and multiprocessing's resource tracker)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while any(_alive(c) for c in children) and time.time() < deadline:
        time.sleep(0.2)
    assert not [c for c in children if _alive(c)], "processes of the killed run are still alive"


def test_a_run_that_skips_bad_files_warns_once_and_leaks_no_shared_memory(folder, tmp_path):
    (folder / "train" / "cat" / "004.png").write_text("not an image")
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
    out = subprocess.run(
        command(folder, tmp_path / "run", "--config.num_workers=2", "--config.skip_bad_images=True"),
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: 1 of 84 files"), out.stderr
    assert "leaked shared_memory" not in out.stderr and "error:" not in out.stderr, out.stderr
    assert "final: test accuracy" in out.stdout
