"""Scale: 1,000 heartbeating nodes and 100,000 queued jobs (issue 6, target 4).

On a private loopback redis-server (`RedisServer`, a free port; never the Redis on 6379):

- a heartbeat writer: ONE child process beats for every simulated node, each once per
  `--heartbeat-interval` on its own phase (the nodes are spread over the interval, a slice per
  10 ms tick, one pipeline per slice). Each beat is what `dispatcher/lua/beat.lua`
  writes (HSET of the full `heartbeat_fields`, one GPU per node with its per-GPU figures,
  SET alive PX ttl, SADD nodes): 1,000 nodes, not 1,000 processes;
- `--jobs` echo jobs submitted to the normal ingress (`Submitter.enqueue`) before the clock.

Then, in a fresh child process (so its RSS is the dispatcher's own), the real
`dispatcher.loop.Dispatcher` (default policy; nodes unbounded, `--max-node-queue 0`, so
100,000 jobs fit on the nodes):
1. snapshot refresh: `Dispatcher.refresh()` (read every node, then the health check, timed
   apart), `--refreshes` times while the jobs wait, `snapshot_interval_s` (0.15 s) apart as in
   the loop, so about a seventh of the nodes beat between two refreshes: median, p90 and max. The
   health check's outlier detector keeps a 60 s history per node, so a dispatcher that has run
   a minute does more per refresh than a fresh one: `--steady-s 65` refreshes that long first,
   and every run also times that detector alone on a full window (pure, no Redis);
2. routing: `dispatch_once` until every job has moved, as the loop runs it (snapshot refresh
   every `snapshot_interval_s` included, heartbeats arriving meanwhile): jobs/s = jobs / wall,
   and the refreshes made during the run, timed likewise (node queues full by then);
3. memory: the process's VmRSS after routing and its peak (VmHWM).

`gpufleet status` and `gpufleet status --json` run as subprocesses (the installed console
script when on PATH, else `python -m cli`) with every node and every job in place; wall time
from spawn to exit, so interpreter start and imports count, as a user waits for them.

Placement: all processes on this machine. With `--pin` (2+ CPUs), redis-server runs on CPU 0
and the dispatcher child on CPU 1; the heartbeat writer and the CLI runs are not pinned.
Other load on the machine is not controlled: compare medians.

    python bench/scale.py                       # 1,000 nodes, 100,000 jobs, 3 runs
    python bench/scale.py --smoke               # 200 nodes, 10,000 jobs, 1 run (< 30 s)
    python bench/scale.py --pin --profile       # + cProfile of the dispatcher child's timed refreshes and routing,
                                                # run 0 (top 25 by tottime)
    python bench/scale.py --steady-s 65 --runs 1       # refreshes timed after a minute of refreshing (steady state)
    python bench/scale.py --stages                     # + the snapshot read's parts: SORT, counts/heartbeats, the rest
    python bench/scale.py --nodes 2000 --jobs 200000 --runs 1 --json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.fleet.outliers import FailureRateOutliers
from gpufleet.dispatcher.fleet.tenants import read_waiting_counts
from gpufleet.dispatcher.loop import Dispatcher
from gpufleet.dispatcher.routing.models import JobSpec, NodeState
from gpufleet.dispatcher.routing.policies import make_policy
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import GPUFLEET
from gpufleet.worker.gpu import GpuReading, Reading
from gpufleet.worker.heartbeat import NodeInfo, heartbeat_fields
from gpufleet.worker.stats import StatsView

FUNC = "gpufleet.worker.tasks:echo"
TICK_S = 0.01


def node_ids(n: int) -> list[str]:
    return [f"node-{i:04d}" for i in range(n)]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def mem_mib(field: str) -> float:
    m = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


# --- the heartbeat writer (child process) ---------------------------------------------------------


def heartbeat_writer(url: str, namespace: str, n_nodes: int, interval_s: float, ttl_s: float) -> None:
    """Beat for `n_nodes` nodes until killed: each node once per interval, spread over it."""
    r = Redis.from_url(url)
    keys = Keys(namespace)
    ids = node_ids(n_nodes)
    slices = max(1, round(interval_s / TICK_S))
    per_slice = math.ceil(n_nodes / slices)
    completed = dict.fromkeys(ids, 0)
    tick = time.monotonic()
    i = 0
    while True:
        chunk = ids[(i % slices) * per_slice : (i % slices + 1) * per_slice]
        with r.pipeline(transaction=False) as p:
            for node_id in chunk:
                completed[node_id] += 1
                view = StatsView(running=1, completed=completed[node_id], failed=0, service_time_s=0.05,
                                 busy_fraction=0.8)  # fmt: skip
                gpu = GpuReading(0, "NVIDIA H100 80GB HBM3", 0.8, 40.0, 80.0, temperature_c=61.0, power_w=410.5,
                                 power_limit_w=700.0, uuid=f"GPU-{node_id}")  # fmt: skip
                fields = heartbeat_fields(NodeInfo(node_id, capacity=1, incarnation="bench"), view,
                                          Reading.aggregate("nvml", (gpu,)), models=("llama-3-8b",))  # fmt: skip
                p.hset(keys.heartbeat(node_id), mapping=fields)  # as beat.lua writes it
                p.set(keys.alive(node_id), "bench", px=int(ttl_s * 1000))
                p.sadd(keys.nodes, node_id)
            p.execute()
        i += 1
        tick += TICK_S
        time.sleep(max(0.0, tick - time.monotonic()))


# --- the dispatcher under test (child process) -------------------------------------------------------


class TimedDispatcher(Dispatcher):
    """The real Dispatcher; each refresh's wall time noted, and the health check's part of it."""

    refresh_s: list[float]
    health_s: list[float]

    def refresh(self) -> Any:
        t0 = time.perf_counter()
        try:
            return super().refresh()
        finally:
            self.refresh_s.append(time.perf_counter() - t0)

    def time_health(self) -> None:
        check = self.health.check

        def timed(nodes: Any, now_s: float | None = None) -> None:
            t0 = time.perf_counter()
            try:
                check(nodes, now_s)
            finally:
                self.health_s.append(time.perf_counter() - t0)

        self.health.check = timed  # type: ignore[method-assign]


def outliers_at_full_window(n_nodes: int, settings: Settings, repeats: int = 5) -> float:
    """Seconds one FailureRateOutliers.observe takes (pure, no Redis; median of `repeats`) once
    every node has a full window of history: each node completed jobs in every one of the last
    `outlier_window_s` seconds. The dispatcher's health check runs it on every refresh; a
    short bench run never reaches this state, a fleet running for a minute does."""
    outliers = FailureRateOutliers(settings.outlier_failure_rate, settings.outlier_min_jobs, settings.outlier_window_s)
    ids = node_ids(n_nodes)
    window = int(settings.outlier_window_s)
    for t in range(window + 1):
        outliers.observe([NodeState(node_id=i, completed=t) for i in ids], float(t))
    times = []
    for t in range(window + 1, window + 1 + repeats):
        nodes = [NodeState(node_id=i, completed=t) for i in ids]
        t0 = time.perf_counter()
        outliers.observe(nodes, float(t))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


READ_STAGES: dict[str, list[float]] = {}


def time_read_stages() -> None:
    """Clock the snapshot read's parts: round trip 1 (SORT), round trip 2 (counts and changed
    heartbeats), and the whole read; the rest of it is parsing and building NodeStates."""
    from gpufleet.dispatcher.fleet import snapshot

    def timed(cls: Any, name: str, stage: str) -> None:
        inner = getattr(cls, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                READ_STAGES.setdefault(stage, []).append(time.perf_counter() - t0)

        setattr(cls, name, wrapper)

    timed(Redis, "sort", "sort")
    timed(snapshot.NodeReader, "_exchange", "exchange")
    timed(snapshot.NodeReader, "read", "read")


def dispatcher_child(url: str, namespace: str, jobs: int, refreshes: int, max_node_queue: int, profile: str,
                     steady_s: float) -> None:  # fmt: skip
    """Run in a fresh process: time refreshes, route every job, report memory; JSON on stdout."""
    settings = Settings(redis_url=url, namespace=namespace, max_node_queue=max_node_queue)
    if os.environ.get("SCALE_READ_STAGES"):
        time_read_stages()
    r = Redis.from_url(url)
    d = TimedDispatcher(r, settings, make_policy(settings.policy))
    d.refresh_s, d.health_s = [], []
    d.time_health()
    d.refresh()  # loads the scripts, builds health state: not counted
    until = time.monotonic() + steady_s
    while time.monotonic() < until:  # refresh as the loop does, so the health check's history fills up
        d.refresh()
        time.sleep(settings.snapshot_interval_s)
    d.refresh_s.clear()
    d.health_s.clear()
    outliers_s = outliers_at_full_window(len(d.refresh()), settings)  # before the profiler starts
    d.refresh_s.clear()
    d.health_s.clear()
    READ_STAGES.clear()
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    for _ in range(refreshes):
        d.refresh()
        time.sleep(settings.snapshot_interval_s)  # as the loop spaces them: a share of the nodes beat meanwhile
    idle_refresh, idle_health = list(d.refresh_s), list(d.health_s)
    read_stages = {k: statistics.median(v) * 1000 for k, v in READ_STAGES.items()}
    n_nodes = len(d.refresh())
    d.refresh_s.clear()
    start, rounds = time.perf_counter(), 0
    while d.moved_total < jobs:
        rnd = d.dispatch_once()
        rounds += 1
        if not rnd.moved:
            raise RuntimeError(f"a round moved nothing with {jobs - d.moved_total} jobs left")
    wall = time.perf_counter() - start
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    print(json.dumps({"nodes_seen": n_nodes, "idle_refresh_s": idle_refresh, "routing_refresh_s": d.refresh_s,
                      "idle_health_s": idle_health, "outliers_full_window_s": outliers_s,
                      "read_stages_ms": read_stages,
                      "wall_s": wall, "rounds": rounds, "rate": jobs / wall, "rss_mib": mem_mib("VmRSS"),
                      "peak_rss_mib": mem_mib("VmHWM")}))  # fmt: skip


# --- the parent ---------------------------------------------------------------------------------


def cli_command() -> list[str]:
    exe = shutil.which("gpufleet")
    return [exe] if exe else list(GPUFLEET)


def time_status(url: str, namespace: str, json_out: bool) -> tuple[float, int]:
    cmd = [*cli_command(), "--redis-url", url, "--namespace", namespace, "status", *(["--json"] if json_out else [])]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t0
    if json_out:
        n_nodes = len(json.loads(out)["nodes"])
    else:
        m = re.search(r"nodes: live (\d+) .* dead (\d+)", out)  # the summary line (cli/render.py)
        n_nodes = int(m.group(1)) + int(m.group(2)) if m else -1
    return wall, n_nodes


def python_env(stages: bool = False) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **({"SCALE_READ_STAGES": "1"} if stages else {})}


def one_run(server: RedisServer, args: argparse.Namespace, run: int, profile: str) -> dict[str, Any]:
    r = Redis.from_url(server.url)
    r.flushall()
    ns = f"scale{run}"
    settings = Settings(redis_url=server.url, namespace=ns)
    writer = subprocess.Popen([sys.executable, __file__, "--heartbeat-child", server.url, ns, str(args.nodes),
                               str(args.heartbeat_interval), str(settings.heartbeat_ttl_s)],
                              env=python_env(), start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while r.scard(Keys(ns).nodes) < args.nodes:  # every node has beaten once
            if writer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the heartbeat writer did not start")
            time.sleep(0.05)
        submitter = Submitter(r, settings)
        submitter.enqueue((JobSpec(FUNC, i) for i in range(args.jobs)), submitter.start_batch(None, args.jobs, FUNC))
        status = [time_status(server.url, ns, as_json) for _ in range(args.status_runs) for as_json in (False, True)]
        assert all(n == args.nodes for _, n in status), f"status saw {[n for _, n in status]} nodes"
        child_cmd = [sys.executable, __file__, "--dispatcher-child", server.url, ns, str(args.jobs),
                     str(args.refreshes), str(args.max_node_queue), profile, str(args.steady_s)]  # fmt: skip
        if args.pin:
            child_cmd = ["taskset", "-c", str(sorted(os.sched_getaffinity(0))[1]), *child_cmd]
        out = subprocess.run(child_cmd, env=python_env(args.stages), check=True, capture_output=True, text=True).stdout
        child = json.loads(out.strip().splitlines()[-1])
        ingress_left = read_waiting_counts(r, Keys(ns))["normal"].total
        assert ingress_left == 0, f"{ingress_left} jobs left in the ingress and its lanes"
    finally:
        writer.kill()
        writer.wait()
    child["status_s"] = [s for (s, _), i in zip(status, range(len(status))) if i % 2 == 0]
    child["status_json_s"] = [s for (s, _), i in zip(status, range(len(status))) if i % 2 == 1]
    return child


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000, help="Simulated nodes, all beating from one writer process.")
    ap.add_argument("--jobs", "-n", type=int, default=100_000, help="Jobs waiting in the ingress.")
    ap.add_argument("--runs", type=int, default=3, help="Runs (each: fresh data, fresh dispatcher process).")
    ap.add_argument("--refreshes", type=int, default=30, help="Refreshes timed while the jobs wait, per run.")
    ap.add_argument("--status-runs", type=int, default=3, help="`gpufleet status` (and --json) runs per run.")
    ap.add_argument("--heartbeat-interval", type=float, default=1.0, help="Seconds between two beats of a node.")
    ap.add_argument("--max-node-queue", type=int, default=0, help="Router bound per node; 0: unbounded.")
    ap.add_argument("--pin", action="store_true", help="redis-server on CPU 0, the dispatcher child on CPU 1.")
    ap.add_argument("--profile", action="store_true", help="cProfile the dispatcher child of run 0 (stderr).")
    ap.add_argument("--stages", action="store_true",
                    help="Also time the snapshot read's parts (SORT round trip, counts/heartbeats round trip, "
                         "whole read).")  # fmt: skip
    ap.add_argument("--smoke", action="store_true", help="200 nodes, 10,000 jobs, 1 run, 10 refreshes, 1 status run.")
    ap.add_argument("--json", action="store_true", help="Print the result as one JSON object.")
    ap.add_argument("--heartbeat-child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--steady-s", type=float, default=0.0,
                    help="Refresh this long (every snapshot_interval_s) before timing, so the health check's "
                         "outlier history is full (65: steady state for its 60 s window).")  # fmt: skip
    ap.add_argument("--dispatcher-child", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.heartbeat_child:
        url, ns, n, interval, ttl = args.heartbeat_child
        heartbeat_writer(url, ns, int(n), float(interval), float(ttl))
        return 0
    if args.dispatcher_child:
        url, ns, jobs, refreshes, mnq, profile, steady_s = args.dispatcher_child
        dispatcher_child(url, ns, int(jobs), int(refreshes), int(mnq), profile, float(steady_s))
        return 0
    if args.smoke:
        args.nodes, args.jobs, args.runs, args.refreshes, args.status_runs = 200, 10_000, 1, 10, 1
    profile_path = f"/tmp/gpufleet-scale-{os.getpid()}.prof" if args.profile else ""
    rows = []
    with RedisServer() as server:
        version = Redis.from_url(server.url).info("server")["redis_version"]
        placement = "unpinned: every process shares the machine's CPUs"
        if args.pin and len(os.sched_getaffinity(0)) >= 2:
            cpus = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(server._proc.pid, {cpus[0]})  # type: ignore[union-attr]
            placement = (f"pinned: redis-server on CPU {cpus[0]}, dispatcher child on CPU {cpus[1]}; "
                         "writer and CLI unpinned")  # fmt: skip
        for run in range(args.runs):
            row = one_run(server, args, run, profile_path if run == 0 else "")
            rows.append(row)
            idle, busy = [x * 1000 for x in row["idle_refresh_s"]], [x * 1000 for x in row["routing_refresh_s"]]
            print(f"run {run}: refresh median {statistics.median(idle):.1f} ms "
                  f"(p90 {pct(idle, 0.9):.1f}, max {max(idle):.1f}; "
                  f"health check {statistics.median(row['idle_health_s']) * 1000:.1f})"
                  f"; while routing {statistics.median(busy) if busy else float('nan'):.1f} ms over {len(busy)}; "
                  f"routing {row['rate']:,.0f} jobs/s; RSS {row['rss_mib']:.0f} MiB (peak {row['peak_rss_mib']:.0f}); "
                  f"status {statistics.median(row['status_s']):.2f} s, "
                  f"--json {statistics.median(row['status_json_s']):.2f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
    result = summarize(rows, args, version, placement)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_summary(result)
    if args.stages:
        for run, row in enumerate(rows):
            print(f"run {run}: snapshot read, median ms per part: {row['read_stages_ms']}")
    if profile_path and os.path.exists(profile_path):
        stats = pstats.Stats(profile_path, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats("dispatcher/", 15)
        os.unlink(profile_path)
    return 0


def summarize(rows: list[dict[str, Any]], args: argparse.Namespace, version: str, placement: str) -> dict[str, Any]:
    idle = [statistics.median(r["idle_refresh_s"]) * 1000 for r in rows]
    busy = [statistics.median(r["routing_refresh_s"]) * 1000 for r in rows if r["routing_refresh_s"]]
    return {
        "nodes": args.nodes, "jobs": args.jobs, "runs": args.runs, "redis_version": version,
        "python": sys.version.split()[0], "nproc": os.cpu_count(), "placement": placement,
        "refresh_ms": spread(idle),
        "health_check_ms": spread([statistics.median(r["idle_health_s"]) * 1000 for r in rows]),
        "outliers_full_window_ms": spread([r["outliers_full_window_s"] * 1000 for r in rows]),
        "refresh_p90_ms": spread([pct(r["idle_refresh_s"], 0.9) * 1000 for r in rows]),
        "refresh_while_routing_ms": spread(busy) if busy else None,
        "routing_jobs_per_s": spread([r["rate"] for r in rows]),
        "rss_mib": spread([r["rss_mib"] for r in rows]),
        "peak_rss_mib": spread([r["peak_rss_mib"] for r in rows]),
        "status_s": spread([statistics.median(r["status_s"]) for r in rows]),
        "status_json_s": spread([statistics.median(r["status_json_s"]) for r in rows]),
    }  # fmt: skip


def print_summary(x: dict[str, Any]) -> None:
    def line(name: str, s: dict[str, float] | None, fmt: str, unit: str) -> str:
        if not s:
            return f"  {name}: -"
        return f"  {name}: median {s['median']:{fmt}} {unit} (runs {s['min']:{fmt}} - {s['max']:{fmt}})"

    print(f"{x['nodes']:,} nodes, {x['jobs']:,} jobs, {x['runs']} run(s); redis-server {x['redis_version']}, "
          f"Python {x['python']}, nproc {x['nproc']}; {x['placement']}")  # fmt: skip
    print(line("snapshot refresh, jobs waiting", x["refresh_ms"], ".1f", "ms"))
    print(line("snapshot refresh p90", x["refresh_p90_ms"], ".1f", "ms"))
    print(line("  of which the health check", x["health_check_ms"], ".1f", "ms"))
    print(line("  outlier check alone, at a full 60 s window (steady state; pure)", x["outliers_full_window_ms"],
               ".1f", "ms"))  # fmt: skip
    print(line("snapshot refresh while routing", x["refresh_while_routing_ms"], ".1f", "ms"))
    print(line("routing", x["routing_jobs_per_s"], ",.0f", "jobs/s"))
    print(line("dispatcher RSS after routing", x["rss_mib"], ".0f", "MiB"))
    print(line("dispatcher peak RSS", x["peak_rss_mib"], ".0f", "MiB"))
    print(line("gpufleet status", x["status_s"], ".2f", "s"))
    print(line("gpufleet status --json", x["status_json_s"], ".2f", "s"))


if __name__ == "__main__":
    sys.exit(main())
