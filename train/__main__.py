"""`python -m train --config configs/cifar10_resnet20.py --workdir DIR [--config.field=value ...]`.

Rerunning the same command on the same DIR resumes from its latest checkpoint.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and plots (resumed if it holds a run)."
)
flags.mark_flags_as_required(["workdir"])
config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/cifar10_resnet20.py.", lock_config=True
)
flags.mark_flags_as_required(["config"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with an unknown `--config.<field>` turned into one line instead of a traceback."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.")
    except (AttributeError, KeyError) as e:  # ml_collections' report of an override naming no field
        detail = e  # ml_collections wraps a KeyError whose message holds the field and a suggestion
        while isinstance(detail, BaseException) and detail.args:
            detail = detail.args[0]
        detail = str(detail).replace("\n", ". ")
        sys.exit(f"error: unknown config field {detail} (every field is listed in configs/default.py)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # orbax logs every save at INFO through absl; keep the console to the progress bar and results.
    logging.set_verbosity(logging.WARNING)
    import jax

    config = FLAGS.config
    if config.distributed:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
        )
    from train import checkpointing, input_pipeline, train

    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (train.ConfigError, input_pipeline.DatasetUnavailableError, checkpointing.CheckpointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
