"""Routing policies end to end on real processes, beside the simulator's prediction for the same jobs.

The fleet of issue 16: eight single-slot sim workers of speeds 1,1,1,1,2,2,4,8 (`--sim-speed`,
`--weight` = speed), one dispatcher (`--policy NAME`), one private loopback redis-server, all
child processes on this one machine, beside this script, which submits open loop: each job
enqueued alone at its arrival time (a late loop enqueues all that are due as one group).
The jobs are the simulator's own (dispatcher/sim/workload.py for the same speeds, load and
seed): arrivals and costs in mean service times of a speed-1 node, times `--job-s` seconds.
So the prediction beside each real figure, `simulate --stale-model loop --job-s S` for the
same configuration and seed, is for the very same sample path. Per run: the mean and p99 of
submit -> end (from the results' ISO timestamps, leaving out the first 10% of jobs, as the
simulator does), the machine's load average, and the CPU seconds of our processes and of
others meanwhile (the workers sleep: CPU should not be the bottleneck). Each repetition uses
the next seed. Prints markdown: one row per run, then whether the ranking of the policies by
mean is the simulator's, per configuration and repetition.

    python bench/real_policies.py [--job-s 0.5,0.05] [--loads 0.5,0.9] [--reps 3] [--seconds 15]
                                  [--policies speed-thresholds,shortest-expected-delay,power-of-two,random] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
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
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.sim.sim_fleet import node_ids_for
from gpufleet.dispatcher.sim.simulator import SimConfig, simulate
from gpufleet.dispatcher.sim.workload import make_workload
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.demo import latencies_by_node
from gpufleet.worker.fleet import LocalFleet, SimNode

SPEEDS = (1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 4.0, 8.0)
NODES = tuple(SimNode(node_id, speed) for node_id, speed in zip(node_ids_for(len(SPEEDS)), SPEEDS))
FUNC = "gpufleet.worker.tasks:synthetic"
POLICIES = ("speed-thresholds", "shortest-expected-delay", "power-of-two", "random")
WARMUP = 0.1


def plan_for(cfg: SimConfig, job_s: float) -> list[tuple[float, float]]:
    """(arrival offset s, cost s at speed 1) per job: the simulator's own job stream for `cfg`."""
    work = make_workload(cfg)
    return [(t * job_s, round(w * job_s, 6)) for t, w in zip(work.arrivals, work.works)]


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


def run_policy(r: Redis, url: str, policy: str, plan: list[tuple[float, float]]) -> dict[str, Any]:
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
    # in submission order, which is arrival order: the warm-up left out is the simulator's
    measured = latencies_by_node(records[int(WARMUP * len(records)):])
    lat = sorted(v for values in measured.values() for v in values)
    enq, end = ([iso_epoch_s(x[f]) for x in records if x.get(f)] for f in ("enqueued_at", "ended_at"))
    ran = {n.node_id: sum(1 for x in records if x.get("node") == n.node_id) for n in NODES}
    return {
        "policy": policy, "jobs": len(records), "finished": sum(x["status"] == "finished" for x in records),
        "mean": sum(lat) / len(lat), "p99": percentile(lat, 99), "makespan": max(end) - min(enq),
        "share": {node: count / len(records) for node, count in ran.items()}, "wall": wall, "cpu": cpu,
        "load_avg": round(os.getloadavg()[0], 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job-s", default="0.5,0.05", help="Mean job seconds on a speed-1 node, comma-separated.")
    parser.add_argument("--loads", default="0.5,0.9", help="Arrival rate / total capacity, comma-separated.")
    parser.add_argument("--reps", type=int, default=3, help="Repetitions, each with the next seed.")
    parser.add_argument("--seconds", type=float, default=15.0, help="About how long each run submits for.")
    parser.add_argument("--policies", default=",".join(POLICIES), help="Comma-separated policy names.")
    parser.add_argument("--seed", type=int, default=1, help="The first repetition's seed.")
    parser.add_argument("--json", action="store_true", help="One JSON object per run instead of a table.")
    args = parser.parse_args()
    policies = [p.strip() for p in args.policies.split(",")]
    if not args.json:
        print("| job s | load | rep | policy | real mean s | predicted | real / predicted | real p99 s | "
              "predicted p99 | share " + " / ".join(f"{n.speed:g}" for n in NODES) + " | load avg | CPU |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rankings = []
    with RedisServer() as server:
        r = Redis.from_url(server.url)
        for job_s in (float(x) for x in args.job_s.split(",")):
            for load in (float(x) for x in args.loads.split(",")):
                jobs = max(300, round(args.seconds * load * sum(SPEEDS) / job_s))
                for rep in range(args.reps):
                    seed = args.seed + rep
                    real_means, sim_means = {}, {}
                    for policy in policies:
                        cfg = SimConfig(policy=policy, speeds=SPEEDS, load=load, jobs=jobs, seed=seed,
                                        stale_model="loop", job_s=job_s)  # fmt: skip
                        predicted = simulate(cfg)
                        row = run_policy(r, server.url, policy, plan_for(cfg, job_s))
                        row.update(job_s=job_s, load=load, rep=rep + 1, seed=seed,
                                   predicted_mean=predicted.mean * job_s,
                                   predicted_p99=predicted.p99 * job_s)  # fmt: skip
                        real_means[policy], sim_means[policy] = row["mean"], row["predicted_mean"]
                        print(json.dumps(row) if args.json else table_row(row), flush=True)
                    same = sorted(policies, key=real_means.__getitem__) == sorted(policies, key=sim_means.__getitem__)
                    rankings.append((job_s, load, rep + 1, same, sorted(policies, key=real_means.__getitem__),
                                     sorted(policies, key=sim_means.__getitem__)))  # fmt: skip
    if not args.json:
        print()
        for job_s, load, rep, same, real, sim in rankings:
            print(f"- {job_s:g} s jobs, load {load}, rep {rep}: ranking {'the same' if same else 'differs'} "
                  f"(real: {', '.join(real)}; simulated: {', '.join(sim)})")


def table_row(row: dict[str, Any]) -> str:
    share, other = " / ".join(f"{v:.3f}" for v in row["share"].values()), row["cpu"]["other processes"]
    cpu = f"{sum(row['cpu'].values()) - other:.1f} s ours + {other:.1f} s others in {row['wall']:.1f} s"
    return (f"| {row['job_s']:g} | {row['load']} | {row['rep']} | {row['policy']} | {row['mean']:.3f} | "
            f"{row['predicted_mean']:.3f} | {row['mean'] / row['predicted_mean']:.2f} | {row['p99']:.3f} | "
            f"{row['predicted_p99']:.3f} | {share} | {row['load_avg']} | {cpu} ({row['finished']}/{row['jobs']}) |")


if __name__ == "__main__":
    main()
