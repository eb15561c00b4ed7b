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

With `--browser`, headless Chromium (Selenium, Debian's chromium and chromium-driver) also
opens the fleet page: the time from navigation to every node's row drawn, and how long the
page's script takes to draw one refresh (its fleet renderer timed in the page, 5 refreshes).

    python bench/web_scale.py                       # 1,000 nodes, 1,000,000 jobs, 5 reps
    python bench/web_scale.py --browser             # and the fleet page drawn in headless Chromium
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
    ap.add_argument("--browser", action="store_true", help="Also time the fleet page in headless Chromium.")
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
            drawn = time_browser(f"http://127.0.0.1:{port}", args.nodes) if args.browser else None
        finally:
            web.terminate()
            web.wait(10)
        result = {"nodes": args.nodes, "jobs": args.jobs, "reps": args.reps, "submit_s": round(submit_s, 1),
                  "load_1m": os.getloadavg()[0], "requests": rows, "web_memory_mib": memory, "browser": drawn,
                  "redis_used_memory_mib": round(int(r.info("memory")["used_memory"]) / 2**20, 1)}  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        m = result["web_memory_mib"]
        print(f"{args.nodes} nodes, {args.jobs:,} jobs (submitted in {result['submit_s']} s); the web process: "
              f"{m['VmRSS']} MiB resident after every request, {m['VmHWM']} MiB at its peak; redis-server "
              f"{result['redis_used_memory_mib']} MiB")  # fmt: skip
    return 0


# Wraps the page's fleet renderer (app.js: the `renderers` table) to time each call in the page.
TIME_RENDERS = """
const draw = renderers.fleet;
window.gpufleetRenders = [];
renderers.fleet = (d) => { const t = performance.now(); draw(d); window.gpufleetRenders.push(performance.now() - t); };
"""


def time_browser(base: str, nodes: int) -> dict[str, float]:
    """The fleet page in headless Chromium: ms from navigation to all `nodes` rows drawn, and
    the median ms the page's script takes to draw one refresh."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)
    try:
        driver.get(base + "/")
        deadline = time.monotonic() + 60
        while driver.execute_script("return document.querySelectorAll('tr.node').length") < nodes:
            if time.monotonic() > deadline:
                raise RuntimeError("the fleet page did not draw every node within 60 s")
            time.sleep(0.05)
        first_ms = float(driver.execute_script("return performance.now()"))
        driver.execute_script(TIME_RENDERS)
        while len(driver.execute_script("return window.gpufleetRenders")) < 5:
            if time.monotonic() > deadline + 60:
                raise RuntimeError("the fleet page did not refresh 5 times")
            time.sleep(0.1)
        renders = [float(x) for x in driver.execute_script("return window.gpufleetRenders")]
    finally:
        driver.quit()
    result = {"first_draw_ms": round(first_ms, 1), "render_median_ms": round(statistics.median(renders), 1),
              "render_max_ms": round(max(renders), 1)}  # fmt: skip
    print(f"fleet page in Chromium: {nodes} rows drawn {result['first_draw_ms']} ms after navigation; a refresh "
          f"draws in {result['render_median_ms']} ms (max {result['render_max_ms']})", file=sys.stderr, flush=True)
    return result


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
