"""The web dashboard on a big fleet (issue 18): 1,000 nodes and a 1,000,000-job batch.

A private redis-server (`RedisServer`) holds `--nodes` nodes that sent one heartbeat each (what
`worker.heartbeat` writes, sim probe, idle) and one batch of `--jobs` echo jobs waiting
(`Submitter.enqueue`, in constant memory). No dispatcher or worker runs. A real `gpufleet web`
process serves them (`--refresh 0.2`, so nearly every fleet request reads Redis again), and each
request is timed `--reps` times over loopback HTTP (httpx), from sending it to the last byte:
the page shells, the fleet API, the batches list, a batch's first and last pages by index, a
filtered page (a status no job has: the worst case, the whole SCAN_LIMIT looked through), a
search by the client id of a job past the first chunk, and one job. Memory: the web process's
resident set (VmRSS) and its peak (VmHWM) from /proc after all requests, and redis-server's
used_memory.

    python bench/web_scale.py                       # 1,000 nodes, 1,000,000 jobs, 5 reps
    python bench/web_scale.py --smoke               # 100 nodes, 20,000 jobs, 2 reps
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dispatch_rate import write_heartbeats

from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.observe.web.data import PAGE_SIZE
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import GPUFLEET

FUNC = "gpufleet.worker.tasks:echo"


def memory_mib(pid: int) -> dict[str, float]:
    """A process's resident set now and at its peak, from /proc/PID/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: round(int(fields[name].split()[0]) / 1024, 1) for name in ("VmRSS", "VmHWM")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="100 nodes, 20,000 jobs, 2 reps.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.nodes, args.jobs, args.reps = 100, 20_000, 2
    with RedisServer() as server:
        r = Redis.from_url(server.url)
        settings = Settings(redis_url=server.url, namespace="webscale", heartbeat_ttl_s=3600.0)
        keys = Keys(settings.namespace)
        write_heartbeats(r, keys, [f"node-{i:04d}" for i in range(args.nodes)], ttl_s=settings.heartbeat_ttl_s)
        started = time.perf_counter()
        submitter = Submitter(r, settings)
        batch = submitter.start_batch("big", args.jobs, FUNC)
        submitter.enqueue((JobSpec(FUNC, {"i": i}, client_id=f"c{i}") for i in range(args.jobs)), batch)
        submit_s = time.perf_counter() - started
        port = free_port()
        web = subprocess.Popen([*GPUFLEET, "--redis-url", server.url, "--namespace", settings.namespace, "web",
                                "--port", str(port), "--refresh", "0.2"], stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            rows, memory = time_requests(r, keys, batch, args, f"http://127.0.0.1:{port}", web.pid)
        finally:
            web.terminate()
            web.wait(10)
        result = {"nodes": args.nodes, "jobs": args.jobs, "reps": args.reps, "submit_s": round(submit_s, 1),
                  "load_1m": os.getloadavg()[0], "requests": rows, "web_memory_mib": memory,
                  "redis_used_memory_mib": round(int(r.info("memory")["used_memory"]) / 2**20, 1)}  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        m = result["web_memory_mib"]
        print(f"{args.nodes} nodes, {args.jobs:,} jobs (submitted in {result['submit_s']} s); the web process: "
              f"{m['VmRSS']} MiB resident after every request, {m['VmHWM']} MiB at its peak; redis-server "
              f"{result['redis_used_memory_mib']} MiB")  # fmt: skip
    return 0


def time_requests(r: Redis, keys: Keys, batch: str, args: argparse.Namespace, base: str,
                  pid: int) -> tuple[dict[str, Any], dict[str, float]]:  # fmt: skip
    """Each request `args.reps` times against the web process at `base`; its memory after."""
    job_id = r.lindex(keys.batch_jobs(batch), args.jobs // 2).decode()  # type: ignore[union-attr]
    last_page = (args.jobs - 1) // PAGE_SIZE
    requests = {
        "fleet page (HTML shell)": "/",
        "/api/fleet": "/api/fleet",
        "/api/batches": "/api/batches",
        "batch page (HTML shell)": f"/batches/{batch}",
        "/api/batches/B, first page": f"/api/batches/{batch}",
        "/api/batches/B, last page": f"/api/batches/{batch}?page={last_page}",
        "/api/batches/B?status=failed (none: SCAN_LIMIT looked through)": f"/api/batches/{batch}?status=failed",
        "/api/batches/B?q=c5000": f"/api/batches/{batch}?q=c5000",
        "/api/jobs/ID": f"/api/jobs/{job_id}",
    }
    rows: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=60) as client:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.get("/api/fleet")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for name, url in requests.items():
            times, size = [], 0
            for _ in range(args.reps):
                time.sleep(0.25)  # past the fleet's refresh: each fleet request reads Redis again
                t0 = time.perf_counter()
                reply = client.get(url)
                times.append((time.perf_counter() - t0) * 1000)
                assert reply.status_code == 200, (url, reply.status_code, reply.text[:200])
                size = len(reply.content)
            rows[name] = {"median_ms": round(statistics.median(times), 2), "min_ms": round(min(times), 2),
                          "max_ms": round(max(times), 2), "bytes": size}  # fmt: skip
            print(f"{name:64} median {rows[name]['median_ms']:8.1f} ms (min {min(times):.1f} - max {max(times):.1f})"
                  f"  {size:,} bytes", file=sys.stderr, flush=True)  # fmt: skip
    return rows, memory_mib(pid)


if __name__ == "__main__":
    sys.exit(main())
