"""`gpufleet drain|undrain|forget NODE`, `gpufleet cancel BATCH|JOB [--running]`, `gpufleet requeue --failed`."""

from __future__ import annotations

import json

import click

from gpufleet.dispatcher.fleet import control
from gpufleet.dispatcher.store.connection import connect
from gpufleet.dispatcher.store.keys import Keys

from .state import CliState, pass_state


@click.command()
@click.argument("node_id", metavar="NODE")
@click.option("--json", "as_json", is_flag=True, help='Print {"node": NODE, "draining": true} instead.')
@pass_state
def drain(state: CliState, node_id: str, as_json: bool) -> None:
    """Stop routing to NODE. Its queued jobs go back to the ingress for other nodes; the job it
    is running finishes there. The node stays drained until `gpufleet undrain NODE`."""
    control.drain(connect(state.settings.redis_url), Keys(state.settings.namespace), node_id)
    click.echo(json.dumps({"node": node_id, "draining": True}) if as_json else f"draining {node_id}")


@click.command()
@click.argument("node_id", metavar="NODE")
@click.option("--json", "as_json", is_flag=True, help='Print {"node": NODE, "draining": false} instead.')
@pass_state
def undrain(state: CliState, node_id: str, as_json: bool) -> None:
    """Route to NODE again after `gpufleet drain`."""
    control.undrain(connect(state.settings.redis_url), Keys(state.settings.namespace), node_id)
    click.echo(json.dumps({"node": node_id, "draining": False}) if as_json else f"routing to {node_id} again")


@click.command()
@click.argument("node_id", metavar="NODE")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@pass_state
def forget(state: CliState, node_id: str, as_json: bool) -> None:
    """Remove a dead NODE from Redis (its heartbeat, flags, held lists and queue), so `status`
    no longer lists it. A live node is refused (exit 1). Jobs it still has are handed back
    first, as for any dead node: queued ones to the ingress, running ones retried elsewhere.
    Its failed jobs stay for `gpufleet requeue --failed`."""
    report = control.forget_node(connect(state.settings.redis_url), state.settings, node_id)
    if as_json:
        click.echo(json.dumps({"node": report.node, "forgotten": True, "requeued": report.requeued,
                               "retried": report.retried, "failed": report.failed,
                               "failed_kept": report.failed_kept}))  # fmt: skip
        return
    handed = f"{report.requeued} requeued, {report.retried} retried, {report.failed} failed"
    kept = f"; {report.failed_kept} failed job(s) kept for `requeue --failed`" if report.failed_kept else ""
    click.echo(f"forgot {node_id} ({handed}{kept})")


@click.command()
@click.argument("target", metavar="BATCH|JOB")
@click.option("--running", is_flag=True,
              help="Stop the running jobs too: each is stopped on its node (its slot process and model kept; a "
                   "job that does not stop within GPUFLEET_STOP_GRACE_S, 10 s, has its slot process restarted) "
                   "and ends canceled. Waits until they have stopped.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True,
              help='Print {"canceled": N, "stopped": N, "stopping": N, "left": N} instead.')  # fmt: skip
@pass_state
def cancel(state: CliState, target: str, running: bool, as_json: bool) -> None:
    """Cancel the jobs of a batch (or one job) that have not started yet, and with --running
    stop the running ones. They end with status canceled; finished and failed jobs, and without
    --running the running ones, are left alone."""
    report = control.cancel(connect(state.settings.redis_url), state.settings, target, running=running)
    if as_json:
        click.echo(json.dumps({"canceled": report.canceled, "stopped": report.stopped, "stopping": report.stopping,
                               "left": report.left}))  # fmt: skip
    elif not running:
        click.echo(f"canceled {report.canceled}; {report.left} already running or ended")
    else:
        still = f"; {report.stopping} still stopping on their node" if report.stopping else ""
        click.echo(f"canceled {report.canceled}, stopped {report.stopped} running{still}; {report.left} already "
                   "ended")  # fmt: skip


@click.command()
@click.option("--failed", is_flag=True, required=True, help="Requeue jobs from the failed registries.")
@click.option("--batch", "batch_id", metavar="BATCH", help="Only the failed jobs of this batch.")
@click.option("--json", "as_json", is_flag=True, help='Print {"requeued": N} instead.')
@pass_state
def requeue(state: CliState, failed: bool, batch_id: str | None, as_json: bool) -> None:
    """Put failed jobs (every node's dead-letter queue) back in the ingress to run again."""
    n = control.requeue_failed(connect(state.settings.redis_url), state.settings, batch_id)
    click.echo(json.dumps({"requeued": n}) if as_json else f"requeued {n} failed job{'s' if n != 1 else ''}")
