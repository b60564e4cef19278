"""`import resnet_jax` and loading + predicting with a checkpoint stay free of the training stack, and
`resnet_jax.pretrained` reads timm's weights without torch or TensorFlow.

Run in a fresh interpreter, since this test process has imported everything. absl is the exception the
library cannot avoid: flax.linen (flax/linen/recurrent.py) and orbax.checkpoint import `absl.logging`
themselves, so the test checks that every import of absl comes from those two packages.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from hub_cache import offline_env, publish, timm_model
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
    "timm",
)
# Loaded by resnet_jax.pretrained only: a checkpoint needs neither the Hub client nor an image library.
PRETRAINED_ONLY = ("huggingface_hub", "safetensors", "PIL")

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

kind, source = sys.argv[1].split(":", 1)
if kind == "pretrained":  # a raw 100x75 image: timm's evaluation transform runs inside the jit
    model, variables = resnet_jax.pretrained(source)
    images = np.zeros((1, 75, 100, 3), np.uint8)
else:
    model, variables = resnet_jax.load_checkpoint(source)
    images = np.zeros((2, 32, 32, 3), np.uint8)
logits = resnet_jax.make_predict_fn(model)(variables, images)
assert logits.shape == (len(images), model.num_classes) and np.isfinite(logits).all(), logits.shape
forbidden = json.loads(sys.argv[2])
print(json.dumps({
    "loaded": sorted(m for m in forbidden if m in sys.modules),
    "absl_importers": sorted(importers),
}))
"""


def probe(tmp_path, source, forbidden, env=()):
    # cwd outside the checkout, so the repository's train/ and configs/ are not importable by accident.
    out = subprocess.run(
        [sys.executable, "-c", PROBE, source, json.dumps(forbidden)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "RESNET_JAX_CACHE_DIR": "off", **dict(env)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # absl: only flax and orbax import it, never resnet_jax.
    outside = [
        f for f in result["absl_importers"] if not any(p in f for p in ("/flax/", "/orbax/", "/absl/"))
    ]
    assert not outside, outside
    return set(result["loaded"])


def test_library_imports_no_training_stack(tmp_path):
    workdir = save_tiny_checkpoint(tmp_path / "run")
    assert probe(tmp_path, f"checkpoint:{workdir}", FORBIDDEN + PRETRAINED_ONLY) <= {"absl"}


def test_pretrained_reads_timm_weights_without_torch_or_tensorflow(tmp_path):
    cache = tmp_path / "hf"
    publish(cache, "resnet18.tv_in1k", timm_model("resnet18"))
    loaded = probe(tmp_path, "pretrained:resnet18.tv_in1k", FORBIDDEN, env=offline_env(cache).items())
    assert loaded <= {"absl"}, loaded
