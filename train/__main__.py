"""`python -m train --config configs/cifar10_resnet20.py --workdir DIR [--config.field=value ...]`.

Rerunning the same command on the same DIR resumes from its latest checkpoint. Exit statuses: 0 the run
finished (or stopped at config.stop_after_steps); 1 bad input (one line says what and how to fix it;
the workdir is unchanged; or an input file that went bad mid-run: its checkpoints are kept and the line
says how to resume); 2 bad command line; 3 training diverged (the good checkpoints are kept);
128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM): after saving when it came during training, at
once when it came before the first step or a second time: rerun to resume.
"""

import os
import shlex
import signal
import sys

from absl import app, flags
from ml_collections import config_flags

# Variables that change what a run computes or how fast (JAX's and XLA's settings, the data and cache
# locations, resnet_jax's own): the resume command repeats those the user started with.
RESUME_ENV = ("XLA_FLAGS", "LIBTPU_INIT_ARGS", "TFDS_DATA_DIR", "CUDA_VISIBLE_DEVICES", "XDG_CACHE_HOME")
RESUME_ENV_PREFIXES = ("JAX_", "XLA_PYTHON_CLIENT_", "RESNET_JAX_")
# Read before this program adds anything (its XLA:CPU defaults): a resumed run adds them again itself.
STARTED_WITH = {k: v for k, v in os.environ.items() if k in RESUME_ENV or k.startswith(RESUME_ENV_PREFIXES)}
STARTED_IN = os.getcwd()

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and plots (resumed if it holds a run)."
)
flags.mark_flags_as_required(["workdir"])
config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/cifar10_resnet20.py.", lock_config=True
)
flags.mark_flags_as_required(["config"])
flags.DEFINE_bool(
    "verbose",
    False,
    "Also print other libraries' start-up logs (TensorFlow, XLA, tfds, orbax); RESNET_JAX_VERBOSE=1 too.",
)

EXIT_DIVERGED = 3


def _innermost(error: BaseException) -> str:
    detail: object = error
    while isinstance(detail, BaseException) and detail.args:
        detail = detail.args[0]
    return str(detail).replace("\n", ". ")


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a bad config file or field turned into one line instead of a traceback."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.")
    except (AttributeError, KeyError) as e:  # ml_collections' report of an override naming no field
        sys.exit(f"error: unknown config field {_innermost(e)} (every field is listed in configs/default.py)")
    except (OSError, SyntaxError, ImportError, NameError, TypeError, ValueError) as e:  # the file itself
        sys.exit(f"error: cannot load the --config file: {type(e).__name__}: {_innermost(e)}")


def resume_command(args: list[str], env: dict[str, str], cwd: str) -> str:
    """One shell line that reruns this program: `cd CWD && VAR=value ... python -m train ARGS`.

    Args:
      args: the program's arguments (sys.argv[1:]); relative paths among them need `cwd`.
      env: the environment variables to set on the line (STARTED_WITH).
      cwd: the directory the program was started in.
    """
    assignments = [f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    command = shlex.join([sys.executable, "-m", "train", *args])
    return " ".join([f"cd {shlex.quote(cwd)} &&", *assignments, command])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from resnet_jax.logs import quiet_logs
    from resnet_jax.xla_flags import set_xla_cpu_defaults

    quiet_logs(FLAGS.verbose)  # before TensorFlow loads or a JAX backend starts
    set_xla_cpu_defaults()  # before JAX starts its backend; a flag the user set in XLA_FLAGS wins
    import jax

    from resnet_jax.compilation_cache import enable_compilation_cache

    enable_compilation_cache()  # a rerun skips compilation; RESNET_JAX_CACHE_DIR=off disables it

    try:  # config_flags loads the file on the first access to a field
        config = FLAGS.config
        config.distributed  # noqa: B018
    except (OSError, SyntaxError, ImportError, NameError, TypeError, ValueError, AttributeError) as e:
        sys.exit(f"error: cannot load the --config file: {type(e).__name__}: {_innermost(e)}")
    if config.distributed:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
        )
    from resnet_jax.checkpoint import CheckpointError
    from resnet_jax.checkpoint.run import is_no_space, no_space
    from train import health, signals, train
    from train.configuration import ConfigError
    from train.data import DataError, tfds_data

    # DataError: an image that cannot be read outside the loop (which adds how to resume): while caching
    # features before anything is written, or in a finished run's evaluation.
    try:
        with signals.quit_on_signal(multi_host=jax.process_count() > 1):
            result = train.train_and_evaluate(config, FLAGS.workdir)
    except signals.Interrupted as e:
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except (ConfigError, tfds_data.DatasetUnavailableError, CheckpointError, DataError) as e:
        sys.exit(f"error: {e}")
    except health.TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    except OSError as e:  # metrics, TensorBoard files or plots on a full disk
        if not is_no_space(e):
            raise
        sys.exit(f"error: {no_space(FLAGS.workdir)}")
    if result["stopped_by"] in ("SIGTERM", "SIGINT"):
        print(f"resume with: {resume_command(sys.argv[1:], STARTED_WITH, STARTED_IN)}", flush=True)
        sys.exit(128 + signal.Signals[result["stopped_by"]])


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
