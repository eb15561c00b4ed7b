"""`gpufleet submit` and `gpufleet results`: a batch in, its results out."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from gpufleet.dispatcher.client.results import BatchProgress, iter_results, read_progress
from gpufleet.dispatcher.client.submit import submit_file
from gpufleet.dispatcher.store.connection import connect
from gpufleet.dispatcher.store.keys import PRIORITIES, Keys

from .state import EXIT_ERROR, CliState, pass_state

POLL_S = 0.2


def wait_for_batch(read: Callable[[], BatchProgress], show_bar: bool) -> BatchProgress:
    """Poll a batch until every job reached a final state, with a progress bar on stderr."""
    progress = read()
    if not show_bar:
        while not progress.done:
            time.sleep(POLL_S)
            progress = read()
        return progress
    with click.progressbar(length=progress.size, label="running", file=sys.stderr, show_pos=True) as bar:
        shown = 0
        while True:
            ended = progress.finished + progress.failed + progress.canceled
            bar.update(ended - shown)
            shown = ended
            if progress.done:
                return progress
            time.sleep(POLL_S)
            progress = read()


class LazyProgressBar:
    """A click progress bar on stderr whose length is known only once it starts."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bar: Any = None

    def start(self, total: int) -> Callable[[int], None]:
        self._bar = click.progressbar(length=total, label=self._label, file=sys.stderr, show_pos=True)
        self._bar.__enter__()
        return self._bar.update

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--func", "default_func", metavar="MODULE:FUNCTION",
              help="Function for lines without a 'func' field, e.g. gpufleet.worker.tasks:echo.")  # fmt: skip
@click.option("--priority", type=click.Choice(PRIORITIES), default="normal", show_default=True,
              help="Priority for lines without a 'priority' field.")  # fmt: skip
@click.option("--batch", "batch_id", metavar="NAME", help="Name the batch (default: a new unique id).")
@click.option("--wait", is_flag=True, help="Show progress until every job ended; exit 1 if any failed.")
@click.option("--json", "as_json", is_flag=True, help="Print the receipt as JSON.")
@pass_state
def submit(state: CliState, file: str, default_func: str | None, priority: str, batch_id: str | None,
           wait: bool, as_json: bool) -> None:  # fmt: skip
    """Submit the jobs of a JSON Lines FILE ('-' reads stdin) as one batch.

    Every line is checked before anything is enqueued: a bad line is reported with its line
    number and field, the exit code is 2, and nothing of the file is enqueued. Prints the batch
    id, for `gpufleet results`.
    """
    r = connect(state.settings.redis_url)
    bar = LazyProgressBar("submitting") if sys.stderr.isatty() else None
    try:
        receipt = submit_file(r, state.settings, file, default_func=default_func, default_priority=priority,
                              batch_id=batch_id, progress_factory=bar.start if bar else None)  # fmt: skip
    finally:
        if bar:
            bar.close()
    if as_json:
        click.echo(json.dumps({"batch": receipt.batch_id, "jobs": receipt.count}))
    else:
        click.echo(receipt.batch_id)
    if wait:
        keys = Keys(state.settings.namespace)
        final = wait_for_batch(lambda: read_progress(r, keys, receipt.batch_id), sys.stderr.isatty())
        click.echo(f"finished={final.finished} failed={final.failed} canceled={final.canceled}", err=True)
        if final.failed:
            sys.exit(EXIT_ERROR)


@click.command()
@click.argument("batch_id", metavar="BATCH")
@click.option("--wait", is_flag=True, help="Wait until every job of the batch ended before printing.")
@click.option("--json", "as_json", is_flag=True, help="Accepted as on every command; the output is always JSON Lines.")
@pass_state
def results(state: CliState, batch_id: str, wait: bool, as_json: bool) -> None:
    """Print one JSON line per job of BATCH, in submission order.

    Each line has id (the client's id, else the job id), job_id, status, node, result or
    error, attempts, and enqueued_at / started_at / ended_at (ISO 8601, UTC).
    """
    r = connect(state.settings.redis_url)
    keys = Keys(state.settings.namespace)
    if wait:
        wait_for_batch(lambda: read_progress(r, keys, batch_id), sys.stderr.isatty())
    for record in iter_results(r, keys, batch_id):
        click.echo(json.dumps(record))
