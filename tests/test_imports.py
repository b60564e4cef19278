"""`import resnet_jax` and loading + predicting with a checkpoint stay free of the training stack.

Run in a fresh interpreter, since this test process has imported everything. absl is the exception the
library cannot avoid: flax.linen (flax/linen/recurrent.py) and orbax.checkpoint import `absl.logging`
themselves, so the test checks that every import of absl comes from those two packages.
"""

import json
import subprocess
import sys
from pathlib import Path

from tiny_checkpoint import save_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = (
    "tensorflow",
    "tensorflow_datasets",
    "ml_collections",
    "torch",
    "torchvision",
    "keras",
    "grain",
    "absl",
    "train",
    "configs",
)

# Records, for every `import absl...` statement executed, the file that executed it.
PROBE = r"""
import builtins, json, sys
importers = set()
_import = builtins.__import__

def _record(name, globals=None, locals=None, fromlist=(), level=0):
    if name == "absl" or name.startswith("absl."):
        frame = sys._getframe(1)
        while frame and "importlib" in frame.f_code.co_filename:
            frame = frame.f_back
        importers.add(frame.f_code.co_filename if frame else "?")
    return _import(name, globals, locals, fromlist, level)

builtins.__import__ = _record
import numpy as np
import resnet_jax

model, variables = resnet_jax.load_checkpoint(sys.argv[1])
logits = resnet_jax.make_predict_fn(model)(variables, np.zeros((2, 32, 32, 3), np.uint8))
assert logits.shape == (2, 10), logits.shape
forbidden = json.loads(sys.argv[2])
print(json.dumps({
    "loaded": sorted(m for m in forbidden if m in sys.modules),
    "absl_importers": sorted(importers),
}))
"""


def test_library_imports_no_training_stack(tmp_path):
    workdir = save_tiny_checkpoint(tmp_path / "run")
    # cwd outside the checkout, so the repository's train/ and configs/ are not importable by accident.
    out = subprocess.run(
        [sys.executable, "-c", PROBE, workdir, json.dumps(FORBIDDEN)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO), "RESNET_JAX_CACHE_DIR": "off"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["loaded"]) <= {"absl"}, result
    # absl: only flax and orbax import it, never resnet_jax.
    outside = [
        f for f in result["absl_importers"] if not any(p in f for p in ("/flax/", "/orbax/", "/absl/"))
    ]
    assert not outside, outside
