"""`gpufleet events`: job and batch state changes, from the event stream (store/events.py)."""

from __future__ import annotations

import json

import click

from gpufleet.dispatcher.errors import NotFound, RedisUnavailable
from gpufleet.dispatcher.store.connection import REDIS_DOWN, connect, mask_url
from gpufleet.dispatcher.store.events import EventReader
from gpufleet.dispatcher.store.keys import Keys

from .render import render_event
from .state import CliState, pass_state

FOLLOW_BLOCK_MS = 1000  # one XREAD BLOCK at a time while following


@click.command()
@click.option("--batch", "batch_id", metavar="BATCH", help="Only the events of this batch.")
@click.option("--follow", "-f", is_flag=True,
              help="After the events kept, print each new one as it happens, until Ctrl-C.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (a stable format, see the README).")
@pass_state
def events(state: CliState, batch_id: str | None, follow: bool, as_json: bool) -> None:
    """Print job and batch state changes, oldest first, one line each: batch_submitted,
    job_started, job_finished, job_failed, job_canceled, job_retried, job_requeued and
    batch_ended.

    Redis keeps the newest GPUFLEET_EVENTS_MAX events (100,000 by default). Without --follow,
    prints the ones kept and exits; with it, goes on printing new ones until Ctrl-C.
    """
    settings = state.settings
    r = connect(settings.redis_url)
    keys = Keys(settings.namespace)
    if batch_id is not None and not r.exists(keys.batch_info(batch_id)):
        raise NotFound(f"no batch {batch_id!r} (submit prints the id)")
    reader = EventReader(r, keys, batch=batch_id)
    try:
        for event in reader.kept():
            click.echo(json.dumps(event.record()) if as_json else render_event(event))
        while follow:
            for event in reader.new(FOLLOW_BLOCK_MS):
                click.echo(json.dumps(event.record()) if as_json else render_event(event))
    except REDIS_DOWN as e:
        raise RedisUnavailable(mask_url(settings.redis_url), str(e) or type(e).__name__) from None
    except KeyboardInterrupt:
        return
