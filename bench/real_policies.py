"""Every routing policy end to end: real dispatcher and sim workers on a loopback redis-server.

Per policy: latency of each job (enqueue -> end, from the results' ISO timestamps; mean and
p99 leave out the first --warmup share of jobs, as the simulator does), makespan (first
enqueue -> last end, all jobs) and each node's share of the jobs. Placement: one private
redis-server on a free port; per policy a flushed DB, a fresh namespace, one dispatcher
(`--policy NAME`) and four single-slot sim workers of speeds 1,1,2,4 (`--weight` = speed),
all child processes on this one machine (2 vCPUs for bench/RESULTS.md), beside this script,
which submits open loop: Poisson arrivals at --load x capacity (sum of speeds / mean cost),
each job enqueued alone at its time (a late loop enqueues all that are due as one group).
Costs are exponential, mean 0.05 s at speed 1; one seed for all policies, so each sees the
same jobs at the same offsets. The workers sleep, so CPU should not be the bottleneck: the
CPU seconds of every process (dispatcher, workers, redis-server, this script, and what other
processes used the machine meanwhile) are reported to check it. No central-queue row:
gpufleet cannot put four workers on one shared queue.

    python bench/real_policies.py [--jobs 2000] [--policies a,b] [--load 0.8] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from gpufleet.cli.render import percentile
from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.routing.policies import POLICY_NAMES
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.demo import latencies_by_node
from gpufleet.worker.fleet import LocalFleet, SimNode

NODES = (SimNode("sim-1a", 1.0), SimNode("sim-1b", 1.0), SimNode("sim-2", 2.0), SimNode("sim-4", 4.0))
MEAN_COST_S = 0.05  # seconds on a speed-1 node
FUNC = "gpufleet.worker.tasks:synthetic"


def workload(jobs: int, load: float, seed: int) -> list[tuple[float, float]]:
    """(arrival offset s, cost s) per job: Poisson arrivals, exponential costs."""
    rng, rate, t = random.Random(seed), load * sum(n.speed for n in NODES) / MEAN_COST_S, 0.0
    return [((t := t + rng.expovariate(rate)), round(rng.expovariate(1 / MEAN_COST_S), 6)) for _ in range(jobs)]


def session_cpu_s(leader: int) -> float:
    """utime + stime of the live processes in session `leader` (each LocalFleet child has its own)."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
        except (OSError, IndexError):
            continue
        total += int(rest[11]) + int(rest[12]) if int(rest[3]) == leader else 0  # utime, stime if session
    return total / os.sysconf("SC_CLK_TCK")


def redis_cpu_s(r: Redis) -> float:
    return float(r.info("cpu")["used_cpu_user"]) + float(r.info("cpu")["used_cpu_sys"])


def host_busy_s() -> float:
    """CPU seconds the whole machine has been busy (every process, every core): /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def iso_epoch_s(iso: str) -> float:
    """An rq timestamp (ISO 8601, UTC) as seconds since the epoch."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def run_policy(r: Redis, url: str, policy: str, plan: list[tuple[float, float]], warmup: float) -> dict[str, Any]:
    r.flushdb()
    ns = f"bench-{policy}"
    keys, fleet = Keys(ns), LocalFleet(url, ns)
    try:
        fleet.start_dispatcher("--policy", policy)
        for node in NODES:
            fleet.start_worker(node, "--weight", f"{node.speed:g}")
        fleet.wait_for_nodes(r, [n.node_id for n in NODES])
        while not r.exists(keys.dispatcher_lease):
            time.sleep(0.05)
        submitter = Submitter(r, Settings(redis_url=url, namespace=ns))
        batch = submitter.start_batch(None, len(plan), FUNC)
        specs = [JobSpec(FUNC, {"cost": cost}, client_id=str(i)) for i, (_, cost) in enumerate(plan)]
        cpu0 = {name: session_cpu_s(p.pid) for name, p in fleet.procs.items()}
        redis0, self0, host0, start, i = redis_cpu_s(r), time.process_time(), host_busy_s(), time.monotonic(), 0
        while i < len(plan):
            if (wait_s := plan[i][0] - (now := time.monotonic() - start)) > 0:
                time.sleep(wait_s)
                continue
            due = next((j for j in range(i, len(plan)) if plan[j][0] > now), len(plan))
            i = i + submitter.enqueue(specs[i:due], batch)
        while not read_progress(r, keys, batch).done:
            time.sleep(0.05)
        wall = time.monotonic() - start
        cpu = {name: round(session_cpu_s(p.pid) - cpu0[name], 2) for name, p in fleet.procs.items()}
        cpu.update({"redis-server": round(redis_cpu_s(r) - redis0, 2), "bench": round(time.process_time() - self0, 2)})
        cpu["other processes"] = round(host_busy_s() - host0 - sum(cpu.values()), 2)  # not ours: noise
    finally:
        fleet.stop()
    records = list(iter_results(r, keys, batch))
    measured = latencies_by_node(records[int(warmup * len(records)):])
    lat = sorted(v for values in measured.values() for v in values)
    enq, end = ([iso_epoch_s(x[f]) for x in records if x.get(f)] for f in ("enqueued_at", "ended_at"))
    ran = {n.node_id: sum(1 for x in records if x.get("node") == n.node_id) for n in NODES}
    return {
        "policy": policy, "jobs": len(records), "finished": sum(x["status"] == "finished" for x in records),
        "mean": sum(lat) / len(lat), "p99": percentile(lat, 99), "makespan": max(end) - min(enq),
        "share": {node: count / len(records) for node, count in ran.items()}, "wall": wall, "cpu": cpu,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="Jobs per policy.")
    parser.add_argument("--policies", default=",".join(POLICY_NAMES), help="Comma-separated policy names.")
    parser.add_argument("--load", type=float, default=0.8, help="Arrival rate / total capacity.")
    parser.add_argument("--seed", type=int, default=1, help="The seed every policy shares.")
    parser.add_argument("--warmup", type=float, default=0.1, help="Share of first jobs left out of mean/p99.")
    parser.add_argument("--json", action="store_true", help="One JSON object per policy instead of a table.")
    args = parser.parse_args()
    plan = workload(args.jobs, args.load, args.seed)
    if not args.json:
        print("| policy | mean s | p99 s | makespan s | share " + " / ".join(n.node_id for n in NODES) + " | CPU |")
        print("|---|---|---|---|---|---|")
    with RedisServer() as server:
        r = Redis.from_url(server.url)
        for policy in args.policies.split(","):
            row = run_policy(r, server.url, policy.strip(), plan, args.warmup)
            if args.json:
                print(json.dumps(row), flush=True)
                continue
            share, other = " / ".join(f"{v:.3f}" for v in row["share"].values()), row["cpu"]["other processes"]
            cpu = f"{sum(row['cpu'].values()) - other:.1f} s ours + {other:.1f} s others in {row['wall']:.1f} s"
            print(f"| {row['policy']} | {row['mean']:.3f} | {row['p99']:.3f} | {row['makespan']:.1f} | {share} | {cpu} "
                  f"({row['finished']}/{row['jobs']} finished) |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
