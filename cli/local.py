"""`gpufleet demo` and `gpufleet local`: a whole fleet on this machine, on an embedded Redis.

They start their own Redis unless one is named on the command line (`demo --redis-url URL`, or
`gpufleet --redis-url URL demo`): GPUFLEET_REDIS_URL, exported for a real fleet, is ignored
(cli/main.py), so a demo never leaves its nodes in that fleet. On a Redis named on the command
line, the demo's nodes are forgotten (`gpufleet forget`) once its processes have stopped.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import click
import redis

from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.errors import GpufleetError
from gpufleet.dispatcher.fleet.control import forget_node
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.connection import connect, mask_url
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.demo import DEMO_NODES, demo_jobs, latencies_by_node
from gpufleet.worker.fleet import LocalFleet

from .jobs import wait_for_batch
from .options import check_redis_url
from .render import percentile, render_latency_table
from .state import CliState, pass_state

redis_url_option = click.option(
    "--redis-url", "own_redis_url", default=None, metavar="URL", callback=check_redis_url,
    help="Run the fleet on this Redis instead of an embedded one. GPUFLEET_REDIS_URL is not read here; "
         "`gpufleet --redis-url URL` before the command name counts the same.",
)  # fmt: skip


def chosen_redis_url(state: CliState, own_url: str | None) -> str | None:
    """The Redis named on the command line, after the command name or before it; None: start one."""
    group_url = state.settings.redis_url if state.redis_url_given else None  # never GPUFLEET_REDIS_URL here
    if own_url is not None and group_url is not None and own_url != group_url:
        raise click.UsageError("two different --redis-url values, before and after the command name; give one")
    return own_url or group_url


@contextmanager
def running_fleet(state: CliState, own_url: str | None, *, announce: bool) -> Iterator[tuple[Settings, LocalFleet]]:
    """Redis (the one named on the command line, else an embedded one), a dispatcher and the
    demo's sim workers; everything started here is stopped on the way out, Ctrl-C included,
    and on a named Redis the demo's nodes are forgotten after."""
    with ExitStack() as stack:
        settings = state.settings
        url = chosen_redis_url(state, own_url)
        if url is None:
            server = stack.enter_context(RedisServer())
            settings = settings.with_overrides(redis_url=server.url)
            if announce:
                click.echo(f"embedded redis-server on {server.url}", err=True)
        else:
            settings = settings.with_overrides(redis_url=url)
        r = connect(settings.redis_url)
        if url is not None:
            stack.callback(_forget_demo_nodes, r, settings)
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


def _forget_demo_nodes(r: redis.Redis, settings: Settings) -> None:
    """On a Redis the user named, leave no dead demo node behind (best effort: a node that is
    still live, or a Redis gone meanwhile, is left as it is)."""
    for node in DEMO_NODES:
        try:
            forget_node(r, settings, node.node_id)
        except (GpufleetError, redis.RedisError) as e:
            click.echo(f"demo node {node.node_id} left in Redis: {e}", err=True)


@click.command()
@click.option("--jobs", "n_jobs", type=click.IntRange(min=1, max=100_000), default=200, show_default=True,
              help="How many synthetic inference jobs to run.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the job costs.")
@redis_url_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object instead of a table.")
@pass_state
def demo(state: CliState, n_jobs: int, seed: int, own_redis_url: str | None, as_json: bool) -> None:
    """Run a demo fleet here: an embedded Redis (unless --redis-url is given on the command
    line), a dispatcher and three simulated GPU workers of speeds 1, 2 and 4; submit synthetic
    inference jobs, show progress, then print per node how many jobs it ran and their latency.
    Stops everything it started before it exits, also on Ctrl-C."""
    started = time.monotonic()
    try:
        with running_fleet(state, own_redis_url, announce=True) as (settings, _fleet):
            r = connect(settings.redis_url)
            keys = Keys(settings.namespace)
            receipt = Submitter(r, settings).submit(demo_jobs(n_jobs, seed))
            click.echo(f"submitted batch {receipt.batch_id}: {receipt.count} jobs", err=True)
            final = wait_for_batch(lambda: read_progress(r, keys, receipt.batch_id), sys.stderr.isatty())
            by_node = latencies_by_node(iter_results(r, keys, receipt.batch_id))
    except KeyboardInterrupt:
        click.echo("\ninterrupted: fleet stopped", err=True)
        sys.exit(130)
    seconds = time.monotonic() - started
    if as_json:
        click.echo(json.dumps(demo_record(receipt.batch_id, final.finished, final.failed, seconds, by_node)))
        return
    click.echo(render_latency_table(by_node))
    click.echo(f"\n{final.finished} finished, {final.failed} failed in {seconds:.1f} s")


def demo_record(batch_id: str, finished: int, failed: int, seconds: float,
                latencies_by_node: dict[str, list[float]]) -> dict[str, object]:  # fmt: skip
    """`demo --json`: the batch, its outcome and, per node, what the latency table shows."""
    nodes = []
    for node, values in sorted(latencies_by_node.items()):
        values = sorted(values)
        nodes.append({"node": node, "jobs": len(values), "mean_s": round(sum(values) / len(values), 4),
                      "p95_s": round(percentile(values, 95), 4)})  # fmt: skip
    return {"batch": batch_id, "finished": finished, "failed": failed, "seconds": round(seconds, 2), "nodes": nodes}


@click.command()
@redis_url_option
@click.option("--json", "as_json", is_flag=True,
              help='Print {"redis_url": ..., "namespace": ..., "nodes": [...]} on one line instead of the URL.')
@pass_state
def local(state: CliState, own_redis_url: str | None, as_json: bool) -> None:
    """Start the demo fleet and keep it up until Ctrl-C: an embedded Redis (unless --redis-url
    is given on the command line), a dispatcher and three sim workers. Prints the Redis URL for
    your own `gpufleet --redis-url URL submit ...`."""
    try:
        with running_fleet(state, own_redis_url, announce=False) as (settings, fleet):
            if as_json:
                click.echo(json.dumps({"redis_url": mask_url(settings.redis_url), "namespace": settings.namespace,
                                       "nodes": [n.node_id for n in DEMO_NODES]}))  # fmt: skip
            else:
                click.echo(mask_url(settings.redis_url))
            click.echo(f"fleet up; try: gpufleet --redis-url {mask_url(settings.redis_url)} status   (Ctrl-C stops)",
                       err=True)  # fmt: skip
            while all(p.poll() is None for p in fleet.procs.values()):
                time.sleep(0.5)
            click.echo("a fleet process exited; stopping the rest", err=True)
            sys.exit(1)
    except KeyboardInterrupt:
        click.echo("\nstopped", err=True)
