"""Submit rate: jobs/s from a JSON Lines job file into Redis, gpufleet against plain rq.

Measures the whole of `dispatcher.client.submit_file` (validation pass + enqueue pass) for a
file of N `{"input": {"i": k}}` lines (func gpufleet.worker.tasks:echo), against a private loopback
redis-server (never the one on 6379). As the reference, the same run times plain rq: read
the same file, `Queue.prepare_data` per line, one `Queue.enqueue_many` (JSON serializer).
The DB is flushed before every timed submit; gpufleet and rq alternate, so drift hits both.
Also counts Redis commands per job (INFO commandstats before/after one submit of each), and
measures peak RSS: one fresh process per kind and file size does one submit and reports its
`ru_maxrss` before (imports, connection) and after.

    python bench/submit_rate.py [--jobs 20000] [--runs 5] [--rss-sizes 20000,100000] [--json] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from gpufleet.dispatcher.client.submit import submit_file
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.connection import connect
from gpufleet.dispatcher.store.redis_server import RedisServer

FUNC = "gpufleet.worker.tasks:echo"


def write_job_file(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"input": {"i": i}}) + "\n")


def gpufleet_submit(r: Redis, settings: Settings, path: Path) -> int:
    return submit_file(r, settings, str(path), default_func=FUNC).count


def rq_submit(r: Redis, path: Path) -> int:
    """Plain rq: the same lines, one prepare_data each, one enqueue_many (one MULTI/EXEC)."""
    queue = Queue("bench", connection=r, serializer=JSONSerializer)
    with path.open("rb") as f:
        datas = [Queue.prepare_data("gpufleet.worker.tasks.echo", args=[json.loads(line)["input"]]) for line in f]
    return len(queue.enqueue_many(datas))


def commandstats(r: Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in r.info("commandstats").items()}


def commands_per_job(r: Redis, submit: Callable[[], int]) -> dict[str, float]:
    """Redis commands per job of one submit, by command (the INFO call itself excluded)."""
    r.flushdb()
    before = commandstats(r)
    n = submit()
    after = commandstats(r)
    diff = {c: after[c] - before.get(c, 0) for c in after if c != "info"}
    per_job = {c: round(d / n, 4) for c, d in sorted(diff.items(), key=lambda kv: -kv[1]) if d}
    return {"total": round(sum(diff.values()) / n, 4), **per_job}


def timed_rate(r: Redis, submit: Callable[[], int]) -> float:
    r.flushdb()
    t0 = time.perf_counter()
    n = submit()
    return n / (time.perf_counter() - t0)


def summary(rates: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(rates)), "min": round(min(rates)), "max": round(max(rates))}


def submitters(r: Redis, url: str, path: Path) -> dict[str, Callable[[], int]]:
    return {"gpufleet": partial(gpufleet_submit, r, Settings(redis_url=url), path), "rq": partial(rq_submit, r, path)}


def peak_rss_mib() -> float:
    """This process's peak RSS. /proc's VmHWM where there is one: Linux carries getrusage's
    ru_maxrss over exec, so a child of this (large) benchmark process would report our peak."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def peak_rss_child(kind: str, url: str, path: str) -> None:
    """In a fresh process: one submit of `kind`; prints peak RSS (MiB) before and after it."""
    r = connect(url)
    r.flushdb()
    before = peak_rss_mib()
    n = submitters(r, url, Path(path))[kind]()
    print(json.dumps({"jobs": n, "before_mib": round(before, 1), "peak_mib": round(peak_rss_mib(), 1)}))


def peak_rss(url: str, tmp: Path, sizes: list[int]) -> dict[str, dict[int, dict[str, float]]]:
    """Peak RSS of one submit per kind and file size, each in its own process."""
    result: dict[str, dict[int, dict[str, float]]] = {"gpufleet": {}, "rq": {}}
    for n in sizes:
        path = tmp / f"rss-{n}.jsonl"
        write_job_file(path, n)
        for kind, by_size in result.items():
            out = subprocess.run([sys.executable, __file__, "--rss-child", kind, url, str(path)],
                                 check=True, capture_output=True, text=True).stdout  # fmt: skip
            child = json.loads(out)
            assert child["jobs"] == n, child
            growth = round(child["peak_mib"] - child["before_mib"], 1)
            by_size[n] = {"before_mib": child["before_mib"], "peak_mib": child["peak_mib"], "growth_mib": growth}
        path.unlink()
    return result


def measure(jobs: int, runs: int, profile: bool, rss_sizes: list[int]) -> tuple[dict[str, Any], pstats.Stats | None]:
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as server:
        path = Path(tmp) / "jobs.jsonl"
        write_job_file(path, jobs)
        r = connect(server.url)
        kinds = submitters(r, server.url, path)
        rates: dict[str, list[float]] = {name: [] for name in kinds}
        for submit in kinds.values():
            timed_rate(r, submit)  # warm-up: imports, lru caches, connection
        for _ in range(runs):
            for name, submit in kinds.items():
                rates[name].append(timed_rate(r, submit))
        result = {
            "jobs": jobs, "runs": runs, "redis_version": r.info("server")["redis_version"],
            "python": sys.version.split()[0],
            "jobs_per_s": {name: summary(v) for name, v in rates.items()},
            "commands_per_job": {name: commands_per_job(r, submit) for name, submit in kinds.items()},
        }  # fmt: skip
        ratio = statistics.median(rates["gpufleet"]) / statistics.median(rates["rq"])
        result["ratio_gpufleet_over_rq"] = round(ratio, 3)
        result["rates"] = {name: [round(x) for x in v] for name, v in rates.items()}
        if rss_sizes:
            result["peak_rss"] = peak_rss(server.url, Path(tmp), rss_sizes)
        stats = None
        if profile:
            r.flushdb()
            with cProfile.Profile() as prof:
                kinds["gpufleet"]()
            stats = pstats.Stats(prof, stream=sys.stderr)
        r.close()
    return result, stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Submit rate: gpufleet submit_file against plain rq enqueue_many.")
    ap.add_argument("--jobs", type=int, default=20000, help="Lines in the job file.")
    ap.add_argument("--runs", type=int, default=5, help="Timed submits of each kind.")
    ap.add_argument("--json", action="store_true", help="Print one JSON object instead of text.")
    ap.add_argument("--profile", action="store_true",
                    help="Also cProfile one gpufleet submit (top 15 by own time, to stderr).")  # fmt: skip
    ap.add_argument("--rss-sizes", default="20000,100000",
                    help="File sizes (lines, comma-separated) to measure peak RSS at; '' to skip.")  # fmt: skip
    ap.add_argument("--rss-child", nargs=3, metavar=("KIND", "URL", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        peak_rss_child(*args.rss_child)
        return 0
    rss_sizes = [int(n) for n in args.rss_sizes.split(",") if n.strip()]
    result, stats = measure(args.jobs, args.runs, args.profile, rss_sizes)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.jobs} jobs x {args.runs} runs, redis {result['redis_version']}, Python {result['python']}")
        for name, s in result["jobs_per_s"].items():
            cmds = result["commands_per_job"][name]
            top = ", ".join(f"{c} {v:.2f}" for c, v in list(cmds.items())[1:6])
            print(f"{name:9} median {s['median']:6.0f} jobs/s (min {s['min']:.0f} - max {s['max']:.0f}); "
                  f"{cmds['total']:.2f} Redis commands/job: {top}")  # fmt: skip
        print(f"ratio gpufleet/rq (medians): {result['ratio_gpufleet_over_rq']:.2f}")
        for name, by_size in result.get("peak_rss", {}).items():
            sizes = "; ".join(f"{n} lines {v['peak_mib']:.1f} MiB (+{v['growth_mib']:.1f} during the submit)"
                              for n, v in by_size.items())  # fmt: skip
            print(f"{name:9} peak RSS: {sizes}")
    if stats:
        stats.sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
