"""The fault suite: real processes, real faults, and checks that every job ends exactly once (issue 12).

Each scenario runs on its own private redis-server (`RedisServer(appendonly=True,
args=["--appendfsync", "always"])`; a Sentinel group's master gets `CONFIG SET appendfsync
always`, so an acknowledged write survives a kill -9), with one dispatcher (two, active +
standby, for kill-dispatcher) and 4 sim workers started as `gpufleet worker --allow
gpufleet.worker.chaos_tasks` (LocalFleet, with fast liveness: heartbeat 0.2 s, TTL 1 s, lease 1 s;
kill-worker-same-id uses 0.5 s / 3 s, so the restarted process is up before the old one's
liveness key expires). It submits --jobs jobs of `gpufleet.worker.chaos_tasks:record` (each appends a
line to a log file outside Redis, then sleeps 0 to --cost-max seconds) and injects its fault
--faults times, each when a random share (5-60%, seeded by --seed) of the batch has ended.

This file holds the scenario table, the run of one scenario and the CLI;
bench/chaos_faults.py the faults (what each scenario does: see its docstring), the fleet they
hit and a scenario's run state; bench/chaos_checks.py the checks (each described there).

Once the batch's counters say done (or --timeout passes, or no job ended for --stall
seconds), the fleet gets up to --settle seconds to clean up, then the checks run: no job
lost, stuck or in two places, batch counters right, results from the newest attempt,
garbage never run nor stuck, every process alive, and tracebacks counted.

    python bench/chaos.py                          # every scenario, 5,000 jobs each, 4 faults
    python bench/chaos.py --smoke                  # 300 jobs, 2 faults: the CI form
    python bench/chaos.py --scenarios kill-slot,bad-payloads --jobs 1000 --seed 7
    python bench/chaos.py --json                   # one JSON object per scenario, then a summary

Exit 1 if any check failed. A failed scenario keeps its temp dir (logs, the execution log)
and prints its path. Every process a scenario starts is stopped on the way out, Ctrl-C too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

import chaos_faults as faults
from chaos_checks import examine, tracebacks
from chaos_faults import KEYS, NS, POLL_S, TTL_S, ChaosFleet, Options, Trial, wait_for

from gpufleet.dispatcher.client.results import read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.connection import REDIS_DOWN, connect
from gpufleet.dispatcher.store.redis_server import RedisServer, SentinelGroup
from gpufleet.worker.chaos_tasks import LOG_ENV

TASK = "gpufleet.worker.chaos_tasks:record"
# Fast liveness, retries and failover (the integration tests' FAST_ENV), so faults heal in seconds.
ENV = {
    "GPUFLEET_HEARTBEAT_INTERVAL_S": "0.2",
    "GPUFLEET_HEARTBEAT_TTL_S": str(TTL_S),
    "GPUFLEET_RETRY_BASE_S": "0.05",
    "GPUFLEET_RETRY_CAP_S": "0.2",
    "GPUFLEET_LEASE_TTL_S": "1.0",
}


@dataclass(frozen=True)
class Scenario:
    name: str
    inject: Callable[[Trial], str]
    dispatchers: int = 1
    nodes: tuple[tuple[str, int], ...] = (("w0", 1), ("w1", 1), ("w2", 1), ("w3", 1))  # (node id, capacity)
    sentinel: bool = False
    env: tuple[tuple[str, str], ...] = ()  # over ENV, for this scenario's fleet
    cost_max_s: float | None = None  # over --cost-max: a batch long enough for all its faults


SCENARIOS = {s.name: s for s in (
    Scenario("kill-worker-new-id", faults.kill_worker_new_id),
    # A TTL of 3 s (README's default is 5): the restarted process is up before the old one's
    # liveness key expires, as under systemd or Kubernetes, so the node is never seen dead.
    Scenario("kill-worker-same-id", faults.kill_worker_same_id,
             env=(("GPUFLEET_HEARTBEAT_INTERVAL_S", "0.5"), ("GPUFLEET_HEARTBEAT_TTL_S", "3.0"))),
    Scenario("kill-dispatcher", faults.kill_dispatcher, dispatchers=2),
    # A TTL of 3 s too: each killed slot is replaced by a fresh interpreter whose imports take a
    # core for most of a second, and on a 2-core CI machine running the whole fleet that once
    # starved the node's heartbeat thread past a 1 s TTL (node s0 declared lost 0.7 s after the
    # second kill; ok 3 runs of 3 on a quiet machine). What is checked is that the node process
    # outlives its slots and loses no job, not how fast a starved machine beats.
    Scenario("kill-slot", faults.kill_slot, nodes=(("s0", 3), ("w1", 1)),
             env=(("GPUFLEET_HEARTBEAT_INTERVAL_S", "0.5"), ("GPUFLEET_HEARTBEAT_TTL_S", "3.0"))),
    Scenario("redis-restart-term", lambda t: faults.redis_restart(t, "TERM")),
    Scenario("redis-restart-kill", lambda t: faults.redis_restart(t, "KILL")),
    Scenario("sigstop-worker", faults.sigstop_worker),
    Scenario("bad-payloads", faults.bad_payloads),
    # Each failover holds the driver 10-20 s (election, then the old master rejoining as a
    # replica) while the batch barely moves: jobs of 50 ms on average keep it running that long.
    Scenario("sentinel-failover", faults.sentinel_failover, sentinel=True, cost_max_s=0.1),
)}  # fmt: skip


# --- running a scenario -------------------------------------------------------------------------


@contextmanager
def scenario_fleet(t: Trial, sc: Scenario) -> Iterator[None]:
    """Redis and the fleet up; on the way out (Ctrl-C too) every process stopped."""
    if sc.sentinel:
        t.server = SentinelGroup(service="gpufleet", appendonly=True).start()
    else:
        data_dir = Path(t.tmp, "redis")
        data_dir.mkdir()
        t.server = RedisServer(appendonly=True, data_dir=str(data_dir), args=["--appendfsync", "always"]).start()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # installed or not
    env = {**ENV, **dict(sc.env), LOG_ENV: str(t.chaos_log), "PYTHONPATH": path}
    t.ttl_s = float(env["GPUFLEET_HEARTBEAT_TTL_S"])
    t.log_dir.mkdir()
    t.fleet = ChaosFleet(t.server.url, namespace=NS, env=env, log_dir=str(t.log_dir))
    try:
        t.url = t.server.url
        t.r = connect(t.url, check=False)
        if sc.sentinel:
            t.fsync_master()
        t.redis_version = t.r.info("server")["redis_version"]
        for i in range(sc.dispatchers):
            t.fleet.start_dispatcher(name=f"d{i}")
            if i == 0 and not wait_for(lambda: t.r.exists(KEYS.dispatcher_lease), 20):
                raise RuntimeError("the first dispatcher took no lease within 20 s")
        for node_id, capacity in sc.nodes:
            t.start_worker(node_id, capacity)
        t.next_id, t.next_dispatcher = len(sc.nodes) - 1, sc.dispatchers - 1
        t.fleet.wait_for_nodes(t.r, [n for n, _ in sc.nodes], timeout_s=30)
        yield
    finally:
        t.fleet.shutdown()
        t.server.cleanup()


def run_batch(t: Trial, sc: Scenario) -> dict[str, Any]:
    """Submit the batch, inject the faults at random points of its progress, wait for the end."""
    o = t.opts
    cost_max_s = sc.cost_max_s or o.cost_max_s
    specs = [JobSpec(TASK, {"i": i, "cost": round(t.rng.uniform(0, cost_max_s), 4)}, client_id=str(i))
             for i in range(o.jobs)]  # fmt: skip
    at = sorted(int(t.rng.uniform(0.05, 0.6) * o.jobs) for _ in range(o.faults))
    started = time.monotonic()
    t.batch = Submitter(t.r, Settings(redis_url=t.url, namespace=NS)).submit(specs).batch_id
    t.job_ids = [j.decode() for j in t.r.lrange(KEYS.batch_jobs(t.batch), 0, -1)]
    last_ended, changed_at, how = -1, time.monotonic(), "done"
    while True:
        t.run_due()
        try:
            p = read_progress(t.r, KEYS, t.batch)
        except REDIS_DOWN:
            p = None
        if p is not None:
            ended = p.finished + p.failed + p.canceled
            if ended != last_ended:
                last_ended, changed_at = ended, time.monotonic()
            if at and ended >= at[0] and not p.done:
                at.pop(0)
                time.sleep(t.rng.uniform(0, 0.05))
                t.faults.append(sc.inject(t))
                log(f"  {t.name}: fault {len(t.faults)}: {t.faults[-1]}")
                changed_at = time.monotonic()
                continue
            if p.done:
                break
        if time.monotonic() - started > o.timeout_s:
            how = f"timeout after {o.timeout_s:g} s"
            break
        if time.monotonic() - changed_at > o.stall_s:
            how = f"stalled: no job ended for {o.stall_s:g} s"
            break
        time.sleep(POLL_S)
    while t.later:  # a fault's second half (SIGCONT) still to come: the fleet is checked whole
        time.sleep(max(0.0, min(due for due, _ in t.later) - time.monotonic()))
        t.run_due()
    return {"end": how, "run_s": time.monotonic() - started, "faults_planned": o.faults}


def run_scenario(sc: Scenario, opts: Options) -> dict[str, Any]:
    row: dict[str, Any] = {"scenario": sc.name, "seed": opts.seed}
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix=f"gpufleet-chaos-{sc.name}-")
    t = Trial(sc.name, opts, random.Random(f"{opts.seed}:{sc.name}"), tmp)
    try:
        with scenario_fleet(t, sc):
            row.update(run_batch(t, sc))
            examine(t, row)
    except Exception as e:  # the fleet would not start or run (or this script broke): a failed row, go on
        row.setdefault("problems", []).append(f"error: {type(e).__name__}: {e}")
    finally:
        row.update(faults=len(t.faults), fault_log=t.faults, seconds=round(time.monotonic() - started, 1),
                   redis_version=t.redis_version)  # fmt: skip
    row["ok"] = not row.get("problems")
    if t.fleet is not None:
        with suppress(OSError):
            row["tracebacks"], kinds = tracebacks(t.log_dir)
            row["traceback_kinds"] = dict(kinds.most_common(8))
    if row["ok"] and not opts.keep:
        subprocess.run(["rm", "-rf", tmp], check=False)
    else:
        row["kept"] = tmp
    return row


# --- output -------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


HEADER = ("| scenario | jobs | faults | finished / failed / canceled | lost | stuck | in two places "
          "| runs/job: max, ran 2x, 3x+ | tracebacks | processes alive | s | checks |")  # fmt: skip


def table_row(row: dict[str, Any]) -> str:
    if "jobs" not in row:
        return f"| {row['scenario']} | - | {row.get('faults', 0)} | - | - | - | - | - | {row.get('tracebacks', '-')} " \
               f"| - | {row.get('seconds', '-')} | FAIL |"  # fmt: skip
    runs = row["runs"]
    return (f"| {row['scenario']} | {row['jobs']:,} | {row['faults']}/{row['faults_planned']} "
            f"| {row['finished']:,} / {row['failed']} / {row['canceled']} | {row['lost']} | {row['stuck']} "
            f"| {row['two_places']} | {row['max_runs']}, {runs['2']}, {runs['3+']} | {row['tracebacks']} "
            f"| {row['alive']} | {row['seconds']} | {'ok' if row['ok'] else 'FAIL'} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="scenarios: " + ", ".join(SCENARIOS))  # fmt: skip
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="Comma-separated scenarios to run.")
    parser.add_argument("--jobs", "-n", type=int, default=None,
                        help="Jobs per scenario (default 5000; 300 with --smoke).")  # fmt: skip
    parser.add_argument("--faults", type=int, default=None, help="Faults per scenario (default 4; 2 with --smoke).")
    parser.add_argument("--seed", type=int, default=1, help="Seeds the fault moments, victims and job costs.")
    parser.add_argument("--timeout", type=float, default=None,
                        help="Seconds a batch may take (default 300; 90 with --smoke).")  # fmt: skip
    parser.add_argument("--stall", type=float, default=None,
                        help="End the wait when no job ended for this long (default 30; 15 with --smoke).")  # fmt: skip
    parser.add_argument("--settle", type=float, default=8.0, help="Seconds the fleet gets to clean up after the batch.")
    parser.add_argument("--cost-max", type=float, default=None,
                        help="Each job sleeps uniform(0, this) seconds (default 0.01; 0.02 with --smoke).")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="300 jobs and 2 faults per scenario: the CI form.")
    parser.add_argument("--strict", action="store_true", help="A traceback in a fleet process fails its scenario.")
    parser.add_argument("--keep", action="store_true",
                        help="Keep every scenario's temp dir (logs), not only the failed ones.")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="One JSON object per scenario, then a summary object.")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := [n for n in names if n not in SCENARIOS]:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")

    def pick(value: Any, full: Any, smoke: Any) -> Any:
        return value if value is not None else (smoke if args.smoke else full)

    opts = Options(jobs=pick(args.jobs, 5000, 300), faults=pick(args.faults, 4, 2), seed=args.seed,
                   timeout_s=pick(args.timeout, 300.0, 90.0), stall_s=pick(args.stall, 30.0, 15.0),
                   settle_s=args.settle, cost_max_s=pick(args.cost_max, 0.01, 0.02), strict=args.strict,
                   keep=args.keep)  # fmt: skip

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job starts with it ignored
        signal.signal(sig, interrupted)  # either way, the scenario's processes are stopped on the way out
    t0, rows = time.monotonic(), []
    try:
        for name in names:
            log(f"{name}: {opts.jobs} jobs, {opts.faults} faults, seed {opts.seed}")
            row = run_scenario(SCENARIOS[name], opts)
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
            for p in row.get("problems", []):
                log(f"  {name}: {p}")
            if row.get("kept"):
                log(f"  {name}: logs kept in {row['kept']}")
            log(f"  {name}: {'ok' if row['ok'] else 'FAIL'} in {row.get('seconds', 0)} s")
    except KeyboardInterrupt:
        log("interrupted: every process of the running scenario was stopped")
        return 130
    total_s = time.monotonic() - t0
    ok = all(r["ok"] for r in rows)
    if args.json:
        failed = [r["scenario"] for r in rows if not r["ok"]]
        print(json.dumps({"summary": {"ok": ok, "scenarios": len(rows), "failed": failed, "total_s": round(total_s, 1),
                                      "jobs": opts.jobs, "seed": opts.seed}}))  # fmt: skip
    else:
        versions = ", ".join(sorted({r["redis_version"] for r in rows if r.get("redis_version")}))
        print(f"\n{opts.jobs:,} jobs per scenario, {opts.faults} faults each, seed {opts.seed}; "
              f"redis-server {versions}; nproc {os.cpu_count()}; {total_s:.0f} s in all\n")  # fmt: skip
        print(HEADER)
        print("|" + "---|" * (HEADER.count(" | ") + 1))
        for row in rows:
            print(table_row(row))
        for row in rows:
            for kind, n in row.get("traceback_kinds", {}).items():
                print(f"  {row['scenario']}: traceback x{n}: {kind}")
            for g in row.get("garbage", []):
                print(f"  {row['scenario']}: garbage {g['kind']}: {g['outcome']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
