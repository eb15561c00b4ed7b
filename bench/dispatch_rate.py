"""The dispatcher alone: routing rate and idle-fleet submit-to-start latency (issue 6, target 2).

Routing rate. A private loopback redis-server (`RedisServer`, a free port: the Redis on 6379 is
never touched) holds 16 nodes that sent one heartbeat each (the fields `worker.heartbeat`
writes, liveness TTL long enough for the run) and N jobs already submitted at normal priority
(`Submitter.enqueue`, gpufleet.worker.tasks:echo; with `--tenants T`, T batches of T tenants,
which the dispatcher takes into the ingress by fair share every round). No worker consumes. The real
`dispatcher.loop.Dispatcher` (default policy, shortest-expected-delay) then runs
`dispatch_once` until every job has moved, snapshot refreshes included (every
`snapshot_interval_s`, as in the loop); jobs/s = N / wall. Nodes hold an unbounded queue
(`--max-node-queue 0`), so routing never stops for want of room; `--max-node-queue -1` runs
the default bound (capacity + prefetch) instead, with `--capacity` slots per node enough for
every job to find one (no worker ever frees one: a full fleet ends the run with an error). Each move is rq's: the id
leaves the ingress for the node's rq queue and the job's `origin` names that queue, one Lua call
per batch; the run checks that afterwards (every job's origin and node, queue lengths).
Commands per job come from INFO commandstats (CONFIG RESETSTAT before the timed run) and round
trips per batch from a connection that counts what it sends.

Latency. A real `gpufleet dispatcher` and `--latency-workers` real `gpufleet worker --probe sim`
processes (`LocalFleet`), idle. One job at a time: the client notes the time, enqueues one echo
job (one round trip), waits until it finished, then waits `--gap-ms` (jittered 0.5x-1.5x) so the
fleet is idle again. Latency = rq's `started_at` in the job HASH (written by the worker when it
starts the job) minus the client's time before the enqueue; also shown from rq's `enqueued_at`.

Placement: this script, redis-server and the fleet processes on one machine. With `--pin`, this
process (the dispatcher under test) runs on CPU 1 and redis-server on CPU 0 (sched_setaffinity),
for the routing rate only; otherwise nothing is pinned. Other load on the machine is not
controlled: compare medians, and the ratio to the baseline run on the same machine.

    python bench/dispatch_rate.py                      # N=100000, 16 nodes, batch 200 and 1000, 3 runs;
                                                       # latency 300 jobs x 3
    python bench/dispatch_rate.py --smoke              # N=5000, 1 run, 40 latency jobs (< 30 s)
    python bench/dispatch_rate.py --pin --profile      # + cProfile of one routing run (top 25 by tottime)
    python bench/dispatch_rate.py --pin --stages --no-latency   # wall us/job per step of a round, beside Redis's own
    python bench/dispatch_rate.py --no-latency --batch 200 --jobs 50000 --runs 5
    python bench/dispatch_rate.py --churn --nodes 1000 --batch 1000 --runs 3   # routing while consumed
    python bench/dispatch_rate.py --no-latency --batch 1000 --tenants 1,100     # 100 tenants with work, against 1

Routing while consumed (`--churn`): nodes of capacity 1 under the default bound, and a consumer
process that, in a loop, ends every job it finds in the node queues at once (counted for the
dispatcher as a worker's record step counts it) and wakes the dispatcher, which runs its own
loop until every job has moved: the routing rate when every job needs a freed slot.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import multiprocessing
import os
import pstats
import random
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.loop import Dispatcher
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.routing.policies import make_policy
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import JobField, Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import LocalFleet, SimNode
from gpufleet.worker.gpu import Reading
from gpufleet.worker.heartbeat import NodeInfo, heartbeat_fields
from gpufleet.worker.stats import StatsView

FUNC = "gpufleet.worker.tasks:echo"


# --- helpers ------------------------------------------------------------------------------------


class CountingConnection(redis.Connection):
    """A redis-py connection that counts what it sends: one send = one round trip (a pipeline
    sends all its commands at once)."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


def commandstats(r: Redis, what: str = "calls") -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v[what]) for k, v in r.info("commandstats").items()}


SCRIPT_COMMANDS = ("eval", "evalsha")  # commands a script runs are also counted under their own names


def pct(values: list[float], q: float) -> float:
    """Nearest-rank q-quantile (0 < q <= 1)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def write_heartbeats(r: Redis, keys: Keys, node_ids: list[str], *, ttl_s: float, capacity: int = 1) -> None:
    """One heartbeat per node, what beat.lua writes (idle, sim probe), in one pipeline."""
    view = StatsView(running=0, completed=0, failed=0, service_time_s=0.01, busy_fraction=0.0)
    reading = Reading("sim")
    with r.pipeline(transaction=False) as p:
        for node_id in node_ids:
            fields = heartbeat_fields(NodeInfo(node_id, capacity=capacity), view, reading)
            p.hset(keys.heartbeat(node_id), mapping=fields)
            p.set(keys.alive(node_id), "bench", px=int(ttl_s * 1000))  # value: the incarnation
            p.sadd(keys.nodes, node_id)
        p.execute()


def pin(server: RedisServer, enabled: bool) -> str:
    if not enabled:
        return "unpinned: this process, redis-server and any child share the machine's CPUs"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return f"--pin asked, but only CPUs {cpus}: unpinned"
    proc = server._proc
    assert proc is not None
    os.sched_setaffinity(proc.pid, {cpus[0]})
    os.sched_setaffinity(0, {cpus[1]})
    return f"pinned: redis-server on CPU {cpus[0]}, this process (the dispatcher) on CPU {cpus[1]}"


# --- routing rate -------------------------------------------------------------------------------


STAGES: dict[str, float] = {}  # stage -> seconds, with --stages


def time_stages() -> None:
    """Wrap the loop's three steps (and the snapshot refresh) with a clock: where a round's time
    goes, without a profiler's overhead. Only in this process, for --stages."""
    from gpufleet.dispatcher import loop
    from gpufleet.dispatcher.routing import router
    from gpufleet.dispatcher.store import scripts

    def timed(cls: Any, name: str, stage: str) -> None:
        inner = getattr(cls, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                STAGES[stage] = STAGES.get(stage, 0.0) + time.perf_counter() - t0

        setattr(cls, name, wrapper)

    timed(loop.Dispatcher, "_read_heads", "read heads (SORT ... GET)")
    timed(router.Router, "route", "route (Python only)")
    timed(scripts.Scripts, "move_to_nodes", "move (script call)")
    timed(loop.Dispatcher, "refresh", "snapshot refresh")


def routing_trial(r: Redis, url: str, n: int, nodes: int, batch: int, max_node_queue: int, trial: str,
                  profile: cProfile.Profile | None, capacity: int = 1, tenants: int = 1) -> dict[str, Any]:  # fmt: skip
    r.flushall()
    settings = Settings(redis_url=url, namespace=f"dr{trial}", dispatch_batch=batch, max_node_queue=max_node_queue,
                        heartbeat_interval_s=1.0, heartbeat_ttl_s=3600.0)  # fmt: skip
    keys = Keys(settings.namespace)
    node_ids = [f"node-{i:02d}" for i in range(nodes)]
    write_heartbeats(r, keys, node_ids, ttl_s=settings.heartbeat_ttl_s, capacity=capacity)
    submitter = Submitter(r, settings)
    batch_ids = []
    for t in range(tenants):  # one batch per tenant, the jobs split evenly
        size = n // tenants + (t < n % tenants)
        batch_ids.append(submitter.start_batch(None, size, FUNC, f"tenant-{t:03d}"))
        submitter.enqueue((JobSpec(FUNC, i) for i in range(size)), batch_ids[-1])
    d = Dispatcher(r, settings, make_policy(settings.policy))
    d.refresh()  # the loop's first refresh (scripts loaded, health state built): not timed
    r.config_resetstat()
    sends0, rounds = CountingConnection.sends, 0
    STAGES.clear()
    if profile:
        profile.enable()
    start = time.perf_counter()
    while d.moved_total < n:
        rnd = d.dispatch_once()
        rounds += 1
        if not rnd.moved:
            raise RuntimeError(f"a round moved nothing with {n - d.moved_total} jobs left")
    wall = time.perf_counter() - start
    if profile:
        profile.disable()
    sends = CountingConnection.sends - sends0
    stats, usec = commandstats(r), commandstats(r, "usec")
    for name in ("info", "config|resetstat", "config"):
        stats.pop(name, None)
    # Redis's own time: top-level commands only (a script's usec includes the commands it ran)
    inner = {"lrem", "rpush", "hset", "sadd", "ltrim"} if any(c in stats for c in SCRIPT_COMMANDS) else set()
    redis_us = sum(v for k, v in usec.items() if k not in inner and k not in ("info", "config|resetstat", "config"))
    stages = {k: round(v / n * 1e6, 2) for k, v in STAGES.items()}
    check_moved(r, keys, batch_ids, n, node_ids)
    return {"jobs": n, "nodes": nodes, "batch": batch, "tenants": tenants, "wall_s": wall, "rate": n / wall,
            "rounds": rounds,
            "round_trips_per_round": sends / rounds, "commands_per_job": sum(stats.values()) / n,
            "redis_us_per_job": redis_us / n, "script_us_per_job": sum(usec.get(c, 0) for c in SCRIPT_COMMANDS) / n,
            "sort_us_per_job": usec.get("sort", 0) / n, "stages_us_per_job": stages,
            "by_command": {k: round(v / n, 3) for k, v in sorted(stats.items(), key=lambda kv: -kv[1])}}  # fmt: skip


# What every worker of the fleet would do, at once and in no time: each node's queued jobs end
# (counted for the dispatcher as the record step counts them, keys.dispatch_ended) and the
# dispatcher is woken. KEYS: the ended HASH, the dispatcher's wake-up list, then the node
# queues; ARGV: the node ids in the same order. Returns the jobs consumed.
CONSUME = """
local consumed = 0
for i = 3, #KEYS do
    local n = redis.call("LLEN", KEYS[i])
    if n > 0 then
        redis.call("DEL", KEYS[i])
        redis.call("HINCRBY", KEYS[1], ARGV[i - 2], n)
        consumed = consumed + n
    end
end
if consumed > 0 then
    redis.call("RPUSH", KEYS[2], 1)
    redis.call("LTRIM", KEYS[2], 0, 0)
end
return consumed
"""


def churn_trial(r: Redis, url: str, n: int, nodes: int, batch: int, trial: str) -> dict[str, Any]:
    """Routing while the fleet consumes: nodes of capacity 1 under the default bound (a node
    holds 3 unless its jobs are short next to the dispatch latency), so every job needs a slot
    that a consumer freed. A consumer process runs CONSUME in a loop (no pause); the dispatcher
    runs its loop (`dispatch_once`, then `_pause`, woken by the consumer) until every job has
    moved. jobs/s = N / wall."""
    r.flushall()
    settings = Settings(redis_url=url, namespace=f"ch{trial}", dispatch_batch=batch, heartbeat_interval_s=1.0,
                        heartbeat_ttl_s=3600.0)  # fmt: skip
    keys = Keys(settings.namespace)
    node_ids = [f"node-{i:03d}" for i in range(nodes)]
    write_heartbeats(r, keys, node_ids, ttl_s=settings.heartbeat_ttl_s)
    submitter = Submitter(r, settings)
    submitter.enqueue((JobSpec(FUNC, i) for i in range(n)), submitter.start_batch(None, n, FUNC))
    d = Dispatcher(r, settings, make_policy(settings.policy))
    d.refresh()
    consume_keys = [keys.dispatch_ended, keys.dispatch_wakeup, *(Keys.rq_queue(keys.node_queue(i)) for i in node_ids)]
    done = multiprocessing.Event()
    consumer = multiprocessing.Process(target=consume_until, args=(url, consume_keys, node_ids, done), daemon=True)
    stop, rounds = threading.Event(), 0
    consumer.start()
    start = time.perf_counter()
    while d.moved_total < n:
        d._pause(stop, d.dispatch_once())
        rounds += 1
    wall = time.perf_counter() - start
    done.set()
    consumer.join()
    return {"jobs": n, "nodes": nodes, "batch": batch, "wall_s": wall, "rate": n / wall, "rounds": rounds,
            "limit_per_node": d.router.limit(d._nodes[0]), "dispatch_latency_ms": d.router.dispatch_latency_s * 1000}


def consume_until(url: str, keys: list[str], node_ids: list[str], done: Any) -> None:
    """The consumer process: CONSUME in a loop until `done` is set."""
    consume = Redis.from_url(url).register_script(CONSUME)
    while not done.is_set():
        consume(keys=keys, args=node_ids)


def check_moved(r: Redis, keys: Keys, batch_ids: list[str], n: int, node_ids: list[str]) -> None:
    """Every job left the ingress, sits in one node queue, and its origin and node say so."""
    ingress = Keys.rq_queue(keys.ingress_queue("normal"))
    assert r.llen(ingress) == 0, "jobs left in the ingress"
    where: dict[str, str] = {}
    with r.pipeline(transaction=False) as p:
        for node_id in node_ids:
            p.lrange(Keys.rq_queue(keys.node_queue(node_id)), 0, -1)
        for node_id, ids in zip(node_ids, p.execute()):
            where.update((j.decode(), node_id) for j in ids)
    assert len(where) == n, f"{len(where)} jobs in node queues, expected {n}"
    ids = [j.decode() for batch_id in batch_ids for j in r.lrange(keys.batch_jobs(batch_id), 0, -1)]
    with r.pipeline(transaction=False) as p:
        for job_id in ids:
            p.hmget(Keys.rq_job(job_id), "origin", JobField.NODE)
        for job_id, (origin, node) in zip(ids, p.execute()):
            assert origin.decode() == keys.node_queue(where[job_id]) and node.decode() == where[job_id], job_id


# --- latency ------------------------------------------------------------------------------------


def parse_rq_time(raw: bytes) -> float:
    return datetime.strptime(raw.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def latency_trial(r: Redis, url: str, n: int, workers: int, gap_ms: float, trial: str) -> dict[str, Any]:
    r.flushall()
    ns = f"lat{trial}"
    keys, fleet = Keys(ns), LocalFleet(url, ns)
    rng = random.Random(trial)
    from_call, from_enqueued, to_end = [], [], []
    try:
        fleet.start_dispatcher()
        nodes = [SimNode(f"lat-{i}") for i in range(workers)]
        for node in nodes:
            fleet.start_worker(node)
        fleet.wait_for_nodes(r, [node.node_id for node in nodes])
        while not r.exists(keys.dispatcher_lease):
            time.sleep(0.02)
        submitter = Submitter(r, Settings(redis_url=url, namespace=ns))
        batch_id = submitter.start_batch(None, n, FUNC)
        time.sleep(0.5)  # the first heartbeats after start-up have settled
        for i in range(n):
            time.sleep(gap_ms * rng.uniform(0.5, 1.5) / 1000)
            t0 = time.time()
            submitter.enqueue([JobSpec(FUNC, i)], batch_id)
            job_key = Keys.rq_job(r.lindex(keys.batch_jobs(batch_id), -1).decode())
            deadline = time.monotonic() + 10
            while (status := r.hget(job_key, "status")) != b"finished":
                if status == b"failed" or time.monotonic() > deadline:
                    raise RuntimeError(f"job {job_key} ended {status!r}")
                time.sleep(0.001)
            enqueued, started, ended = r.hmget(job_key, "enqueued_at", "started_at", "ended_at")
            from_call.append((parse_rq_time(started) - t0) * 1000)
            from_enqueued.append((parse_rq_time(started) - parse_rq_time(enqueued)) * 1000)
            to_end.append((parse_rq_time(ended) - t0) * 1000)
    finally:
        fleet.stop()
    return {"jobs": n, "workers": workers,
            "start_ms": {"median": statistics.median(from_call), "p99": pct(from_call, 0.99), "max": max(from_call)},
            "start_from_enqueued_at_ms": {"median": statistics.median(from_enqueued), "p99": pct(from_enqueued, 0.99)},
            "end_ms": {"median": statistics.median(to_end), "p99": pct(to_end, 0.99)}}  # fmt: skip


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", "-n", type=int, default=100_000, help="Jobs pre-submitted per routing run.")
    ap.add_argument("--nodes", type=int, default=16, help="Nodes with room (one heartbeat each, no worker).")
    ap.add_argument("--batch", default="200,1000",
                    help="dispatch_batch values to run, comma-separated (1000 is the default setting).")  # fmt: skip
    ap.add_argument("--max-node-queue", type=int, default=0,
                    help="Router bound per node; 0: unbounded; -1: the default, capacity + prefetch.")
    ap.add_argument("--capacity", type=int, default=1,
                    help="Slots each node reports: with the default bound, nodes x (capacity + 2) must hold --jobs.")
    ap.add_argument("--runs", type=int, default=3, help="Runs per batch size, and latency runs.")
    ap.add_argument("--tenants", default="1",
                    help="Comma-separated tenant counts: the jobs are split evenly over that many tenants, one batch "
                         "each, all waiting at once (fair share then picks among them every round).")  # fmt: skip
    ap.add_argument("--latency-jobs", type=int, default=300, help="Jobs per latency run, one at a time.")
    ap.add_argument("--latency-workers", type=int, default=2, help="Worker processes (nodes) in the latency runs.")
    ap.add_argument("--gap-ms", type=float, default=30.0, help="Idle time between latency jobs (jittered 0.5x-1.5x).")
    ap.add_argument("--churn", action="store_true",
                    help="Routing while a consumer frees the slots (capacity 1, default bound): no latency runs.")
    ap.add_argument("--no-latency", action="store_true", help="Routing rate only.")
    ap.add_argument("--no-rate", action="store_true", help="Latency only.")
    ap.add_argument("--pin", action="store_true",
                    help="Routing runs: redis-server on one CPU, this process on another.")  # fmt: skip
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the first routing run; top 25 by tottime on stderr.")  # fmt: skip
    ap.add_argument("--stages", action="store_true",
                    help="Time each step of a routing round (read, route, move, refresh) per job, no profiler.")
    ap.add_argument("--smoke", action="store_true", help="N=5000, 1 run, batch 200, 40 latency jobs.")
    ap.add_argument("--json", action="store_true", help="Print the result as one JSON object.")
    args = ap.parse_args(argv)
    if args.smoke:
        args.jobs, args.runs, args.batch, args.latency_jobs = 5000, 1, "200", 40
    batches = [int(b) for b in args.batch.split(",")]
    tenant_counts = [int(t) for t in args.tenants.split(",")]
    result: dict[str, Any] = {"nproc": os.cpu_count(), "python": sys.version.split()[0]}
    profile = cProfile.Profile() if args.profile else None
    if args.stages:
        time_stages()
    if args.churn:
        return churn_main(args, batches)
    with RedisServer() as server:
        r = Redis.from_url(server.url, connection_class=CountingConnection)
        result["redis_version"] = r.info("server")["redis_version"]
        all_cpus = os.sched_getaffinity(0)
        if not args.no_rate:
            result["placement"] = pin(server, args.pin)
            trials = []
            cases = [(b, t) for b in batches for t in tenant_counts]
            for run in range(args.runs):
                for batch, tenants in cases:  # the cases take turns, so drift hits all of them
                    prof = profile if run == 0 and (batch, tenants) == cases[0] else None
                    row = routing_trial(r, server.url, args.jobs, args.nodes, batch, args.max_node_queue,
                                        f"{run}b{batch}t{tenants}", prof, args.capacity, tenants)  # fmt: skip
                    trials.append(row)
                    print(f"run {run} batch {batch:5} tenants {tenants:4}: {row['rate']:9,.0f} jobs/s  "
                          f"wall {row['wall_s']:.3f} s  "
                          f"{row['rounds']} rounds, {row['round_trips_per_round']:.2f} round trips/round, "
                          f"{row['commands_per_job']:.2f} commands/job, "
                          f"redis-server busy {row['redis_us_per_job']:.2f} us/job "
                          f"(scripts {row['script_us_per_job']:.2f})", file=sys.stderr, flush=True)  # fmt: skip
                    if row["stages_us_per_job"]:
                        print(f"    wall us/job by stage: {row['stages_us_per_job']}; redis-server's own: SORT "
                              f"{row['sort_us_per_job']:.2f}, move script {row['script_us_per_job']:.2f}",
                              file=sys.stderr, flush=True)  # fmt: skip
            by_batch = {case_name(b, t, tenant_counts): [x for x in trials if (x["batch"], x["tenants"]) == (b, t)]
                        for b, t in cases}  # fmt: skip
            result["routing"] = {
                b: {**spread([t["rate"] for t in ts]),
                         "round_trips_per_round": statistics.median(t["round_trips_per_round"] for t in ts),
                         "commands_per_job": statistics.median(t["commands_per_job"] for t in ts),
                         "redis_us_per_job": statistics.median(t["redis_us_per_job"] for t in ts),
                         "script_us_per_job": statistics.median(t["script_us_per_job"] for t in ts),
                         "by_command": next(t["by_command"] for t in ts)}
                for b, ts in by_batch.items()
            }  # fmt: skip
            if args.pin:  # the latency runs are unpinned: a whole fleet shares the CPUs
                os.sched_setaffinity(0, all_cpus)
                os.sched_setaffinity(server._proc.pid, all_cpus)  # type: ignore[union-attr]
        if not args.no_latency:
            rows = []
            for run in range(args.runs):
                row = latency_trial(r, server.url, args.latency_jobs, args.latency_workers, args.gap_ms, str(run))
                rows.append(row)
                print(f"latency run {run}: start median {row['start_ms']['median']:.2f} ms  "
                      f"p99 {row['start_ms']['p99']:.2f} ms"
                      f"  (from enqueued_at: {row['start_from_enqueued_at_ms']['median']:.2f} / "
                      f"{row['start_from_enqueued_at_ms']['p99']:.2f} ms)  end median {row['end_ms']['median']:.2f} ms",
                      file=sys.stderr, flush=True)  # fmt: skip
            result["latency"] = {
                "jobs_per_run": args.latency_jobs, "workers": args.latency_workers, "gap_ms": args.gap_ms,
                "start_median_ms": spread([x["start_ms"]["median"] for x in rows]),
                "start_p99_ms": spread([x["start_ms"]["p99"] for x in rows]),
                "from_enqueued_at_median_ms": spread([x["start_from_enqueued_at_ms"]["median"] for x in rows]),
                "from_enqueued_at_p99_ms": spread([x["start_from_enqueued_at_ms"]["p99"] for x in rows]),
            }  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_summary(result, args)
    if profile:
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    return 0


def churn_main(args: argparse.Namespace, batches: list[int]) -> int:
    rows = []
    with RedisServer() as server:
        r = Redis.from_url(server.url)
        for run in range(args.runs):
            for batch in batches:
                row = churn_trial(r, server.url, args.jobs, args.nodes, batch, f"{run}b{batch}")
                rows.append(row)
                print(f"churn run {run} batch {batch:5}: {row['rate']:9,.0f} jobs/s  wall {row['wall_s']:.3f} s  "
                      f"{row['rounds']} rounds, node limit {row['limit_per_node']}, dispatch latency "
                      f"{row['dispatch_latency_ms']:.2f} ms", file=sys.stderr, flush=True)  # fmt: skip
    for batch in batches:
        rates = [row["rate"] for row in rows if row["batch"] == batch]
        print(f"routing while consumed: {args.jobs:,} jobs, {args.nodes} nodes of capacity 1, default bound, "
              f"batch {batch}: median {statistics.median(rates):,.0f} jobs/s (min {min(rates):,.0f} - max "
              f"{max(rates):,.0f}), {args.runs} run(s), nproc {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def case_name(batch: int, tenants: int, tenant_counts: list[int]) -> str:
    """A routing case's key in the result: the batch size, and the tenants when several counts ran."""
    return str(batch) if tenant_counts == [1] else f"{batch}, {tenants} tenants"


def print_summary(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"redis-server {result['redis_version']}, Python {result['python']}, nproc {result['nproc']}")
    if "routing" in result:
        print(f"routing: {args.jobs:,} jobs, {args.nodes} nodes of capacity {args.capacity}, "
              f"max_node_queue={args.max_node_queue} (-1: capacity + prefetch), "
              f"{args.runs} run(s); {result['placement']}")  # fmt: skip
        for b, x in result["routing"].items():
            top = ", ".join(f"{k} {v:.2f}" for k, v in list(x["by_command"].items())[:6])
            print(f"  batch {b:>5}: median {x['median']:,.0f} jobs/s (min {x['min']:,.0f} - max {x['max']:,.0f}); "
                  f"{x['round_trips_per_round']:.2f} round trips/round; "
                  f"redis-server busy {x['redis_us_per_job']:.2f} us/job "
                  f"(move script {x['script_us_per_job']:.2f}); {x['commands_per_job']:.2f} commands/job: {top}")
    if "latency" in result:
        x = result["latency"]
        m, p = x["start_median_ms"], x["start_p99_ms"]
        print(f"latency: {x['jobs_per_run']} jobs x {args.runs} run(s), {x['workers']} sim workers, "
              f"idle gap ~{x['gap_ms']:g} ms")  # fmt: skip
        print(f"  submit -> started_at: median {m['median']:.2f} ms (runs {m['min']:.2f} - {m['max']:.2f}); "
              f"p99 {p['median']:.2f} ms (runs {p['min']:.2f} - {p['max']:.2f})")
        m, p = x["from_enqueued_at_median_ms"], x["from_enqueued_at_p99_ms"]
        print(f"  enqueued_at -> started_at: median {m['median']:.2f} ms; p99 {p['median']:.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
