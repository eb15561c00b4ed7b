"""Fair share between tenants on real processes (issue 17's targets 1-3).

A real `gpufleet dispatcher` and `--nodes` real `gpufleet worker --probe sim` processes (speed
1, capacity 1; `LocalFleet`) on a private redis-server; jobs are `gpufleet.worker.tasks:synthetic`
of `--cost` seconds each. Times come from rq's `ended_at` in each job HASH (written by the
worker as the job ends) against the client's clock just before the submit.

1. Small batch behind a big one. Tenant A submits `--big` jobs; `--settle` seconds later
   tenant B submits `--small` jobs. B's time = B's last `ended_at` minus B's submit. The
   reference is B alone on half the fleet (a fleet of nodes/2, nothing else submitted),
   measured in the same repetition. Target: B's time <= 2x the reference.
2. A loses no throughput. A's jobs ended per second in the window before B's submit and in
   `--window` seconds after B's last job, against the fleet's capacity (nodes / cost).
3. Weights 3:1. Tenants X (weight 3) and Y (weight 1) each submit `--weighted` jobs at once;
   the jobs of each that end during the `--window` seconds after `--settle` (both still
   have a backlog) give the share X / (X + Y). Target: X / Y within 10% of 3.

Repetitions run the three scenarios in turn (`--reps`). The big backlogs are canceled at the
end of each scenario. Prints one JSON object (with `--json`) or a summary.

    python bench/tenants.py                  # 8 nodes, 50 ms jobs, 20,000 + 100 jobs, 3 repetitions
    python bench/tenants.py --smoke          # 4 nodes, 1 repetition, small counts (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from gpufleet.dispatcher.client.results import read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.fleet.control import cancel
from gpufleet.dispatcher.fleet.tenants import set_tenant
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import LocalFleet, SimNode

FUNC = "gpufleet.worker.tasks:synthetic"
POLL_S = 0.02


def ended_times(r: Redis, batch_id: str) -> list[float]:
    """The unix time each ended job of the batch ended at (rq's ended_at)."""
    ids = [j.decode() for j in r.lrange(Keys(NS).batch_jobs(batch_id), 0, -1)]
    with r.pipeline(transaction=False) as p:
        for job_id in ids:
            p.hget(Keys.rq_job(job_id), "ended_at")
        raw = p.execute()
    return [datetime.strptime(v.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
            for v in raw if v]  # fmt: skip


def wait_done(r: Redis, batch_id: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not read_progress(r, Keys(NS), batch_id).done:
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch_id} did not end within {timeout_s:g} s")
        time.sleep(POLL_S)


NS = "tenants-bench"


def start_fleet(url: str, nodes: int) -> tuple[LocalFleet, Redis]:
    r = Redis.from_url(url)
    r.flushall()
    fleet = LocalFleet(url, namespace=NS)
    fleet.start_dispatcher()
    names = [f"n{i}" for i in range(nodes)]
    for name in names:
        fleet.start_worker(SimNode(name))
    fleet.wait_for_nodes(r, names)
    return fleet, r


def jobs(n: int, cost: float) -> list[JobSpec]:
    return [JobSpec(FUNC, {"cost": cost, "i": i}) for i in range(n)]


def small_behind_big(url: str, args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(redis_url=url, namespace=NS)
    fleet, r = start_fleet(url, args.nodes)
    try:
        submitter = Submitter(r, settings)
        a_submit = time.time()
        big = submitter.submit(jobs(args.big, args.cost), tenant="team-a").batch_id
        time.sleep(args.settle)
        b_submit = time.time()
        small = submitter.submit(jobs(args.small, args.cost), tenant="team-b").batch_id
        wait_done(r, small, 120)
        b_end = max(ended_times(r, small))
        time.sleep(args.window)
        a_ends = ended_times(r, big)
        cancel(r, settings, big)
    finally:
        fleet.stop()
    before = sum(a_submit + 1.0 <= t < b_submit for t in a_ends) / max(1e-9, b_submit - a_submit - 1.0)
    after = sum(b_end <= t < b_end + args.window for t in a_ends) / args.window
    return {"b_time_s": b_end - b_submit, "a_rate_before_b": before, "a_rate_after_b": after,
            "a_ended_while_b_ran": sum(b_submit <= t <= b_end for t in a_ends)}  # fmt: skip


def small_alone(url: str, args: argparse.Namespace) -> float:
    settings = Settings(redis_url=url, namespace=NS)
    fleet, r = start_fleet(url, max(1, args.nodes // 2))
    try:
        submit = time.time()
        small = Submitter(r, settings).submit(jobs(args.small, args.cost), tenant="team-b").batch_id
        wait_done(r, small, 120)
        return max(ended_times(r, small)) - submit
    finally:
        fleet.stop()


def weighted(url: str, args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(redis_url=url, namespace=NS)
    fleet, r = start_fleet(url, args.nodes)
    try:
        keys = Keys(NS)
        set_tenant(r, keys, "team-x", weight=3.0)
        set_tenant(r, keys, "team-y", weight=1.0)
        submitter = Submitter(r, settings)
        x = submitter.submit(jobs(args.weighted, args.cost), tenant="team-x").batch_id
        y = submitter.submit(jobs(args.weighted, args.cost), tenant="team-y").batch_id
        start = time.time() + args.settle
        time.sleep(args.settle + args.window)
        x_n = sum(start <= t < start + args.window for t in ended_times(r, x))
        y_n = sum(start <= t < start + args.window for t in ended_times(r, y))
        x_left = read_progress(r, keys, x)
        y_left = read_progress(r, keys, y)
        for b in (x, y):
            cancel(r, settings, b)
    finally:
        fleet.stop()
    backlog = min(x_left.size - x_left.finished, y_left.size - y_left.finished)
    return {"x": x_n, "y": y_n, "ratio": x_n / max(1, y_n), "both_backlogged": backlog > 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--cost", type=float, default=0.05, help="Seconds per job on a speed-1 node.")
    ap.add_argument("--big", type=int, default=20_000, help="Tenant A's batch.")
    ap.add_argument("--small", type=int, default=100, help="Tenant B's batch.")
    ap.add_argument("--weighted", type=int, default=5_000, help="Jobs each of X and Y submit.")
    ap.add_argument("--settle", type=float, default=2.0, help="Seconds before B submits / the share window opens.")
    ap.add_argument("--window", type=float, default=5.0, help="Seconds of the throughput and share windows.")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="4 nodes, 1 repetition, 2,000 + 40 jobs, 1,000 weighted.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.nodes, args.reps, args.big, args.small, args.weighted, args.window = 4, 1, 2000, 40, 1000, 2.0
    rows = []
    with RedisServer() as server:
        for rep in range(args.reps):
            load = os.getloadavg()[0]
            big = small_behind_big(server.url, args)
            alone = small_alone(server.url, args)
            share = weighted(server.url, args)
            row = {"rep": rep, "load_1m": load, **big, "b_alone_half_fleet_s": alone,
                   "b_ratio": big["b_time_s"] / alone, "weights_3_1": share}  # fmt: skip
            rows.append(row)
            print(f"rep {rep}: B {big['b_time_s']:.2f} s vs alone on half the fleet {alone:.2f} s "
                  f"(x{row['b_ratio']:.2f}); A {big['a_rate_before_b']:.1f} jobs/s before B, "
                  f"{big['a_rate_after_b']:.1f} after (capacity {args.nodes / args.cost:.0f}); "
                  f"3:1 share {share['x']}:{share['y']} = {share['ratio']:.2f} (load {load:.2f})",
                  file=sys.stderr, flush=True)  # fmt: skip
    result = {"nodes": args.nodes, "cost_s": args.cost, "big": args.big, "small": args.small,
              "capacity_jobs_per_s": args.nodes / args.cost, "reps": rows,
              "b_ratio_median": statistics.median(r["b_ratio"] for r in rows),
              "share_ratio_median": statistics.median(r["weights_3_1"]["ratio"] for r in rows)}  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        print(f"B / B alone on half the fleet: median x{result['b_ratio_median']:.2f}; 3:1 weights: median "
              f"{result['share_ratio_median']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
