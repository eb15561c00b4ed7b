"""Runs child processes and restarts any that dies, with backoff, until stopped.

A node of capacity N runs N job slots this way, and `worker --gpus` one node per GPU.
Children are spawned (never forked: CUDA does not survive a fork) into their own process
group, so a Ctrl-C at the terminal reaches only the parent, which forwards one SIGTERM to each
child: each drains its node, finishes its running job and exits. A child whose parent dies
gets SIGTERM too (Linux's parent-death signal), so no orphan keeps working unsupervised.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Collection, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = 0.5
MAX_RESTART_BACKOFF_S = 30.0
PR_SET_PDEATHSIG = 1  # prctl(2) option


@dataclass(frozen=True)
class Child:
    """One supervised process: `target(*args)` in a fresh interpreter, with `env` set first."""

    name: str
    target: Callable[..., None]
    args: tuple[Any, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


def _child_main(child: Child) -> None:
    os.setpgrp()  # out of the terminal's process group: only the parent's forwarded signal arrives
    with suppress(OSError, AttributeError):  # not Linux: an orphan then runs until stopped by hand
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    os.environ.update(dict(child.env))  # before the target imports anything that reads it (CUDA)
    child.target(*child.args)


def supervise(children: Sequence[Child], *, burst: bool = False, on_stop: Callable[[], None] | None = None,
              on_death: Callable[[Child, int], None] | None = None,
              on_start: Callable[[Child, int], None] | None = None, done_codes: Collection[int] = (),
              final_codes: Collection[int] = (), restart_codes: Collection[int] = ()) -> int | None:  # fmt: skip
    """Run every child until SIGINT/SIGTERM; a child that dies is restarted after a backoff
    (0.5 s, doubling to 30 s), once `on_death(child, pid)` has cleaned up after it. A child that
    exits with one of `restart_codes` asked for its own replacement (worker/recycle.py): it is
    restarted at once, its backoff reset, with no clean-up. `on_start(child, pid)` runs after
    each start. A child that exits with one of `done_codes` (or 0, with `burst`) is done.
    `on_stop` runs once when a stop signal arrives. A child that exits with one of `final_codes`
    stops the others, as a stop signal does; its code is returned (else None)."""
    mp = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def start(child: Child) -> multiprocessing.process.BaseProcess:
        p = mp.Process(target=_child_main, args=(child,), name=child.name)
        p.start()
        if on_start and p.pid:
            on_start(child, p.pid)
        return p

    def forward(signum: int, frame: Any) -> None:
        if stopping.is_set():
            return
        stopping.set()
        if on_stop:
            on_stop()
        for p in procs.values():
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)

    by_name = {c.name: c for c in children}
    procs = {c.name: start(c) for c in children}
    backoff_s = dict.fromkeys(procs, RESTART_BACKOFF_S)
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    final: int | None = None
    try:
        while procs:
            for name, p in list(procs.items()):
                p.join(timeout=0.2)
                if p.is_alive():
                    continue
                if p.exitcode in final_codes:
                    final = p.exitcode
                    forward(signal.SIGTERM, None)
                if stopping.is_set() or p.exitcode in done_codes or (burst and p.exitcode == 0):
                    del procs[name]
                    continue
                if p.exitcode in restart_codes:
                    backoff_s[name] = RESTART_BACKOFF_S
                    procs[name] = start(by_name[name])
                    continue
                log.warning("child died, restarting child=%s exitcode=%s in=%.1fs", name, p.exitcode, backoff_s[name])
                if on_death:
                    on_death(by_name[name], p.pid or 0)
                stopping.wait(backoff_s[name])
                backoff_s[name] = min(MAX_RESTART_BACKOFF_S, backoff_s[name] * 2)
                if stopping.is_set():
                    del procs[name]
                else:
                    procs[name] = start(by_name[name])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return final
