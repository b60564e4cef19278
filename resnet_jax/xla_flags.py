"""Faster XLA:CPU settings for ResNets, added to XLA_FLAGS before JAX starts its backend.

    import resnet_jax
    resnet_jax.set_xla_cpu_defaults()    # before the first JAX computation of the process

`python -m train`, `python -m train.eval`, `python -m resnet_jax.predict` and the quickstart notebook call
it themselves. What it sets (`CPU_DEFAULTS`, measured in bench/xla_flags.py):

  --xla_cpu_experimental_ynn_fusion_type=...   which parts of a program XLA:CPU hands to YNNPACK.

Rules, so that it is always safe to call:
  - a flag the user already put in XLA_FLAGS (any value) is left as the user set it;
  - XLA_FLAGS naming a file of flags (XLA's other form: no leading '-') is left untouched;
  - a flag is only added if this jaxlib accepts it: XLA aborts the process on an unknown flag or value,
    so each setting is first tried in a subprocess (`jax.devices('cpu')` on the CPU backend alone),
    once per jaxlib version; the answer is kept in `$XDG_CACHE_HOME/resnet_jax/xla_flags.json`;
  - once JAX has started a backend, XLA has already read XLA_FLAGS: nothing is changed then.
The flags only configure XLA's CPU compiler, so they change nothing for programs compiled for GPUs or
TPUs (XLA's CPU client, which JAX starts alongside them, uses them for host computations).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import warnings

from resnet_jax.compilation_cache import default_cache_dir

# flag -> value. XLA's own default for this flag (jaxlib 0.10.2) hands YNNPACK dots and larger
# convolutions; a list without +/- replaces it (a +/- list edits it). This one: YNNPACK fuses dots,
# elementwise ops and reductions, and the convolutions go back to XLA's own (Eigen), whose weight-gradient
# convolutions at ResNet-20's small channel counts are faster. Measured on a quiet 2-core CPU
# (docs/benchmarks.md): ResNet-20 training 1.5x XLA's default, evaluation 1.3x, ResNet-50 feature
# extraction unchanged.
CPU_DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": "dot,eltwise,reduce"}
PROBE_TIMEOUT_S = 120
_PROBE = "import jax; jax.devices('cpu')"


def user_flags(xla_flags: str) -> set[str]:
    """Names of the flags set in an XLA_FLAGS value, without dashes ('--a=1 -b' gives {'a', 'b'})."""
    try:
        tokens = shlex.split(xla_flags)
    except ValueError:  # an unbalanced quote: XLA's own parser stops there too
        tokens = xla_flags.split()
    return {t.lstrip("-").split("=", 1)[0] for t in tokens if t.startswith("-")}


def cache_path() -> str:
    """Where the answers of the probe are kept: next to the compilation cache's default directory."""
    return os.path.join(os.path.dirname(default_cache_dir()), "xla_flags.json")


def _jaxlib_key() -> str:
    from importlib import metadata

    try:
        return f"jaxlib {metadata.version('jaxlib')}"
    except metadata.PackageNotFoundError:
        return "jaxlib unknown"


def jaxlib_accepts(flags: str, *, use_cache: bool = True) -> bool:
    """Whether the installed jaxlib starts its CPU backend with XLA_FLAGS=`flags` (it aborts otherwise).

    Args:
      flags: a complete XLA_FLAGS value, e.g. '--xla_cpu_experimental_ynn_fusion_type=dot'.
      use_cache: read and record the answer in `cache_path()`, keyed by jaxlib version and `flags`.
    """
    key = f"{_jaxlib_key()} {flags}"
    path = cache_path()
    cached = {}
    if use_cache:
        try:
            with open(path) as f:
                cached = json.load(f)
        except (OSError, ValueError):
            cached = {}
        if isinstance(cached.get(key), bool):
            return cached[key]
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=PROBE_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired):
        return False  # no answer: add nothing this time, ask again next time
    accepted = probe.returncode == 0
    if use_cache:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump({**cached, key: accepted}, f, indent=1)
            os.replace(tmp, path)  # whole or not at all, should processes race
        except OSError:
            pass  # an unwritable cache only costs the probe again next time
    return accepted


def _backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge  # private, so guarded: a JAX without it is treated as not started

    return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())


def set_xla_cpu_defaults(defaults: dict[str, str] | None = None) -> dict[str, str]:
    """Adds each default flag the user has not set to XLA_FLAGS; returns the flags added.

    Call it before the first JAX computation of the process (importing jax is fine; XLA reads
    XLA_FLAGS when JAX starts a backend, e.g. at `jax.devices()` or the first jitted call).

    Args:
      defaults: flag name -> value; None: `CPU_DEFAULTS`.
    """
    defaults = CPU_DEFAULTS if defaults is None else defaults
    current = os.environ.get("XLA_FLAGS", "")
    if current.strip() and not current.lstrip().startswith("-"):
        return {}  # XLA reads its flags from the file this names
    wanted = {k: v for k, v in defaults.items() if k not in user_flags(current)}
    if not wanted:
        return {}
    if _backend_started():
        warnings.warn(
            "resnet_jax.set_xla_cpu_defaults() was called after JAX started its backend, so XLA_FLAGS is "
            "not read again: call it before the first JAX computation",
            stacklevel=2,
        )
        return {}
    added = {k: v for k, v in wanted.items() if jaxlib_accepts(f"--{k}={v}")}
    if added:
        extra = " ".join(f"--{k}={v}" for k, v in added.items())
        os.environ["XLA_FLAGS"] = f"{current.strip()} {extra}".strip()
    return added
