"""Stopping a slot's running call from another thread, for a job asked to stop (cancel --running).

A slot runs its jobs in its own main thread (rq's SimpleWorker: no fork, so the model stays
warm), so there is no work horse to kill, as rq's stop commands do. Instead the thread that hears
the request (rq's command thread, on the worker's pubsub channel) sends STOP_SIGNAL to the main
thread, whose handler raises JobStopped inside the call, the way rq's timeout raises
JobTimeoutException with SIGALRM. Python code stops at once; so does a wait that a signal
interrupts (sleep, a socket read); a C call that holds on (a CUDA kernel, a long GIL-holding
call) stops when it returns. A call that never returns is its node's to end: worker/stopper.py
restarts the slot process once the stop grace has passed.

The handler raises only inside the call that was asked (`stoppable`): a request that arrives
after that call returned, or for a run the slot is not on, does nothing.
"""

from __future__ import annotations

import itertools
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNAL = signal.SIGUSR1  # a slot process's, for this: tasks must not install their own handler for it


class JobStopped(BaseException):
    """Raised inside a job's call when one of its runs was asked to stop. A BaseException, as
    KeyboardInterrupt is, so a task's `except Exception` does not swallow it."""


class CallStop:
    """The call a slot runs now, and the runs of it asked to stop. `stoppable` and the signal
    handler run in the main thread; `request` in any other. The handler takes no lock (it may
    interrupt the main thread anywhere): each field is one object, replaced whole."""

    def __init__(self) -> None:
        self._calls = itertools.count(1)
        self._call: tuple[int, frozenset[str]] | None = None  # the call running now: (its number, its runs)
        self._fire = 0  # the call number a request is for; the handler raises while that call runs
        self.requested: frozenset[str] = frozenset()  # runs of the current (or last) call asked to stop
        self._main = threading.main_thread().ident or 0

    def install(self) -> None:
        """Handle STOP_SIGNAL in this process (from the main thread, as signal.signal requires)."""
        signal.signal(STOP_SIGNAL, self._on_signal)

    @contextmanager
    def stoppable(self, execution_ids: Iterable[str]) -> Iterator[None]:
        """Around one call (a job, or a batched call) whose runs are `execution_ids`: a request
        for any of them raises JobStopped in it."""
        self.requested = frozenset()
        self._call = (next(self._calls), frozenset(execution_ids))
        try:
            yield
        finally:
            self._call = None

    def request(self, execution_id: str) -> bool:
        """Stop the running call if `execution_id` is one of its runs; whether it is."""
        call = self._call
        if call is None or execution_id not in call[1]:
            return False
        self.requested = self.requested | {execution_id}
        self._fire = call[0]
        signal.pthread_kill(self._main, STOP_SIGNAL)  # to the main thread: it interrupts a sleep there
        return True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        call = self._call
        if call is not None and self._fire == call[0]:
            self._fire = 0  # one raise per request: a task's cleanup on the way out is not cut short again
            raise JobStopped(f"stopped on request (runs {', '.join(sorted(self.requested))})")
