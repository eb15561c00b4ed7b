"""`gpufleet top` (also `gpufleet status --watch`): the fleet live, refreshed every second.

Reads Redis, hands plain data to cli/live.py's `render_frame`, and shows the frame with rich's
`Live` on the terminal's alternate screen (as top and htop do), so the shell comes back as it
was. Keys are read without blocking, in cbreak mode, only when stdin is a terminal; q quits,
and so does Ctrl-C.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from types import TracebackType
from typing import IO, Any

import click
import redis
from rich.console import Console
from rich.live import Live

from gpufleet.dispatcher.client.results import batches_in_flight
from gpufleet.dispatcher.errors import RedisUnavailable
from gpufleet.dispatcher.observe.status import read_status
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.connection import REDIS_DOWN, connect, mask_url
from gpufleet.dispatcher.store.keys import Keys

from .live import Sample, frame_record, render_error, render_frame
from .state import CliState, pass_state

QUIT_KEYS = b"qQ"


class KeyReader:
    """Keys typed while the view runs: cbreak mode (no Enter, no echo; Ctrl-C still signals)
    on a terminal, restored on exit; elsewhere (a pipe, a test) it only waits."""

    def __init__(self, stream: IO[Any]) -> None:
        self._stream = stream
        self._fd: int | None = None
        self._saved: Any = None

    def __enter__(self) -> KeyReader:
        try:
            import termios
            import tty

            if self._stream.isatty():
                fd = self._stream.fileno()
                self._saved = termios.tcgetattr(fd)
                tty.setcbreak(fd)
                self._fd = fd
        except (ImportError, OSError, ValueError):  # no termios (Windows), or no real file
            self._fd = None
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._fd is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)

    def quit_within(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s`; True as soon as q is pressed."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if self._fd is None:
                time.sleep(left)
                return False
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready and any(k in QUIT_KEYS for k in os.read(self._fd, 64)):
                return True
        return False


def watch(settings: Settings, interval_s: float, once: bool = False) -> None:
    """Run the live view until q or Ctrl-C; with `once`, print one frame and return (on a
    terminal it fits the screen; piped, it lists every node)."""
    r = connect(settings.redis_url)
    console = Console()
    if once:
        height = console.height if console.is_terminal else 10**6  # piped: every node, no truncation
        console.print(render_frame(*_read(r, settings), prev=None, height=height))
        return
    prev: Sample | None = None
    try:
        with KeyReader(sys.stdin) as reader, Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                try:
                    status, batches, desired = _read(r, settings)
                    now = time.time()
                    live.update(render_frame(status, batches, desired, prev, now=now, height=console.height),
                                refresh=True)  # fmt: skip
                    prev = Sample.of(status, now)
                except redis.RedisError as e:
                    live.update(render_error(f"Redis: {e}", interval_s), refresh=True)
                if reader.quit_within(interval_s):
                    return
    except KeyboardInterrupt:
        return


def watch_json(settings: Settings, interval_s: float, once: bool = False) -> None:
    """`top --json`: each frame's data (live.frame_record) as one JSON line, every `interval_s`
    until Ctrl-C; with `once`, one line and return. Redis going away ends it (exit 1)."""
    r = connect(settings.redis_url)
    prev: Sample | None = None
    try:
        while True:
            try:
                status, batches, _ = _read(r, settings)
            except REDIS_DOWN as e:
                raise RedisUnavailable(mask_url(settings.redis_url), str(e) or type(e).__name__) from None
            now = time.time()
            click.echo(json.dumps(frame_record(status, batches, prev, now)))
            if once:
                return
            prev = Sample.of(status, now)
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return


def _read(r: redis.Redis, settings: Settings) -> tuple[dict[str, Any], list[Any], int | None]:
    """The status record, the batches in flight and the desired count; the record's own
    desired_nodes is the same count (read in the same round trip as the ingress)."""
    keys = Keys(settings.namespace)
    status = read_status(r, keys, forget_dead_after_s=settings.forget_dead_after_s)
    return status, batches_in_flight(r, keys), status["desired_nodes"]


@click.command()
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              metavar="S", help="Seconds between refreshes.")  # fmt: skip
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts and logs).")
@click.option("--json", "as_json", is_flag=True,
              help="Print each frame's data as one JSON line instead (see README); with --once, one line.")
@pass_state
def top(state: CliState, interval_s: float, once: bool, as_json: bool) -> None:
    """The fleet live: each node's state, GPU and memory bars, queue, running, jobs/s and EWMA
    latency; ingress depth per priority; batches in flight with progress and ETA; live vs
    desired nodes. Fits 80x24. q or Ctrl-C quits."""
    if as_json:
        watch_json(state.settings, interval_s, once)
    else:
        watch(state.settings, interval_s, once)
