"""The one error type of the checkpoint layer."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used: corrupted, incomplete, or not the model or run it is loaded into.

    The message names the checkpoint (path and step) and the way out.
    """
