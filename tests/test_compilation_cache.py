"""The persistent compilation cache: where it lives, how to turn it off, and that a rerun reuses it."""

import os
import subprocess
import sys

import pytest

from resnet_jax.compilation_cache import ENV_VAR, default_cache_dir, resolve_cache_dir

pytestmark = pytest.mark.slow  # the full tier: python -m pytest -m "slow or not slow"


def test_location_rules(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "resnet_jax" / "jax")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == os.path.expanduser("~/.cache/resnet_jax/jax")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "mine"))
    assert resolve_cache_dir() == str(tmp_path / "mine")
    assert resolve_cache_dir(str(tmp_path / "arg")) == str(tmp_path / "arg")  # the argument wins
    for off in ("off", "0", "", "None"):
        monkeypatch.setenv(ENV_VAR, off)
        assert resolve_cache_dir() is None


PROGRAM = """
import sys, jax, jax.numpy as jnp
import resnet_jax
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(1) if name == "/jax/compilation_cache/cache_hits" else None
)
print(resnet_jax.enable_compilation_cache())
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # this tiny program compiles in ms
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
print(float(f(jnp.ones((64, 64)))))
print("hits", len(hits))
"""


@pytest.mark.parametrize("setting", ["dir", "off"])
def test_second_run_reuses_the_cache(tmp_path, setting):
    cache = tmp_path / "cache"
    env = {**os.environ, ENV_VAR: str(cache) if setting == "dir" else "off"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    runs = [
        subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=120)
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    first, second = (run.stdout.splitlines() for run in runs)
    assert first[1] == second[1]  # the same result
    if setting == "off":
        assert first[0] == "None" and not cache.exists()
        assert second[2] == "hits 0"
        return
    assert first[2] == "hits 0" and second[2] != "hits 0"
    assert first[0] == str(cache)
    entries = sorted(p.name for p in cache.iterdir())
    assert entries, "the first run wrote no compiled program"
    # The second run found its program there: nothing new was written.
    assert sorted(p.name for p in cache.iterdir()) == entries
