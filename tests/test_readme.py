"""Every ```python block of README.md runs as written.

Each block runs in a fresh Python process (as a reader would paste it; torch and TensorFlow-backed Keras
cannot share a process in every import order), in a temporary directory holding what a reader would have
made before reaching it: `runs/resnet20` (a tiny checkpoint shaped like a training run's). A block
preceded by `<!-- test: skip (REASON) -->` is skipped with that reason. Blocks that need optional
packages (torch, keras) skip, naming them, when those are not installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_checkpoint import save_tiny_checkpoint

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"(?P<before>(?:<!--[^\n]*-->\s*\n)?)```python\n(?P<code>.*?)```", re.S)
SKIP = re.compile(r"<!--\s*test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->")
OPTIONAL = ("torch", "torchvision", "keras")


def python_blocks() -> list[tuple[int, str, str | None]]:
    """(line number, code, skip reason or None) of each ```python block in README.md."""
    text = README.read_text()
    blocks = []
    for m in FENCE.finditer(text):
        skip = SKIP.search(m.group("before"))
        line = text.count("\n", 0, m.start("code")) + 1
        blocks.append((line, m.group("code"), skip.group("reason") if skip else None))
    return blocks


BLOCKS = python_blocks()


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3, "README.md's ```python blocks were not found"


@pytest.fixture(scope="module")
def reader_dir(tmp_path_factory):
    """A working directory with runs/resnet20 and runs/seed as README's commands would leave them."""
    root = tmp_path_factory.mktemp("reader")
    save_tiny_checkpoint(root / "runs" / "resnet20")
    save_tiny_checkpoint(root / "runs" / "seed")  # the fine-tuning walk-through's workdir
    return root


@pytest.mark.parametrize(("line", "code", "skip"), BLOCKS, ids=[f"README.md:{b[0]}" for b in BLOCKS])
def test_block_runs(line, code, skip, reader_dir):
    if skip:
        pytest.skip(f"README.md:{line}: {skip}")
    imported = set(re.findall(r"^\s*import ([\w, ]+)", code, re.M))
    names = {n.strip() for group in imported for n in group.split(",")}
    missing = [m for m in OPTIONAL if m in names and importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"README.md:{line} needs {', '.join(missing)} (pip install -e '.[torch,keras]')")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as a reader has
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=reader_dir, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, f"README.md:{line} failed (status {out.returncode}):\n{out.stderr[-3000:]}"
