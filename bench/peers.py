"""Throughput with results stored: gpufleet against rq, Celery, huey, dramatiq, saq, taskiq, arq.

Per system and worker count (1 and 2 worker processes), N no-op echo jobs go from the client
to a stored, readable result through real worker processes on one private redis-server
(`RedisServer`, a free loopback port). Every peer runs at its defaults, results kept where it
keeps them by default, as bench/peer_systems.py lists (apps in bench/peer_apps/):

- gpufleet: one `Submitter.submit` batch -> `gpufleet dispatcher` -> `gpufleet worker --probe
  sim --capacity 1` processes; results in rq's Results streams (result_ttl).
- rq: `enqueue_many`, SimpleWorker processes (JSONSerializer), results kept result_ttl (500 s).
- celery: `apply_async` in a loop on one producer, `--pool solo` workers, Redis result backend
  (results stored, 1 day); no gossip, mingle or heartbeat (events are off by default).
- huey: RedisHuey, one `huey_consumer` (1 thread) per worker; results in its results hash.
- dramatiq: RedisBroker, `dramatiq --processes W` (8 threads each). dramatiq stores no
  results by default: here the Results middleware with a RedisBackend and store_results=True.
- saq: `saq --workers W` (concurrency 10 each); the result is kept in the job key (600 s).
- taskiq: taskiq-redis RedisStreamBroker + RedisAsyncResultBackend, `taskiq worker --workers W`.
- arq: one `arq` process per worker (max_jobs 10); keeps results (3600 s) by default.
The asyncio clients (saq, taskiq, arq) enqueue one awaited call per job, in turn.

The workers (and gpufleet's dispatcher) are started, and have counted themselves in, before
the clock starts, for every system. The clock starts just before the first submit and stops
when the LAST RESULT IS READABLE by the client, the same point for everyone (worker processes
are not waited for): a poll every 10 ms of one cheap command that says so (gpufleet: the
batch's counters; rq: ZCARD of the finished registry; huey: HLEN of the results hash; saq,
arq: ZCARD of the incomplete / queue set, left in the transaction that stores the result;
celery, dramatiq, taskiq: EXISTS of the result keys, 200 per command, in submission order).
jobs/s = N / wall.

Per trial, after `CONFIG RESETSTAT` (as bench/e2e.py's command_cost):
- CPU ms per job: utime + stime of every process from clock start to clock stop, over N (this
  client, its submits and polls: process_time; each worker process tree and the dispatcher:
  /proc of its session, 10 ms ticks; redis-server: INFO cpu).
- Redis commands per job: INFO commandstats, minus INFO/CONFIG and this script's polls, / N.
- Round trips per job: INFO stats total_reads_processed (one per request the server read),
  minus this script's polls and INFOs, / N.
Rounds are interleaved: each run does every worker count and every system in turn. Placement:
everything on this one machine, unpinned; the load average is printed with the figures.

    python bench/peers.py                  # N=5000, --runs 3, 1 and 2 workers, every installed peer
    python bench/peers.py --smoke          # N=300, 1 run, gpufleet, rq and huey: a CI smoke run
    python bench/peers.py --json           # one JSON object per trial, then the summary
    python bench/peers.py --systems gpufleet,rq --workers 1 --jobs 3000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from e2e import command_cost  # siblings in bench/ (ruff files them as third-party)
from peer_systems import SYSTEMS, System, available, wait_all
from real_policies import redis_cpu_s, session_cpu_s

from gpufleet.dispatcher.store.redis_server import RedisServer

POLL_S = 0.01
SETTLE_S = 0.3  # after the last worker counted itself in, before the clock starts
WAIT_TIMEOUT_S = 300.0
SMOKE_SYSTEMS = ("gpufleet", "rq", "huey")


def server_cpu_s(r: Redis, system: System) -> dict[str, float]:
    """CPU seconds so far of the system's processes (workers, dispatcher) and of redis-server."""
    return {"workers": sum(session_cpu_s(pid) for pid in system.leaders()), "redis": redis_cpu_s(r)}


def reads(r: Redis) -> int:
    return int(r.info("stats")["total_reads_processed"])


def run_trial(r: Redis, url: str, name: str, n: int, workers: int, trial: str) -> dict[str, Any]:
    """N jobs through `workers` worker processes of `name`, timed to the last readable result."""
    r.flushall()
    system = SYSTEMS[name](r, url, trial, POLL_S)
    try:
        system.start(workers)
        time.sleep(SETTLE_S)
        r.config_resetstat()
        cpu0, reads0 = server_cpu_s(r, system), reads(r)
        client0, start = time.process_time(), time.perf_counter()
        handles = system.submit_all(n)
        submit_s = time.perf_counter() - start
        waiter = system.waiter(handles)
        wait_all(waiter, POLL_S, WAIT_TIMEOUT_S)
        wall, client_s = time.perf_counter() - start, time.process_time() - client0
        reads1 = reads(r)  # first: the INFOs after it are not in the count
        cpu1 = server_cpu_s(r, system)
        cmds, by_cmd = command_cost(r, n, dict(waiter.sent))
    finally:
        system.stop()
    polls = sum(waiter.sent.values())
    cpu_ms = {"client": client_s * 1e3 / n, **{k: (cpu1[k] - cpu0[k]) * 1e3 / n for k in cpu0}}
    return {"wall": wall, "submit_s": submit_s, "rate": n / wall, "cpu_ms": sum(cpu_ms.values()), "cpu_by": cpu_ms,
            "cmds": cmds, "by_cmd": by_cmd, "rtt": (reads1 - reads0 - 1 - polls) / n, "polls": polls}  # fmt: skip


def summarize_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One system and worker count over its runs: rate median and spread, the medians of the rest."""
    rates = sorted(t["rate"] for t in rows)
    middle = sorted(rows, key=lambda t: t["rate"])[len(rows) // 2]
    return {"median": statistics.median(rates), "min": rates[0], "max": rates[-1],
            **{k: statistics.median(t[k] for t in rows) for k in ("cpu_ms", "cmds", "rtt")},
            "cpu_by": {k: statistics.median(t["cpu_by"][k] for t in rows) for k in rows[0]["cpu_by"]},
            "by_cmd": middle["by_cmd"], "slots": SYSTEMS[rows[0]["system"]].slots}  # fmt: skip


def summarize(trials: list[dict[str, Any]], names: list[str], worker_counts: list[int]) -> dict[str, Any]:
    return {f"{name}/{w}": summarize_rows([t for t in trials if t["system"] == name and t["workers"] == w])
            for w in worker_counts for name in names}  # fmt: skip


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_table(summary: dict[str, Any], names: list[str], worker_counts: list[int], header: str) -> None:
    print(header)
    print("\n| system | workers | jobs at a time per worker | median jobs/s | spread (min - max) | CPU ms per job "
          "(client / workers / redis) | Redis commands per job | round trips per job |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for w in worker_counts:
        for name in names:
            x = summary[f"{name}/{w}"]
            by = " / ".join(f"{x['cpu_by'][k]:.3f}" for k in ("client", "workers", "redis"))
            print(f"| {name} | {w} | {x['slots']} | {x['median']:,.0f} | {x['min']:,.0f} - {x['max']:,.0f} "
                  f"| {x['cpu_ms']:.3f} ({by}) | {x['cmds']:.1f} | {x['rtt']:.2f} |")  # fmt: skip
    print("\nRedis commands per job by name (the median-rate run's order; >= 0.05 per job):")
    for w in worker_counts:
        for name in names:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in summary[f"{name}/{w}"]["by_cmd"].items() if v >= 0.05)
            print(f"  {name} x{w}: {parts}")


def trial_line(row: dict[str, Any]) -> str:
    return (f"run {row['run']} {row['system']:8} workers={row['workers']} {row['rate']:8,.0f} jobs/s  "
            f"wall {row['wall']:.2f} s  submit {row['submit_s']:.2f} s  {row['cpu_ms']:.3f} CPU ms/job  "
            f"{row['cmds']:.1f} cmds/job  {row['rtt']:.2f} round trips/job")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", "-n", type=int, default=5000, help="No-op jobs per trial (N).")
    parser.add_argument("--runs", type=int, default=3, help="Trials per system and worker count.")
    parser.add_argument("--workers", default="1,2", help="Worker process counts, comma-separated.")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="Comma-separated (default: all installed).")
    parser.add_argument("--smoke", action="store_true", help="N=300, 1 run, gpufleet, rq and huey: a CI smoke run.")
    parser.add_argument("--json", action="store_true", help="One JSON line per trial, then the summary as JSON.")
    args = parser.parse_args()
    if args.smoke:
        args.jobs, args.runs, args.systems = 300, 1, ",".join(SMOKE_SYSTEMS)
    names = available([s.strip() for s in args.systems.split(",")])
    worker_counts = [int(w) for w in args.workers.split(",")]
    t0, load0, trials = time.perf_counter(), load(), []
    with RedisServer() as server:
        r = Redis.from_url(server.url)
        version = r.info("server")["redis_version"]
        for run in range(args.runs):
            for workers in worker_counts:
                for name in names:  # the systems take turns, so drift in the machine hits all of them
                    row = run_trial(r, server.url, name, args.jobs, workers, f"{run}{workers}")
                    row.update(system=name, workers=workers, run=run, jobs=args.jobs)
                    trials.append(row)
                    if args.json:
                        print(json.dumps(row), flush=True)
                    else:
                        print(trial_line(row), file=sys.stderr, flush=True)
    summary, total_s = summarize(trials, names, worker_counts), time.perf_counter() - t0
    header = (f"{args.jobs:,} no-op jobs, {args.runs} run(s); redis-server {version}; nproc {os.cpu_count()}; "
              f"all processes on this machine, unpinned; load average {load0} at the start, {load()} at the end; "
              f"{total_s:.0f} s in all")  # fmt: skip
    if args.json:
        print(json.dumps({"summary": summary, "header": header, "total_s": total_s, "redis_version": version}))
    else:
        print_table(summary, names, worker_counts, header)


if __name__ == "__main__":
    main()
