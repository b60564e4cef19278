"""A tiny model and a few steps, for tests and a quick check that the program runs end to end."""

from configs import default


def get_config():
    c = default.get_config()
    c.model = "resnet20"  # the smallest registry model; compiles in seconds on a CPU
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_train_steps = 12
    c.schedule = "cosine"
    c.warmup_steps = 2
    c.log_every_steps = 2
    c.eval_every_steps = 6
    c.checkpoint_every_steps = 4
    c.keep_checkpoints = 2
    c.progress_bar = False
    return c
