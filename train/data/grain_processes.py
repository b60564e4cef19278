"""Keeps grain's worker processes and shared memory from outliving the training run.

grain 0.2.18 (`mp_prefetch`) starts its workers with the 'spawn' context as daemon processes, and they
pass batches back in POSIX shared memory. Two things then outlive a run:

- Workers of a training process killed by SIGKILL (or the OOM killer): multiprocessing ends daemon
  children only from the parent's exit handlers, which never run, so the workers (about 220 MB each) and
  multiprocessing's resource tracker lived on under PID 1. `worker_init` starts a thread in each worker
  that ends it once its parent has gone; the resource tracker then sees its last client go, unlinks
  what they left and exits. PR_SET_PDEATHSIG would be the kernel's way, but it fires when the *thread*
  that started the child exits, and grain starts workers from its prefetch threads, which come and go.
- Batches held in a reference cycle when their iterator ends: the StopIteration (or error) grain
  passes up keeps the frame of its prefetch thread alive, and with it the last batch of shared memory,
  until the cycle collector runs, which an exiting interpreter does not do; the resource tracker then
  warned "There appear to be N leaked shared_memory objects". `release_shared_memory` collects them
  and waits for grain's asynchronous unlinking.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time

from grain._src.python.ipc import shared_memory_array  # private: where grain queues its unlinks

# How often a worker looks for its parent: a SIGKILLed run's workers are gone within this.
_PARENT_POLL_S = 0.5
# The longest wait for grain's unlinking thread: at interpreter exit its pool may accept the task and
# never run it (its thread already stopped), and an unbounded wait hung the exiting process.
UNLINK_WAIT_S = 10.0


def ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app they are unparsed and reading them
    raises UnparsedFlagAccessError."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def worker_init(parent_pid: int, worker_index: int, worker_count: int) -> None:
    """grain's `worker_init_fn` (bound to the parent's pid): the worker exits when its parent is gone.

    Args:
      parent_pid: the training process's pid (os.getpid() where the dataset was built).
      worker_index, worker_count: grain's arguments, unused.
    """
    del worker_index, worker_count

    def watch() -> None:
        # Reparenting (to PID 1 or a subreaper) is how a process learns that its parent died.
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)  # no cleanup to run: the batches it made are the resource tracker's to unlink

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def release_shared_memory() -> None:
    """Frees the shared memory of batches that only a garbage cycle still holds, and waits until grain's
    deletion thread has unlinked it (its pool's daemon thread would not finish at interpreter exit)."""
    gc.collect()
    pool = getattr(shared_memory_array.SharedMemoryArray, "_del_thread_pool", None)
    if pool is not None:
        with contextlib.suppress(ValueError):  # the pool already stopped (interpreter exit)
            # One thread, first in first out: once this runs, every unlink queued before it has run.
            pool.apply_async(int).wait(UNLINK_WAIT_S)
