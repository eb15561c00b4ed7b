"""`gpufleet status`: nodes and queues at a glance."""

from __future__ import annotations

import json

import click

from dispatcher.connection import connect
from dispatcher.keys import Keys
from dispatcher.status import read_status

from .main import CliState, pass_state
from .render import render_status


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the stable JSON record (see README).")
@pass_state
def status(state: CliState, as_json: bool) -> None:
    """Show every node (alive or dead, GPU and memory use, queue, running, done, failed,
    heartbeat age) and the ingress depth per priority."""
    r = connect(state.settings.redis_url)
    record = read_status(r, Keys(state.settings.namespace))
    click.echo(json.dumps(record) if as_json else render_status(record))
