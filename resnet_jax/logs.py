"""What the command-line programs let other libraries print: their results, not the libraries' start-up logs.

Called first by every entry point (python -m train, train.eval, resnet_jax.predict; the quickstart
notebook's kernel), before TensorFlow is imported or a JAX backend starts. Without it:

- TensorFlow (which tfds uses to read and prepare TFRecord datasets) prints, once per copy of absl it
  loads (two), `WARNING: All log messages before absl::InitializeLog() is called are written to STDERR`
  and `oneDNN custom operations are on ...`. Those come from absl's C++ logging before it is
  initialised, which TF_CPP_MIN_LOG_LEVEL does not reach; only TF_ENABLE_ONEDNN_OPTS=0 does. oneDNN
  speeds up TensorFlow's matrix products and convolutions, which these programs never run: TensorFlow
  only reads, parses and decodes records here, so turning it off changes no result.
- The C++ logs of TensorFlow and XLA (INFO and WARNING, e.g. TensorFlow's CPU-instructions banner and the
  CUDA start-up lines) follow TF_CPP_MIN_LOG_LEVEL, read at their first message; gRPC's (jax.distributed)
  follow GRPC_VERBOSITY.
- tfds warns through Python logging (absl's logger) about folders it searched, e.g. `Variant folder
  DIR/cifar10/3.0.2 has no dataset_info.json` before a dataset is prepared; orbax logs every save at INFO,
  JAX its backend search (`Unable to initialize backend 'tpu'`).

`verbose=True` or RESNET_JAX_VERBOSE=1 (which worker processes and commands started from here inherit)
leaves all of it on. Variables the user set are never overridden.
"""

from __future__ import annotations

import logging
import os

VERBOSE_ENV = "RESNET_JAX_VERBOSE"

_QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # errors only, from TensorFlow's and XLA's C++ logging
    "TF_ENABLE_ONEDNN_OPTS": "0",  # see the module docstring
    "GRPC_VERBOSITY": "ERROR",
}


class _LibraryWarnings(logging.Filter):
    """Drops tfds's records below ERROR: the failures that matter reach the user as our one-line errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (
            record.levelno >= logging.ERROR or f"{os.sep}tensorflow_datasets{os.sep}" not in record.pathname
        )


def quiet_logs(verbose: bool = False) -> bool:
    """Keeps other libraries' start-up and progress logs off stderr, unless verbose.

    Args:
      verbose: the command's --verbose flag; RESNET_JAX_VERBOSE=1 (any value but '' and '0') also counts.

    Returns:
      whether the command is verbose (then nothing was changed, and RESNET_JAX_VERBOSE=1 is set for the
      processes it starts).
    """
    if verbose or os.environ.get(VERBOSE_ENV, "0") not in ("", "0"):
        os.environ[VERBOSE_ENV] = "1"
        return True
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    # Python logging at WARNING, as `absl.logging.set_verbosity(WARNING)` would set it: JAX's INFO records
    # (e.g. "Unable to initialize backend 'tpu'") and orbax's (one per save) stay off.
    if logging.root.level < logging.WARNING:
        logging.root.setLevel(logging.WARNING)
    # tfds logs through absl.logging's logger. Taken only once absl.logging has made it (flax, which
    # resnet_jax imports, loads absl.logging): made here first, it would lack absl's class.
    absl_logger = logging.Logger.manager.loggerDict.get("absl")
    if isinstance(absl_logger, logging.Logger) and not any(
        isinstance(f, _LibraryWarnings) for f in absl_logger.filters
    ):
        absl_logger.addFilter(_LibraryWarnings())
    return False
