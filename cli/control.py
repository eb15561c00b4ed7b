"""`gpufleet drain|undrain NODE`, `gpufleet cancel BATCH|JOB`, `gpufleet requeue --failed`."""

from __future__ import annotations

import json

import click

from gpufleet.dispatcher.fleet import control
from gpufleet.dispatcher.store.connection import connect
from gpufleet.dispatcher.store.keys import Keys

from .main import CliState, pass_state


@click.command()
@click.argument("node_id", metavar="NODE")
@pass_state
def drain(state: CliState, node_id: str) -> None:
    """Stop routing to NODE. Its queued jobs go back to the ingress for other nodes; the job it
    is running finishes there. The node stays drained until `gpufleet undrain NODE`."""
    control.drain(connect(state.settings.redis_url), Keys(state.settings.namespace), node_id)
    click.echo(f"draining {node_id}")


@click.command()
@click.argument("node_id", metavar="NODE")
@pass_state
def undrain(state: CliState, node_id: str) -> None:
    """Route to NODE again after `gpufleet drain`."""
    control.undrain(connect(state.settings.redis_url), Keys(state.settings.namespace), node_id)
    click.echo(f"routing to {node_id} again")


@click.command()
@click.argument("target", metavar="BATCH|JOB")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_state
def cancel(state: CliState, target: str, as_json: bool) -> None:
    """Cancel the jobs of a batch (or one job) that have not started yet. They end with status
    canceled; running and finished jobs are left alone."""
    report = control.cancel(connect(state.settings.redis_url), state.settings, target)
    if as_json:
        click.echo(json.dumps({"canceled": report.canceled, "left": report.left}))
    else:
        click.echo(f"canceled {report.canceled}; {report.left} already running or ended")


@click.command()
@click.option("--failed", is_flag=True, required=True, help="Requeue jobs from the failed registries.")
@click.option("--batch", "batch_id", metavar="BATCH", help="Only the failed jobs of this batch.")
@pass_state
def requeue(state: CliState, failed: bool, batch_id: str | None) -> None:
    """Put failed jobs (every node's dead-letter queue) back in the ingress to run again."""
    n = control.requeue_failed(connect(state.settings.redis_url), state.settings, batch_id)
    click.echo(f"requeued {n} failed job{'s' if n != 1 else ''}")
