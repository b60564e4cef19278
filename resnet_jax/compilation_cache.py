"""JAX's persistent compilation cache in a per-user directory: a rerun skips XLA compilation.

    import resnet_jax
    resnet_jax.enable_compilation_cache()    # before the first jitted call

`python -m train`, `python -m train.eval`, `python -m resnet_jax.predict` and the quickstart notebook call
it themselves. Where the cache lives, first match wins:
  1. the `cache_dir` argument;
  2. `$RESNET_JAX_CACHE_DIR` (`off`, `0`, `false`, `none` or empty: this function turns nothing on, so
     there is no cache unless JAX's own `JAX_COMPILATION_CACHE_DIR` is set);
  3. a cache directory already configured for JAX (`JAX_COMPILATION_CACHE_DIR`): left as it is;
  4. `$XDG_CACHE_HOME/resnet_jax/jax`, else `~/.cache/resnet_jax/jax`.
"""

from __future__ import annotations

import os

ENV_VAR = "RESNET_JAX_CACHE_DIR"
OFF_VALUES = ("", "0", "off", "false", "no", "none")

# XLA compiles taking at least this long are cached. JAX's default (1 s) leaves out the many small
# programs of a start-up (initialisation, random splits, metric sums) that together cost seconds on a CPU.
MIN_COMPILE_TIME_S = 0.1


def default_cache_dir() -> str:
    """`$XDG_CACHE_HOME/resnet_jax/jax`, or `~/.cache/resnet_jax/jax` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "resnet_jax", "jax")


def resolve_cache_dir(cache_dir: str | None = None) -> str | None:
    """The directory `enable_compilation_cache(cache_dir)` would use; None when the cache is off.

    Args:
      cache_dir: an explicit directory; None reads $RESNET_JAX_CACHE_DIR, then JAX's own setting,
        then the per-user default.
    """
    if cache_dir is not None:
        return os.path.abspath(os.path.expanduser(cache_dir))
    env = os.environ.get(ENV_VAR)
    if env is not None:
        if env.strip().lower() in OFF_VALUES:
            return None
        return os.path.abspath(os.path.expanduser(env))
    import jax

    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return configured
    return default_cache_dir()


def enable_compilation_cache(cache_dir: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache; returns its directory, or None when it is off.

    Call it before the first compilation of the process (JAX opens the cache on first use).

    Args:
      cache_dir: where compiled programs are stored; None: $RESNET_JAX_CACHE_DIR (`off` disables the
        cache), else a directory JAX is already configured with, else `$XDG_CACHE_HOME/resnet_jax/jax`
        (`~/.cache/resnet_jax/jax`).
    """
    path = resolve_cache_dir(cache_dir)
    if path is None:
        return None
    import jax

    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None  # an unwritable cache location must never stop a run: compile as usual
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
