"""Stop requests: SIGTERM (preemption) and Ctrl-C become a flag the loop checks at each step boundary."""

from __future__ import annotations

import contextlib
import signal
import sys

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """A context that turns the first SIGTERM/SIGINT into `self.signum`; a second one quits at once.

    The first signal is acknowledged immediately on stderr, naming the step the loop will stop after, so
    a user does not press Ctrl-C again; the loop then stops there, saves, and exits with 128 + the signal
    number.
    A second signal raises KeyboardInterrupt (checkpoints already written stay intact: orbax writes
    each one to a temporary directory and renames it when complete).

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
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: quitting without saving")
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
