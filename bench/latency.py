"""Idle latency, one job at a time: gpufleet against rq, Celery and huey on one worker each.

Per system: one worker process (gpufleet: a `gpufleet dispatcher` and one `gpufleet worker
--probe sim --capacity 1`, as bench/e2e.py starts them; the others as bench/peer_systems.py
says), on one private redis-server (`RedisServer`, a free loopback port). The client submits
one no-op echo job, waits for its result, sleeps a random 20-40 ms (seeded: every system gets
the same gaps), and again. Each sample is timed from just before the submit call until the
return value has been read back through the system's own client API, so the clock stops
when the result is readable by the client:

- gpufleet: `Submitter.submit([JobSpec("gpufleet.worker.tasks:echo", i)])` (a batch of one),
  then the batch's counters (`read_progress`, one HGETALL) polled every --poll-ms (0.2 ms:
  the client API's own wait starts at 10 ms), then the record read with `iter_results`.
- rq: `queue.enqueue(echo, i)`, then `job.latest_result(timeout=...)`: blocks (XREAD BLOCK).
- celery: `apply_async`, then `AsyncResult.get()`: blocks on the Redis backend's pub/sub.
- huey: calling the task, then `result.get()` polled every --poll-ms: huey's blocking get
  sleeps 50 ms before its second look (then 15% longer each time), which would be measured.
- dramatiq, saq, taskiq, arq (--systems; not in the default set) as peer_systems.py says.

Before each block's samples the worker runs 3 jobs that are not timed (first-use imports and
connections). Rounds are interleaved: each of --runs runs takes its share of the --samples
(200, split evenly) from every system in turn, with a fresh worker per block, so drift in the
machine hits all systems alike. Reported per system: p50, p90, p99 and max over all samples,
and the spread (min-max) of the per-run p50 and p99. The load average is printed next to the
figures: every process here shares the machine's cores with whatever else runs on it.

    python bench/latency.py                 # 200 samples, --runs 3, gpufleet / rq / celery / huey
    python bench/latency.py --smoke         # 20 samples, 1 run, gpufleet and rq: a CI smoke run
    python bench/latency.py --json          # one JSON object per block, then the summary
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from peer_systems import SYSTEMS, System, available  # a sibling in bench/ (ruff files it as third-party)

from gpufleet.cli.render import percentile
from gpufleet.dispatcher.store.redis_server import RedisServer

DEFAULT_SYSTEMS = ("gpufleet", "rq", "celery", "huey")
WARMUP_JOBS = 3
SETTLE_S = 0.3  # after the last worker counted itself in, before the first job
GAP_S = (0.020, 0.040)


def gaps(samples: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(*GAP_S) for _ in range(samples)]


def blocks(samples: int, runs: int) -> list[range]:
    """The sample indexes of each run: `samples` split evenly over `runs`."""
    bounds = [samples * k // runs for k in range(runs + 1)]
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


def timed_job(system: System, i: int) -> float:
    start = time.perf_counter()
    value = system.result(system.submit(i))
    elapsed = time.perf_counter() - start
    if value != i:
        raise RuntimeError(f"{system.name}: job {i} returned {value!r}")
    return elapsed


def run_block(r: Redis, url: str, name: str, trial: str, indexes: range, pauses: list[float],
              poll_s: float) -> list[float]:  # fmt: skip
    """One worker of `name`, a few untimed jobs, then one timed job per index after its pause."""
    r.flushall()
    system = SYSTEMS[name](r, url, trial, poll_s)
    try:
        system.start(1)
        time.sleep(SETTLE_S)
        for k in range(WARMUP_JOBS):
            timed_job(system, -1 - k)
        samples = []
        for i in indexes:
            time.sleep(pauses[i])
            samples.append(timed_job(system, i))
    finally:
        system.stop()
    return samples


def stats_ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"p50": percentile(s, 50) * 1e3, "p90": percentile(s, 90) * 1e3, "p99": percentile(s, 99) * 1e3,
            "max": s[-1] * 1e3}  # fmt: skip


def summarize(per_run: dict[str, list[list[float]]]) -> dict[str, Any]:
    out = {}
    for name, runs in per_run.items():
        row = stats_ms([x for run in runs for x in run])
        run_stats = [stats_ms(run) for run in runs]
        for q in ("p50", "p99"):
            row[f"{q}_runs"] = [min(s[q] for s in run_stats), max(s[q] for s in run_stats)]
        row["samples"] = sum(len(run) for run in runs)
        out[name] = row
    return out


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_table(summary: dict[str, Any], args: argparse.Namespace, version: str, loads: list[str],
                total_s: float) -> None:  # fmt: skip
    print(f"{args.samples} samples per system, {args.runs} run(s), gaps 20-40 ms (seed {args.seed}), "
          f"poll {args.poll_ms} ms; redis-server {version}; nproc {os.cpu_count()}; "
          f"load average {loads[0]} at the start, {loads[1]} at the end; {total_s:.0f} s in all")  # fmt: skip
    print("\n| system | p50 ms | p90 ms | p99 ms | max ms | per-run p50 (min - max) | per-run p99 (min - max) |")
    print("|---|---|---|---|---|---|---|")
    for name, x in summary.items():
        spreads = " | ".join(f"{x[q][0]:.2f} - {x[q][1]:.2f}" for q in ("p50_runs", "p99_runs"))
        print(f"| {name} | {x['p50']:.2f} | {x['p90']:.2f} | {x['p99']:.2f} | {x['max']:.2f} | {spreads} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="Timed jobs per system, over all runs.")
    parser.add_argument("--runs", type=int, default=3, help="Rounds; each takes its share of samples from each system.")
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help=f"Comma-separated: {', '.join(SYSTEMS)}.")
    parser.add_argument("--seed", type=int, default=1, help="Seed of the gaps between samples.")
    parser.add_argument("--poll-ms", type=float, default=0.2, help="Poll interval of the systems read by polling.")
    parser.add_argument("--smoke", action="store_true", help="20 samples, 1 run, gpufleet and rq: a CI smoke run.")
    parser.add_argument("--json", action="store_true", help="One JSON line per block, then the summary as JSON.")
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.runs, args.systems = 20, 1, "gpufleet,rq"
    names = available([s.strip() for s in args.systems.split(",")])
    pauses, t0, loads = gaps(args.samples, args.seed), time.perf_counter(), [load()]
    per_run: dict[str, list[list[float]]] = {name: [] for name in names}
    with RedisServer() as server:
        r = Redis.from_url(server.url)
        version = r.info("server")["redis_version"]
        for run, indexes in enumerate(blocks(args.samples, args.runs)):
            for name in names:
                samples = run_block(r, server.url, name, f"{run}", indexes, pauses, args.poll_ms / 1e3)
                per_run[name].append(samples)
                block = {"system": name, "run": run, **stats_ms(samples), "samples_ms": [x * 1e3 for x in samples]}
                if args.json:
                    print(json.dumps(block), flush=True)
                else:
                    figures = "  ".join(f"{q} {block[q]:7.2f} ms" for q in ("p50", "p99", "max"))
                    print(f"run {run} {name:8} {figures}  ({len(samples)} samples)", file=sys.stderr, flush=True)
    loads.append(load())
    summary, total_s = summarize(per_run), time.perf_counter() - t0
    if args.json:
        print(json.dumps({"summary": summary, "total_s": total_s, "redis_version": version, "load": loads,
                          "nproc": os.cpu_count()}))  # fmt: skip
    else:
        print_table(summary, args, version, loads, total_s)


if __name__ == "__main__":
    main()
