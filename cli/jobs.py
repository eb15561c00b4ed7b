"""`gpufleet submit` and `gpufleet results`: a batch in, its results out."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from gpufleet.dispatcher.client.notify import check_notify_url, set_notify
from gpufleet.dispatcher.client.openai_batch import DEFAULT_RETRIES, FORMATS
from gpufleet.dispatcher.client.results import BatchProgress, read_progress, write_results
from gpufleet.dispatcher.client.submit import submit_file
from gpufleet.dispatcher.store.connection import connect
from gpufleet.dispatcher.store.keys import PRIORITIES, Keys

from .options import check_tenant_option
from .render import render_resume, render_unwritten
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
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="The file's kind: jsonl (a job file), openai (an OpenAI batch file: custom_id, method, url, "
                   "body), or auto: openai when the first line has those four fields.")  # fmt: skip
@click.option("--func", "default_func", metavar="MODULE:FUNCTION",
              help="Function for job file lines without a 'func' field, e.g. gpufleet.worker.tasks:echo.")  # fmt: skip
@click.option("--priority", type=click.Choice(PRIORITIES), default="normal", show_default=True,
              help="Priority for lines without a 'priority' field.")  # fmt: skip
@click.option("--retries", type=click.IntRange(min=0), default=None,
              help=f"OpenAI lines: extra attempts after a 429, a 5xx or a timeout (default {DEFAULT_RETRIES}).")
@click.option("--timeout", "timeout_s", type=click.IntRange(min=1), default=None, metavar="SECONDS",
              help="OpenAI lines: the most one request may take (default 180).")
@click.option("--batch", "batch_id", metavar="NAME", help="Name the batch (default: a new unique id).")
@click.option("--tenant", default=None, callback=check_tenant_option, metavar="TENANT",
              help="The tenant the batch belongs to (default: GPUFLEET_TENANT, else 'default'): freed slots are "
                   "shared fairly between the tenants with work, and the tenant's quotas apply (`gpufleet tenant "
                   "set`).")  # fmt: skip
@click.option("--notify", metavar="URL",
              help="When the batch ends, the dispatcher POSTs its summary (counts, duration, failures) as JSON to "
                   "this http(s) URL, retrying with backoff.")  # fmt: skip
@click.option("--resume", is_flag=True,
              help="With --batch NAME: when that batch exists, enqueue only the lines it has not run to an end "
                   "(missing, failed or canceled), after checking that the file is the one it was submitted from.")
@click.option("--wait", is_flag=True, help="Show progress until every job ended; exit 1 if any failed.")
@click.option("--json", "as_json", is_flag=True, help="Print the receipt as JSON.")
@pass_state
def submit(state: CliState, file: str, fmt: str, default_func: str | None, priority: str, retries: int | None,
           timeout_s: int | None, batch_id: str | None, tenant: str | None, notify: str | None, resume: bool,
           wait: bool, as_json: bool) -> None:  # fmt: skip
    """Submit the jobs of a job file or an OpenAI batch FILE ('-' reads stdin) as one batch.

    Every line is checked before anything is enqueued: a bad line is reported with its line
    number and field, the exit code is 2, and nothing of the file is enqueued. Prints the batch
    id, for `gpufleet results`. With --resume, an existing batch gets only what did not run to
    an end, and a summary goes to stderr.
    """
    if resume and not batch_id:
        raise click.UsageError("--resume needs --batch NAME: the batch to resume")
    if notify is not None:
        check_notify_url(notify)  # before anything is enqueued
    r = connect(state.settings.redis_url)
    bar = LazyProgressBar("submitting") if sys.stderr.isatty() else None
    try:
        receipt = submit_file(r, state.settings, file, default_func=default_func, default_priority=priority,
                              batch_id=batch_id, progress_factory=bar.start if bar else None, fmt=fmt,
                              retries=retries, timeout_s=timeout_s, resume=resume,
                              tenant=tenant or state.settings.tenant)  # fmt: skip
    finally:
        if bar:
            bar.close()
    if notify is not None:
        set_notify(r, Keys(state.settings.namespace), receipt.batch_id, notify)
    if as_json:
        reply: dict[str, Any] = {"batch": receipt.batch_id, "jobs": receipt.count}
        if receipt.resumed:
            reply["resumed"] = asdict(receipt.resumed)
        click.echo(json.dumps(reply))
    else:
        click.echo(receipt.batch_id)
        if receipt.resumed:
            click.echo(render_resume(receipt.batch_id, receipt.resumed), err=True)
    if wait:
        keys = Keys(state.settings.namespace)
        final = wait_for_batch(lambda: read_progress(r, keys, receipt.batch_id), sys.stderr.isatty())
        click.echo(f"finished={final.finished} failed={final.failed} canceled={final.canceled}", err=True)
        if final.failed:
            sys.exit(EXIT_ERROR)


@click.command()
@click.argument("batch_id", metavar="BATCH")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "openai"]), default="jsonl", show_default=True,
              help="jsonl: the stable `results` records; openai: OpenAI's batch output lines, for the jobs that "
                   "ended.")  # fmt: skip
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              show_default=True, help="Write the lines to this file ('-': stdout).")  # fmt: skip
@click.option("--errors", "errors_path", type=click.Path(dir_okay=False), default=None,
              help="With --format openai: write the failed requests' lines to this file, not with the others.")
@click.option("--follow", is_flag=True,
              help="Write each job's line as soon as it ends, in the order they end, until the batch is done.")
@click.option("--drop-after-write", is_flag=True,
              help="Once a job's line is written and synced, delete the job's data from Redis; the files are "
                   "then appended to, never truncated (they hold the only copy).")  # fmt: skip
@click.option("--wait", is_flag=True, help="Wait until every job of the batch ended before printing.")
@click.option("--json", "as_json", is_flag=True, help="Accepted as on every command; the output is always JSON Lines.")
@pass_state
def results(state: CliState, batch_id: str, fmt: str, output: str, errors_path: str | None, follow: bool,
            drop_after_write: bool, wait: bool, as_json: bool) -> None:  # fmt: skip
    """Print one JSON line per job of BATCH, in submission order (--follow: in finish order).

    Each line has id (the client's id, else the job id), job_id, status, node, result or
    error, attempts, and enqueued_at / started_at / ended_at (ISO 8601, UTC). With --format
    openai, each ended job's line is OpenAI's batch output line; jobs not ended yet are left
    out, and the exit code is then 1 (run again, or use --wait or --follow).
    """
    if errors_path is not None and fmt != "openai":
        raise click.UsageError("--errors needs --format openai (a `results` record says its own status)")
    if follow and wait:
        raise click.UsageError("--follow and --wait: choose one (--follow writes each line as its job ends)")
    if errors_path is not None and output != "-" and Path(errors_path).resolve() == Path(output).resolve():
        raise click.UsageError("--errors and --output name the same file; leave --errors out to mix them")
    r = connect(state.settings.redis_url)
    keys = Keys(state.settings.namespace)
    size = read_progress(r, keys, batch_id).size  # NotFound before a file is opened
    if wait:
        wait_for_batch(lambda: read_progress(r, keys, batch_id), sys.stderr.isatty())
    mode = "a" if drop_after_write else "w"  # a dropped job's line exists only in these files
    with contextlib.ExitStack() as files:
        out = sys.stdout if output == "-" else files.enter_context(Path(output).open(mode, encoding="utf-8"))
        errors = files.enter_context(Path(errors_path).open(mode, encoding="utf-8")) if errors_path else None
        report = write_results(r, keys, batch_id, out, errors=errors, openai=fmt == "openai", follow=follow,
                               drop_after_write=drop_after_write)  # fmt: skip
    if follow:
        size = read_progress(r, keys, batch_id).size  # a resume may have grown it meanwhile
    if (problem := render_unwritten(report, size, follow=follow)) is not None:
        click.echo(problem, err=True)
        sys.exit(EXIT_ERROR)
