"""`gpufleet simulate`: run the routing simulator and print time in system per policy."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from gpufleet.dispatcher.errors import SettingsError
from gpufleet.dispatcher.routing.policies import DEFAULT_POLICY
from gpufleet.dispatcher.sim.simulator import (
    SERVICE_DISTRIBUTIONS,
    SIM_POLICY_NAMES,
    STALE_MODELS,
    SimConfig,
    SimResult,
)
from gpufleet.dispatcher.sim.simulator import (
    simulate as run_simulation,
)


def parse_speeds(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    """`1,1,2,4` -> (1.0, 1.0, 2.0, 4.0); anything else is a usage error naming the bad item."""
    if value is None:
        return None
    speeds = []
    for item in value.split(","):
        try:
            speed = float(item)
        except ValueError:
            raise click.BadParameter(f"{item.strip()!r} is not a number; give one speed per node, "
                                     "e.g. 1,1,2,4") from None  # fmt: skip
        if not speed > 0 or speed == float("inf"):
            raise click.BadParameter(f"speed {item.strip()!r} must be a positive finite number")
        speeds.append(speed)
    return tuple(speeds)


def result_record(cfg: SimConfig, result: SimResult) -> dict[str, Any]:
    """`simulate --json`: every parameter the run used (`params`, SimConfig's fields: speeds per
    node, max_node_queue null = capacity + prefetch, prefetch null = derived), the bound that
    gave (`node_bound`: the most jobs a node held, null = unbounded), then the result."""
    params = asdict(cfg)
    params["speeds"] = list(cfg.speeds)
    params["node_bound"] = cfg.node_bound
    return {"params": params, **result.to_dict()}


def render_result(cfg: SimConfig, result: SimResult) -> str:
    """The human view: a summary line, then one row per node."""
    lines = [
        f"policy {cfg.policy}  load {cfg.load}  jobs {cfg.jobs}  service {cfg.service}  "
        f"{_information(cfg)}  "
        f"node bound {'none' if cfg.node_bound is None else cfg.node_bound}",
        f"time in system (mean service times): mean {result.mean:.3f}  p50 {result.p50:.3f}  "
        f"p95 {result.p95:.3f}  p99 {result.p99:.3f}",
        "",
        f"{'node':<8} {'speed':>6} {'share':>7} {'util':>6}",
    ]
    for n in result.nodes:
        lines.append(f"{n.node:<8} {n.speed:>6g} {n.share:>7.3f} {n.utilization:>6.3f}")
    return "\n".join(lines)


def _information(cfg: SimConfig) -> str:
    if cfg.stale_model == "loop":
        return (f"loop model (jobs {cfg.job_s:g} s, dispatch latency {cfg.dispatch_latency_s:g} s, "
                f"overhead {cfg.job_overhead_s:g} s a job)")
    return f"stale {cfg.stale} ({cfg.stale_model if cfg.stale else 'fresh'})"


@click.command("simulate")
@click.option("--policy", type=click.Choice(SIM_POLICY_NAMES), default=DEFAULT_POLICY, show_default=True,
              help="The routing policy to simulate; central-queue is the one-FIFO reference every node pulls from.")
@click.option("--speeds", callback=parse_speeds,
              help="The relative speed of each node, comma-separated (for example 1,1,2,4); overrides --nodes.")
@click.option("--nodes", type=click.IntRange(min=1), default=10, show_default=True,
              help="The number of equal speed-1 nodes, used when --speeds is not given.")
@click.option("--load", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9, show_default=True,
              help="The arrival rate as a share of the fleet's total service rate.")
@click.option("--jobs", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="How many jobs to simulate; the first 10% are left out of the statistics as warm-up.")
@click.option("--service", type=click.Choice(SERVICE_DISTRIBUTIONS), default="exp", show_default=True,
              help="The distribution of job work, mean 1: exponential, or lognormal with sigma 1.")
@click.option("--stale", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="The heartbeat period in mean service times; 0 means the router always sees current node state.")
@click.option("--stale-model", type=click.Choice(STALE_MODELS), default="heartbeat", show_default=True,
              help="What --stale makes old. heartbeat: only `running` and utilization, each node beating on its own "
                   "phase, while queue lengths are current. bulletin: every node's whole state, refreshed together. "
                   "Both are harsher than the dispatcher, which reads queued and running from Redis at each "
                   "snapshot (as --stale 0 models). loop: the dispatcher loop as it runs, in seconds (--job-s, "
                   "--dispatch-latency-s; 150 ms snapshots, EWMA service times sent once a second); --stale unused.")
@click.option("--job-s", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
              help="Loop model: a speed-1 node's mean job, in seconds (the latencies below are measured against it).")
@click.option("--dispatch-latency-s", type=click.FloatRange(min=0), default=0.003, show_default=True,
              help="Loop model: seconds from a submit or a job's end to the dispatcher's round acting on it.")
@click.option("--job-overhead-s", type=click.FloatRange(min=0), default=0.002, show_default=True,
              help="Loop model: a worker slot's own seconds per job beyond its work (take, decode, record).")
@click.option("--max-node-queue", type=click.IntRange(min=0), default=None,
              help="The most jobs a node may hold; 0 lifts the bound. By default it is capacity + prefetch "
                   "(late binding).")
@click.option("--prefetch", type=click.IntRange(min=0), default=None,
              help="The jobs a node may hold beyond its capacity under late binding. By default derived from "
                   "the dispatch latency, as the dispatcher's is: 0 here, where dispatch is instant.")
@click.option("--affinity-keys", type=click.IntRange(min=0), default=0, show_default=True,
              help="The number of distinct session keys to spread over the jobs; 0 means no session persistence.")
@click.option("--affinity-epsilon", type=click.FloatRange(min=0), default=0.25, show_default=True,
              help="How far above the mean load an affine node may go before its keys spill to the next node.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="The random seed; the same seed gives the same output.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object instead of a table: the parameters it ran with, then the result.")
def simulate(
    policy: str,
    speeds: tuple[float, ...] | None,
    nodes: int,
    load: float,
    jobs: int,
    service: str,
    stale: float,
    stale_model: str,
    job_s: float,
    dispatch_latency_s: float,
    job_overhead_s: float,
    max_node_queue: int | None,
    prefetch: int | None,
    affinity_keys: int,
    affinity_epsilon: float,
    seed: int,
    as_json: bool,
) -> None:
    """Simulate routing over a fleet and report time in system, in mean service times of a speed-1 node."""
    try:
        cfg = SimConfig(
            policy=policy,
            speeds=speeds or (1.0,) * nodes,
            load=load,
            jobs=jobs,
            service=service,
            stale=stale,
            stale_model=stale_model,
            job_s=job_s,
            dispatch_latency_s=dispatch_latency_s,
            job_overhead_s=job_overhead_s,
            max_node_queue=max_node_queue,
            prefetch=prefetch,
            affinity_keys=affinity_keys,
            affinity_epsilon=affinity_epsilon,
            seed=seed,
        )
    except SettingsError as e:
        raise click.UsageError(str(e)) from e
    result = run_simulation(cfg)
    click.echo(json.dumps(result_record(cfg, result)) if as_json else render_result(cfg, result))
