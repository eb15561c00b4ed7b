"""`gpufleet demo` and `gpufleet local`: a whole fleet on this machine, on an embedded Redis."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import click

from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.store.connection import connect, mask_url
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.settings import Settings
from gpufleet.worker.demo import DEMO_NODES, demo_jobs, latencies_by_node
from gpufleet.worker.fleet import LocalFleet

from .jobs import wait_for_batch
from .main import CliState, pass_state
from .render import render_latency_table


@contextmanager
def running_fleet(state: CliState, *, announce: bool) -> Iterator[tuple[Settings, LocalFleet]]:
    """Redis (the user's, else an embedded one), a dispatcher and the demo's sim workers;
    everything started here is stopped on the way out, Ctrl-C included."""
    with ExitStack() as stack:
        settings = state.settings
        if not state.redis_url_given:
            server = stack.enter_context(RedisServer())
            settings = settings.with_overrides(redis_url=server.url)
            if announce:
                click.echo(f"embedded redis-server on {server.url}", err=True)
        r = connect(settings.redis_url)
        fleet = LocalFleet(settings.redis_url, settings.namespace, log_level="WARNING")
        stack.callback(fleet.stop)
        fleet.start_dispatcher()
        for node in DEMO_NODES:
            fleet.start_worker(node)
        fleet.wait_for_nodes(r, [n.node_id for n in DEMO_NODES])
        if announce:
            speeds = ", ".join(f"{n.node_id} (speed {n.speed:g})" for n in DEMO_NODES)
            click.echo(f"fleet up: dispatcher + {len(DEMO_NODES)} sim workers: {speeds}", err=True)
        yield settings, fleet


@click.command()
@click.option("--jobs", "n_jobs", type=click.IntRange(min=1, max=100_000), default=200, show_default=True,
              help="How many synthetic inference jobs to run.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the job costs.")
@pass_state
def demo(state: CliState, n_jobs: int, seed: int) -> None:
    """Run a demo fleet here: an embedded Redis (unless --redis-url is given), a dispatcher and
    three simulated GPU workers of speeds 1, 2 and 4; submit synthetic inference jobs, show
    progress, then print per node how many jobs it ran and their latency. Stops everything
    it started before it exits, also on Ctrl-C."""
    started = time.monotonic()
    try:
        with running_fleet(state, announce=True) as (settings, _fleet):
            r = connect(settings.redis_url)
            keys = Keys(settings.namespace)
            receipt = Submitter(r, settings).submit(demo_jobs(n_jobs, seed))
            click.echo(f"submitted batch {receipt.batch_id}: {receipt.count} jobs", err=True)
            final = wait_for_batch(lambda: read_progress(r, keys, receipt.batch_id), sys.stderr.isatty())
            by_node = latencies_by_node(iter_results(r, keys, receipt.batch_id))
    except KeyboardInterrupt:
        click.echo("\ninterrupted: fleet stopped", err=True)
        sys.exit(130)
    click.echo(render_latency_table(by_node))
    click.echo(f"\n{final.finished} finished, {final.failed} failed in {time.monotonic() - started:.1f} s")


@click.command()
@pass_state
def local(state: CliState) -> None:
    """Start the demo fleet and keep it up until Ctrl-C: an embedded Redis (unless --redis-url
    is given), a dispatcher and three sim workers. Prints the Redis URL for your own
    `gpufleet --redis-url URL submit ...`."""
    try:
        with running_fleet(state, announce=False) as (settings, fleet):
            click.echo(mask_url(settings.redis_url))
            click.echo(f"fleet up; try: gpufleet --redis-url {mask_url(settings.redis_url)} status   (Ctrl-C stops)",
                       err=True)  # fmt: skip
            while all(p.poll() is None for p in fleet.procs.values()):
                time.sleep(0.5)
            click.echo("a fleet process exited; stopping the rest", err=True)
            sys.exit(1)
    except KeyboardInterrupt:
        click.echo("\nstopped", err=True)
