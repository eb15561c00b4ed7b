"""`gpufleet status`: nodes and queues at a glance; `--batch B` for one batch, `--watch` live."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from gpufleet.dispatcher.client.results import read_batch_status
from gpufleet.dispatcher.observe.status import read_status
from gpufleet.dispatcher.store.connection import connect
from gpufleet.dispatcher.store.keys import Keys

from .live import eta
from .render import render_status
from .state import CliState, pass_state


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the stable JSON record (see README).")
@click.option("--batch", "batch_id", metavar="B", help="One batch's progress (queued, running, finished, "
              "failed, canceled) and ETA.")  # fmt: skip
@click.option("--watch", is_flag=True, help="The live view, as `gpufleet top`.")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              metavar="S", help="With --watch: seconds between refreshes.")  # fmt: skip
@pass_state
def status(state: CliState, as_json: bool, batch_id: str | None, watch: bool, interval_s: float) -> None:
    """Show every node (its state, GPU and memory use, queue, running, done, failed, heartbeat
    age) with a line per GPU (utilization, memory, temperature, power, health), the count of
    nodes live and in each state, and the ingress depth per priority. A node dead for longer
    than GPUFLEET_FORGET_DEAD_AFTER_S (default 1 hour) is not shown; `gpufleet forget NODE`
    removes it from Redis."""
    if watch:
        if as_json or batch_id:
            raise click.UsageError("--watch shows the live view; it takes no --json or --batch (try `top --json`)")
        from .top import watch as live_view

        live_view(state.settings, interval_s)
        return
    r = connect(state.settings.redis_url)
    if batch_id is not None:
        record = read_batch_status(r, Keys(state.settings.namespace), batch_id).record(time.time())
        click.echo(json.dumps(record) if as_json else render_batch(record))
        return
    record = read_status(r, Keys(state.settings.namespace), forget_dead_after_s=state.settings.forget_dead_after_s)
    click.echo(json.dumps(record) if as_json else render_status(record))


def render_batch(b: dict[str, Any]) -> str:
    """`status --batch B` as text: the counts, then the ETA."""
    counts = "  ".join(f"{k} {b[k]}" for k in ("queued", "running", "retrying", "finished", "failed", "canceled"))
    if b["done"]:
        when = "done"
    elif b["eta_s"] is None:
        when = "ETA unknown: no job has ended yet"
    else:
        when = f"ETA {eta(b['eta_s'])} at the rate since it was created"
    ended = b["finished"] + b["failed"] + b["canceled"]
    return (f"batch {b['batch']}: {ended} of {b['size']} ended, created {b['created_at'] or '-'} "
            f"({eta(b['elapsed_s'])} ago)\n{counts}\n{when}")  # fmt: skip
