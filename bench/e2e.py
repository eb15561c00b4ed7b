"""End to end, no-op jobs: gpufleet against plain rq and Celery's solo pool (issue 6, target 1).

Per system and worker count (1 and 2 worker processes), N no-op jobs go from the client to a
finished state through real processes on one private redis-server (`RedisServer`, a free
loopback port, so the Redis on 6379 is never touched). The clock starts before the first job
is submitted and stops when the last one's result is readable by the client, the same point
for every system; jobs/s = N / wall. Every system stores its results. The workers (and
gpufleet's dispatcher) are started and ready before the clock starts, for every system.
(bench/peers.py is the same measurement against more peers, with CPU and round trips per job.)

- gpufleet: `Submitter.submit` of N `JobSpec("gpufleet.worker.tasks:echo", i)` (one batch) -> a real
  `gpufleet dispatcher` -> 1 or 2 real `gpufleet worker --probe sim` processes (capacity 1,
  started with `LocalFleet`); done when `read_progress(...).done`, polled every 10 ms.
- rq: `Queue.enqueue_many` of N `gpufleet.worker.tasks.echo` jobs (JSONSerializer), then 1 or 2 worker
  processes, each `SimpleWorker([queue]).work(burst=True)` (JSONSerializer): each process
  imports rq and connects before the clock starts, then blocks on a BLPOP "go" token that this
  script pushes right after enqueue_many returns; done when the queue's finished registry
  holds N jobs (ZCARD, polled every 10 ms: a job enters it in the transaction that stores its
  Result), not when the burst workers have exited (that comes after, off the clock).
- celery (skipped if celery is not importable, and with --smoke or --no-celery): a temporary
  app module with one `echo` task, Redis broker and Redis result backend (results stored, as
  Celery does once a backend is set) on the same server, db 1; 1 or 2 `celery -A mod worker
  --pool solo --concurrency 1 -Q q --without-gossip --without-mingle --without-heartbeat`
  processes (no events). A worker_ready signal INCRs a counter in db 1, so the script waits
  for every worker first. Jobs are sent with `apply_async` in a loop on one producer; done when
  every job's result key exists (EXISTS of 200 keys at a time, in submission order, polled
  every 10 ms).

Redis commands per job: `CONFIG RESETSTAT` before each timed trial, `INFO commandstats` when
its clock stops, minus what this script adds (the INFO/CONFIG calls, the polls and rq's go
tokens), divided by N. It counts everything the system sends meanwhile: submit, dispatcher
(snapshots, routing scripts, health loop), heartbeats, worker loops, result writes.
Each Lua script call counts once as EVALSHA (commands inside a script are counted as well by
Redis 6/7 under their own names; they are listed, not hidden).

Placement: this script, the redis-server and every dispatcher/worker process share one
machine with no CPU pinning (on the 2-vCPU VMs of bench/RESULTS.md: all on 2 vCPUs).

    python bench/e2e.py                   # N=5000, --runs 3, 1 and 2 workers, gpufleet / rq / celery
    python bench/e2e.py --smoke           # N=300, 1 run, no celery: a CI smoke run (< 30 s)
    python bench/e2e.py --json            # one JSON object per trial, then the summary
    python bench/e2e.py --profile-worker  # + cProfile (top 25, tottime) of one gpufleet and one rq worker,
                                          # 1-worker case
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

from peer_systems import KeysWaiter, PollWaiter, wait_all  # a sibling in bench/ (ruff files it as third-party)
from rq import Queue
from rq.serializers import JSONSerializer

from gpufleet.dispatcher.client.results import read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import LocalFleet, SimNode
from gpufleet.worker.tasks import echo

POLL_S = 0.01
WAIT_TIMEOUT_S = 300.0
SYSTEMS = ("gpufleet", "rq", "celery")

RQ_WORKER = textwrap.dedent(
    """
    import cProfile, pstats, sys
    from redis import Redis
    from rq import Queue, SimpleWorker
    from rq.serializers import JSONSerializer
    url, qname, profile = sys.argv[1], sys.argv[2], sys.argv[3]
    r = Redis.from_url(url)
    q = Queue(qname, connection=r, serializer=JSONSerializer)
    w = SimpleWorker([q], connection=r, serializer=JSONSerializer)
    import gpufleet.worker.tasks  # what a job's first run would import: not timed
    r.blpop(["bench:go"], 0)
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    w.work(burst=True, logging_level="WARNING")
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    """
)

CELERY_APP = textwrap.dedent(
    """
    from celery import Celery
    from celery.signals import worker_ready
    from redis import Redis

    URL = {url!r}
    app = Celery("bench_celery_app", broker=URL, backend=URL)
    app.conf.update(task_default_queue="q", broker_connection_retry_on_startup=True,
                    worker_hijack_root_logger=False, worker_redirect_stdouts=False)
    _r = Redis.from_url(URL)

    @app.task(name="bench.echo")
    def echo(value):
        return value

    @worker_ready.connect
    def _ready(**kwargs):
        _r.incr("bench:ready")
    """
)


# --- helpers ------------------------------------------------------------------------------------


def commandstats(r: Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in r.info("commandstats").items()}


def command_cost(r: Redis, n: int, minus: dict[str, int]) -> tuple[float, dict[str, float]]:
    """Commands per job since the last RESETSTAT, without this script's own (`minus`, INFO, CONFIG)."""
    stats = commandstats(r)
    for name in ("info", "config", "config|resetstat"):
        stats.pop(name, None)
    for name, count in minus.items():
        if name in stats:
            stats[name] = max(0, stats[name] - count)
    per_job = {k: v / n for k, v in sorted(stats.items(), key=lambda kv: -kv[1]) if v}
    return sum(stats.values()) / n, per_job


def stop_procs(procs: list[subprocess.Popen[bytes]], grace_s: float = 5.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def python_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


# --- the three systems ----------------------------------------------------------------------------


def run_gpufleet(r: Redis, url: str, n: int, workers: int, trial: str, profile_dir: str | None) -> dict[str, Any]:
    r.flushall()
    ns = f"e2e{trial}"
    keys, fleet = Keys(ns), LocalFleet(url, ns)
    nodes = [SimNode(f"node-{i}") for i in range(workers)]
    profiled: list[subprocess.Popen[bytes]] = []
    try:
        fleet.start_dispatcher()
        for i, node in enumerate(nodes):
            if profile_dir and i == 0:  # the same command LocalFleet runs, under cProfile
                out = os.path.join(profile_dir, "gpufleet_worker.prof")
                cmd = [sys.executable, "-m", "cProfile", "-o", out, "-m", "gpufleet.cli", "--redis-url", url,
                       "--namespace", ns, "--log-level", "WARNING", "worker", "--node-id", node.node_id,
                       "--probe", "sim", "--sim-speed", "1", "--capacity", "1"]  # fmt: skip
                profiled.append(subprocess.Popen(cmd, env=python_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                                                 start_new_session=True))  # fmt: skip
            else:
                fleet.start_worker(node)
        fleet.wait_for_nodes(r, [node.node_id for node in nodes])
        while not r.exists(keys.dispatcher_lease):
            time.sleep(0.02)
        specs = [JobSpec("gpufleet.worker.tasks:echo", i) for i in range(n)]
        submitter = Submitter(r, Settings(redis_url=url, namespace=ns))
        r.config_resetstat()
        start, polls = time.perf_counter(), 1
        batch = submitter.submit(specs).batch_id
        submit_s = time.perf_counter() - start
        while not (progress := read_progress(r, keys, batch)).done:
            polls += 1
            time.sleep(POLL_S)
        wall = time.perf_counter() - start
        per_job, by_cmd = command_cost(r, n, {"hgetall": polls})
    finally:
        fleet.stop()
        stop_procs(profiled, grace_s=15.0)
    ok = progress.finished == n
    return {"wall": wall, "submit_s": submit_s, "ok": ok, "cmds": per_job, "by_cmd": by_cmd}


def run_rq(r: Redis, url: str, n: int, workers: int, trial: str, profile_dir: str | None) -> dict[str, Any]:
    r.flushall()
    qname = f"e2e{trial}"
    queue = Queue(qname, connection=r, serializer=JSONSerializer)
    procs = []
    try:
        for i in range(workers):
            prof = os.path.join(profile_dir, "rq_worker.prof") if profile_dir and i == 0 else ""
            procs.append(subprocess.Popen([sys.executable, "-c", RQ_WORKER, url, qname, prof], env=python_env(),
                                          cwd=ROOT, start_new_session=True))  # fmt: skip
        while sum(c.get("cmd") == "blpop" for c in r.client_list()) < workers:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("an rq worker process exited before the start")
            time.sleep(0.02)
        data = [Queue.prepare_data(echo, args=(i,)) for i in range(n)]
        r.config_resetstat()
        start = time.perf_counter()
        queue.enqueue_many(data)
        submit_s = time.perf_counter() - start
        r.rpush("bench:go", *["go"] * workers)
        registry = queue.finished_job_registry.key
        waiter = PollWaiter("zcard", lambda: r.zcard(registry) >= n)
        wait_all(waiter, POLL_S, WAIT_TIMEOUT_S)
        wall = time.perf_counter() - start
        per_job, by_cmd = command_cost(r, n, {"rpush": 1, **waiter.sent})  # the go tokens, the polls
        for p in procs:  # burst workers: they exit once the queue is empty, off the clock
            p.wait(WAIT_TIMEOUT_S)
    finally:
        stop_procs(procs)
    finished = queue.finished_job_registry.count
    return {"wall": wall, "submit_s": submit_s, "ok": finished == n, "cmds": per_job, "by_cmd": by_cmd}


def run_celery(r: Redis, url: str, n: int, workers: int, trial: str, profile_dir: str | None) -> dict[str, Any]:
    r.flushall()
    url1 = url.rsplit("/", 1)[0] + "/1"
    r1 = Redis.from_url(url1)
    with tempfile.TemporaryDirectory(prefix="gpufleet-e2e-celery-") as tmp:
        Path(tmp, "bench_celery_app.py").write_text(CELERY_APP.format(url=url1))
        env = {**python_env(), "PYTHONPATH": tmp + os.pathsep + python_env()["PYTHONPATH"]}
        procs = []
        try:
            for i in range(workers):
                cmd = [sys.executable, "-m", "celery", "-A", "bench_celery_app", "worker", "--pool", "solo",
                       "--concurrency", "1", "-Q", "q", "-n", f"w{i}.{trial}@%h", "--loglevel", "WARNING",
                       "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
                log = open(Path(tmp, f"w{i}.log"), "wb")  # noqa: SIM115 (closed with the temp dir)
                procs.append(subprocess.Popen(cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))  # fmt: skip
            deadline = time.monotonic() + 60
            while int(r1.get("bench:ready") or 0) < workers:
                if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                    logs = "".join(p.read_text(errors="replace")[-2000:] for p in Path(tmp).glob("w*.log"))
                    raise RuntimeError(f"celery workers did not start:\n{logs}")
                time.sleep(0.05)
            sys.path.insert(0, tmp)
            try:
                sys.modules.pop("bench_celery_app", None)
                import bench_celery_app as mod  # type: ignore[import-not-found]
            finally:
                sys.path.remove(tmp)
            task = mod.echo
            with mod.app.connection_for_write() as conn, conn.Producer() as producer:
                conn.ensure_connection()
                r.config_resetstat()
                start = time.perf_counter()
                sent = [task.apply_async((i,), producer=producer) for i in range(n)]
                submit_s = time.perf_counter() - start
            waiter = KeysWaiter(r1, [mod.app.backend.get_key_for_task(result.id) for result in sent])
            wait_all(waiter, POLL_S, WAIT_TIMEOUT_S)
            wall = time.perf_counter() - start
            per_job, by_cmd = command_cost(r, n, dict(waiter.sent))
            mod.app.backend.result_consumer.stop()  # its pub/sub connection, subscribed to every task
        finally:
            stop_procs(procs)
            sys.modules.pop("bench_celery_app", None)
    return {"wall": wall, "submit_s": submit_s, "ok": True, "cmds": per_job, "by_cmd": by_cmd}


RUNNERS = {"gpufleet": run_gpufleet, "rq": run_rq, "celery": run_celery}


# --- main ---------------------------------------------------------------------------------------


def celery_available() -> bool:
    try:
        import celery  # noqa: F401
    except ImportError:
        return False
    return True


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def print_profile(path: str, title: str) -> None:
    import pstats

    if not os.path.exists(path):
        print(f"(no profile at {path})", file=sys.stderr)
        return
    print(f"\n--- cProfile: {title} (top 25 by tottime) ---", file=sys.stderr)
    pstats.Stats(path, stream=sys.stderr).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", "-n", type=int, default=5000, help="No-op jobs per trial (N).")
    parser.add_argument("--runs", type=int, default=3, help="Trials per system and worker count.")
    parser.add_argument("--workers", default="1,2", help="Worker process counts, comma-separated.")
    parser.add_argument("--no-celery", action="store_true", help="Leave Celery out.")
    parser.add_argument("--smoke", action="store_true", help="N=300, --runs 1, no Celery: a CI smoke run.")
    parser.add_argument("--json", action="store_true", help="One JSON line per trial, then the summary as JSON.")
    parser.add_argument("--profile-worker", action="store_true",
                        help="cProfile one gpufleet and one rq worker (first 1-worker trial); "
                             "top 25 on stderr.")  # fmt: skip
    args = parser.parse_args()
    if args.smoke:
        args.jobs, args.runs, args.no_celery = 300, 1, True
    systems = [s for s in SYSTEMS if s != "celery" or (not args.no_celery and celery_available())]
    if "celery" not in systems and not args.no_celery:
        print("celery is not installed: its rows are skipped (pip install -e '.[peers]')", file=sys.stderr)
    worker_counts = [int(w) for w in args.workers.split(",")]
    t0 = time.perf_counter()
    trials: list[dict[str, Any]] = []
    profile_dir = tempfile.mkdtemp(prefix="gpufleet-e2e-prof-") if args.profile_worker else None
    with RedisServer() as server:
        r = Redis.from_url(server.url)
        version = r.info("server")["redis_version"]
        for run in range(args.runs):
            for workers in worker_counts:
                for system in systems:  # the systems take turns, so drift in the machine hits all of them
                    prof = profile_dir if profile_dir and run == 0 and workers == 1 else None
                    row = RUNNERS[system](r, server.url, args.jobs, workers, f"{run}{workers}", prof)
                    row.update(system=system, workers=workers, run=run, jobs=args.jobs, rate=args.jobs / row["wall"])
                    trials.append(row)
                    if args.json:
                        print(json.dumps(row), flush=True)
                    else:
                        print(f"run {run} {system:8} workers={workers} {row['rate']:8,.0f} jobs/s  "
                              f"wall {row['wall']:.2f} s"
                              f"  submit {row['submit_s']:.2f} s  {row['cmds']:.1f} cmds/job"
                              f"{'' if row['ok'] else '  NOT ALL FINISHED'}", file=sys.stderr, flush=True)  # fmt: skip
    summary = summarize(trials, systems, worker_counts)
    total_s = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"summary": summary, "total_s": total_s, "redis_version": version, "nproc": os.cpu_count()}))
    else:
        print_table(summary, systems, worker_counts, args, version, total_s)
    if profile_dir:
        print_profile(os.path.join(profile_dir, "gpufleet_worker.prof"), "gpufleet worker, 1-worker trial")
        print_profile(os.path.join(profile_dir, "rq_worker.prof"), "rq SimpleWorker, 1-worker trial")
    if not all(t["ok"] for t in trials):
        sys.exit("some trial did not finish every job")


def summarize(trials: list[dict[str, Any]], systems: list[str], worker_counts: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for w in worker_counts:
        for s in systems:
            rows = [t for t in trials if t["system"] == s and t["workers"] == w]
            rates = [t["rate"] for t in rows]
            cmd_names: dict[str, float] = {}
            for t in rows:
                for k, v in t["by_cmd"].items():
                    cmd_names[k] = cmd_names.get(k, 0.0) + v / len(rows)
            out[f"{s}/{w}"] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
                               "cmds": statistics.median(t["cmds"] for t in rows),
                               "by_cmd": dict(sorted(cmd_names.items(), key=lambda kv: -kv[1]))}  # fmt: skip
        for peer in systems[1:]:
            ratios = []
            for run in sorted({t["run"] for t in trials}):
                g = next(t for t in trials if t["system"] == "gpufleet" and t["workers"] == w and t["run"] == run)
                p = next(t for t in trials if t["system"] == peer and t["workers"] == w and t["run"] == run)
                ratios.append(g["rate"] / p["rate"])
            out[f"gpufleet/{peer}/{w}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return out


def print_table(summary: dict[str, Any], systems: list[str], worker_counts: list[int], args: argparse.Namespace,
                version: str, total_s: float) -> None:  # fmt: skip
    print(f"{args.jobs:,} no-op jobs, {args.runs} run(s); redis-server {version}; nproc {os.cpu_count()}; "
          f"all processes on this machine, unpinned; {total_s:.0f} s in all")  # fmt: skip
    print("\n| system | workers | median jobs/s | spread (min - max) | Redis commands per job |")
    print("|---|---|---|---|---|")
    for w in worker_counts:
        for s in systems:
            x = summary[f"{s}/{w}"]
            print(f"| {s} | {w} | {fmt_rate(x['median'])} | {fmt_rate(x['min'])} - {fmt_rate(x['max'])} "
                  f"| {x['cmds']:.1f} |")  # fmt: skip
        for peer in systems[1:]:
            x = summary[f"gpufleet/{peer}/{w}"]
            print(f"| ratio gpufleet / {peer} | {w} | {x['median']:.2f} | {x['min']:.2f} - {x['max']:.2f} | |")
    print("\nRedis commands per job by name (mean over runs, >= 0.05 per job):")
    for w in worker_counts:
        for s in systems:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in summary[f"{s}/{w}"]["by_cmd"].items() if v >= 0.05)
            print(f"  {s} x{w}: {parts}")


if __name__ == "__main__":
    main()
