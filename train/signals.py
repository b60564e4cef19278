"""Stop requests: SIGTERM (preemption) and Ctrl-C become a flag the loop checks at each step boundary.

Outside the step loop (while the run prepares: reading data, compiling, extracting features) there is
nothing new to save, so `quit_on_signal` ends the run at once with `Interrupted`; inside it, `StopRequest`
lets the loop stop at a step boundary and save, and a second signal ends it at once the same way.
"""

from __future__ import annotations

import contextlib
import signal
import sys

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """The run ended at once on a signal, without saving; checkpoints already written are intact.

    Attributes:
      signum: the signal.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def quit_on_signal(multi_host: bool = False):
    """SIGTERM and SIGINT raise Interrupted while the run prepares (StopRequest takes over in the loop).

    Args:
      multi_host: several processes (jax.distributed): SIGTERM is left to JAX's preemption notifier,
        which makes every process stop at the same step; taking it here would end one process alone and
        leave the others waiting in a collective.
    """

    def handle(signum: int, frame: object) -> None:
        raise Interrupted(
            signum,
            f"{signal.Signals(signum).name} received before training started: nothing new to save. Rerun "
            "the same command to start again (it resumes from the last checkpoint, if any)",
        )

    previous = {}
    for sig in (signal.SIGINT,) if multi_host else STOP_SIGNALS:
        with contextlib.suppress(ValueError):  # outside the main thread signals cannot be caught
            previous[sig] = signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopRequest:
    """A context that turns the first SIGTERM/SIGINT into `self.signum`; a second one quits at once.

    The first signal is acknowledged immediately on stderr, naming the step the loop will stop after, so
    a user does not press Ctrl-C again; the loop then stops there, saves, and exits with 128 + the signal
    number.
    A second signal raises Interrupted: the run ends at once without saving (checkpoints already written
    stay intact: orbax writes each one to a temporary directory and renames it when complete).

    Attributes:
      signum: the first signal received, or None.
      dispatched: the steps the loop has dispatched (the loop sets it after each dispatch).
      checked: whether the loop has already asked `requested` since that dispatch: a signal after that
        stops the loop one step later.
      enabled: print the acknowledgement (False on every process but process 0).
      multi_host: several processes: agree on the stopping step through jax.distributed.
    """

    def __init__(self, enabled: bool = True, multi_host: bool = False):
        self.signum: int | None = None
        self.dispatched = 0
        self.checked = False
        self.enabled = enabled
        self.multi_host = multi_host
        self._previous: dict[int, object] = {}

    def requested(self, step: int) -> bool:
        """Whether to stop after `step`. Multi-host: every process answers True at the same step.

        With several processes, SIGTERM is left to JAX's preemption notifier (jax.distributed): a
        signal to any process makes every process reach the same sync point, so all save the same step.
        """
        self.checked = True
        if self.multi_host and self.signum is None:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.signum = signal.SIGTERM
                if self.enabled:
                    print(
                        f"\nSIGTERM received: stopping after step {step}, saving a checkpoint...", flush=True
                    )
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def __enter__(self) -> StopRequest:
        # Multi-host: JAX's preemption notifier owns SIGTERM (see `requested`).
        for sig in (signal.SIGINT,) if self.multi_host else STOP_SIGNALS:
            # Outside the main thread signals cannot be caught; leave them alone there.
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise Interrupted(
                signum,
                f"second {signal.Signals(signum).name}: quit at once without saving; the checkpoints "
                "written before are intact. Rerun the same command to resume from the last one",
            )
        self.signum = signum
        if self.enabled:
            stop_at = self.dispatched + int(self.checked)
            print(
                f"\n{signal.Signals(signum).name} received: stopping after step {stop_at}, saving a "
                "checkpoint... (send it again to quit at once without saving)",
                file=sys.stderr,
                flush=True,
            )

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
