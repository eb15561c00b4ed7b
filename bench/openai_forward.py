"""OpenAI requests to a real server: gpufleet's forwarder against the ceiling (issue 14).

The server: `transformers serve --continuous-batching` on the tiny random Llama
(deploy/servers/transformers-serve.sh, from the venv and model deploy/servers/install.sh builds
under $GPUFLEET_SERVER_VENVS), on a free loopback port, started and warmed up before any clock.

Per concurrency C (1, 8, 32, 64), N chat completions (`max_tokens` small, a different prompt
each) by two paths, which take turns in each run (the order flips every run), so drift in the
machine hits both:

- direct (the ceiling): this process sends them from C lanes, each sending its next request as
  soon as its last was answered, over httpx.AsyncClient (the HTTP client the forwarder uses),
  keep-alive. Clock: first send to last answer. Latency: send to answer.
- forwarder: the same N requests submitted as one batch of OpenAI jobs (what `gpufleet submit
  --format openai` enqueues) to a private redis-server, routed by a dispatcher to one forwarder
  worker (`gpufleet worker --openai-url ... --concurrency C`, started for this C and warmed up
  with C requests). Clock: just before the submit to the moment this process sees the batch
  done (every result stored in Redis, readable by `gpufleet results`; polled every 2 ms).
  Latency: the job's started_at to ended_at (rq's stamps: taken and started, the request sent,
  the response recorded), so queueing behind the C in flight is left out, as for direct.

requests/s = N / wall; p50 and p99 nearest rank; fraction = forwarder requests/s over direct
requests/s of the same run and C; overhead = (forwarder wall - direct wall) / N, per request.
CPU per request: the server's, and the sender's (direct: this client; forwarder: gpufleet's
worker tree, dispatcher and redis-server, not this process's polling): figures that depend
less on how busy the machine is. Medians over
--runs; every answer must be a 200 with choices, or the run fails.

Placement: this script, the server, redis-server, the dispatcher and the forwarder share the
machine, no pinning (nproc and the load average are printed).

    python bench/openai_forward.py             # N=256 per concurrency, --runs 3
    python bench/openai_forward.py --smoke     # N=64, 1 run: a CI smoke run (~40 s after the server is up)
    python bench/openai_forward.py --json      # one JSON object per trial, then the summary
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from real_policies import iso_epoch_s, redis_cpu_s, session_cpu_s

from gpufleet.cli.render import percentile
from gpufleet.dispatcher.client.openai_batch import DEFAULT_RETRIES, FORWARD_FUNC
from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.routing.models import OPENAI, JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer, free_port
from gpufleet.worker.fleet import LocalFleet, SimNode

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "deploy" / "servers" / "transformers-serve.sh"
CONCURRENCIES = (1, 8, 32, 64)
NS = "bench-openai"
DONE_POLL_S = 0.002
PATHS = ("direct", "forwarder")


@dataclass(frozen=True)
class Figures:
    """One path at one concurrency, one run."""

    path: str
    concurrency: int
    requests: int
    wall_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    completion_tokens: float  # mean per request, from the answers' usage
    server_cpu_pct: float  # the server's CPU time over the wall time (100 = one core)
    server_cpu_ms: float  # the server's CPU time per request
    sender_cpu_ms: float  # per request, what sends: direct, this client; forwarder, worker tree + dispatcher + redis


def chat_request(model: str, i: int, max_tokens: int) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": f"request {i}: hello world"}],
            "max_tokens": max_tokens}  # fmt: skip


async def send_all(base_url: str, model: str, concurrency: int, n: int, max_tokens: int) -> tuple[list[float], float]:
    """Send n chat completions from `concurrency` lanes; (latencies in s, mean completion tokens)."""
    todo = iter(range(n))
    latencies: list[float] = []
    tokens: list[int] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def lane(http: httpx.AsyncClient) -> None:
        for i in todo:
            t = time.perf_counter()
            response = await http.post("/chat/completions", json=chat_request(model, i, max_tokens), timeout=120)
            latencies.append(time.perf_counter() - t)
            body = response.json()
            check_answer(i, response.status_code, body)
            tokens.append(body["usage"]["completion_tokens"])

    async with httpx.AsyncClient(base_url=base_url, limits=limits) as http:
        await asyncio.gather(*(lane(http) for _ in range(concurrency)))
    return latencies, statistics.mean(tokens)


def check_answer(i: int, status: int, body: Any) -> None:
    if status != 200 or not isinstance(body, dict) or not body.get("choices"):
        raise SystemExit(f"request {i}: {status} {str(body)[:500]}")


def figures(path: str, c: int, n: int, wall: float, latencies: list[float], tokens: float, server_cpu: float,
            sender_cpu: float) -> Figures:  # fmt: skip
    latencies.sort()
    return Figures(path, c, n, wall, n / wall, percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000,
                   tokens, 100 * server_cpu / wall, 1000 * server_cpu / n, 1000 * sender_cpu / n)  # fmt: skip


# --- the paths --------------------------------------------------------------------------------


def direct(base_url: str, model: str, c: int, n: int, max_tokens: int, server_pid: int) -> Figures:
    """The ceiling: this process straight to the server."""
    server_cpu, client_cpu = session_cpu_s(server_pid), time.process_time()
    started = time.perf_counter()
    latencies, tokens = asyncio.run(send_all(base_url, model, c, n, max_tokens))
    wall = time.perf_counter() - started
    return figures("direct", c, n, wall, latencies, tokens, session_cpu_s(server_pid) - server_cpu,
                   time.process_time() - client_cpu)  # fmt: skip


@dataclass
class Forwarding:
    """A private redis-server and a dispatcher; one forwarder worker per concurrency."""

    fleet: LocalFleet
    redis_server: RedisServer
    base_url: str
    model: str

    @property
    def r(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url)

    def start_forwarder(self, node_id: str, c: int, max_tokens: int) -> None:
        """A forwarder of concurrency `c`, alive and warmed up (c requests through it, untimed)."""
        self.fleet.start_worker(SimNode(node_id), "--openai-url", self.base_url, "--concurrency", str(c))
        self.fleet.wait_for_nodes(self.r, [node_id])
        self.run_batch(c, max_tokens)

    def run_batch(self, n: int, max_tokens: int) -> tuple[float, list[dict[str, Any]]]:
        """Submit n requests as one batch and wait until it is done: (wall s, its records)."""
        r, keys = self.r, Keys(NS)
        specs = [JobSpec(FORWARD_FUNC, {"method": "POST", "url": "/v1/chat/completions",
                                        "body": chat_request(self.model, i, max_tokens)},
                         client_id=f"r-{i}", model=self.model, backend=OPENAI, retries=DEFAULT_RETRIES)
                 for i in range(n)]  # fmt: skip
        submitter = Submitter(r, Settings(redis_url=self.redis_server.url, namespace=NS))
        started = time.perf_counter()
        batch = submitter.submit(specs).batch_id
        deadline = started + 600
        while not read_progress(r, keys, batch).done:
            if time.perf_counter() > deadline:
                raise SystemExit(f"batch {batch} did not end within 600 s")
            time.sleep(DONE_POLL_S)
        wall = time.perf_counter() - started
        return wall, list(iter_results(r, keys, batch))

    def measure(self, node_id: str, c: int, n: int, max_tokens: int, server_pid: int) -> Figures:
        leaders = [self.fleet.procs[node_id].pid, self.fleet.procs["dispatcher"].pid]
        before = [session_cpu_s(pid) for pid in leaders] + [redis_cpu_s(self.r)]
        server_cpu = session_cpu_s(server_pid)
        wall, records = self.run_batch(n, max_tokens)
        server_cpu = session_cpu_s(server_pid) - server_cpu
        after = [session_cpu_s(pid) for pid in leaders] + [redis_cpu_s(self.r)]
        latencies, tokens = [], []
        for i, rec in enumerate(records):
            result = rec.get("result") or {}
            check_answer(i, result.get("status_code", 0) if rec["status"] == "finished" else 0,
                         result.get("body") if rec["status"] == "finished" else rec)  # fmt: skip
            latencies.append(iso_epoch_s(rec["ended_at"]) - iso_epoch_s(rec["started_at"]))
            tokens.append(result["body"]["usage"]["completion_tokens"])
        return figures("forwarder", c, n, wall, latencies, statistics.mean(tokens), server_cpu,
                       sum(after) - sum(before))  # fmt: skip


# --- the server ---------------------------------------------------------------------------------


def start_server(timeout_s: float = 90.0) -> tuple[subprocess.Popen[bytes], str, str, str]:
    """transformers serve on a free port: (process, base URL, model id, log path), once /v1/models
    lists the model. bench/ does not import tests/, so this is its own copy of what
    tests/openai_servers.py does; the server's flags live in deploy/servers/transformers-serve.sh."""
    venvs = Path(os.environ.get("GPUFLEET_SERVER_VENVS") or Path.home() / ".cache" / "gpufleet-ci" / "servers")
    model = str(venvs / "tiny-llama")
    if not (venvs / "venv-tf" / "bin" / "transformers").exists() or not Path(model, "config.json").exists():
        sys.exit(f"no transformers serve or tiny-llama under {venvs}: run deploy/servers/install.sh")
    port = free_port()
    log_fd, log_path = tempfile.mkstemp(prefix="gpufleet-bench-tf-", suffix=".log")
    proc = subprocess.Popen([str(SERVE), str(port)], stdin=subprocess.DEVNULL, stdout=log_fd,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    os.close(log_fd)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as resp:
                if model in [m["id"] for m in json.load(resp)["data"]]:
                    return proc, base_url, model, log_path
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            sys.exit(f"transformers serve did not answer on port {port}:\n{Path(log_path).read_text()[-3000:]}")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- main ---------------------------------------------------------------------------------------


def summarize(trials: list[Figures]) -> dict[str, dict[str, float]]:
    """Per path/concurrency, the median of each figure over the runs; per concurrency, the
    median over runs of the forwarder's fraction of the ceiling and its overhead per request."""
    out: dict[str, dict[str, float]] = {}
    for key in sorted({(t.path, t.concurrency) for t in trials}, key=lambda k: (k[1], PATHS.index(k[0]))):
        rows = [asdict(t) for t in trials if (t.path, t.concurrency) == key]
        out[f"{key[0]}/{key[1]}"] = {f: statistics.median(r[f] for r in rows)
                                     for f in rows[0] if f not in ("path", "concurrency", "requests")}  # fmt: skip
        out[f"{key[0]}/{key[1]}"]["runs"] = len(rows)
    for c in sorted({t.concurrency for t in trials}):
        pairs = list(zip([t for t in trials if (t.path, t.concurrency) == ("direct", c)],
                         [t for t in trials if (t.path, t.concurrency) == ("forwarder", c)]))  # fmt: skip
        if pairs:
            fractions = [f.requests_per_s / d.requests_per_s for d, f in pairs]
            row = out[f"forwarder/{c}"]
            row["fraction_of_ceiling"] = statistics.median(fractions)
            row["fraction_min"], row["fraction_max"] = min(fractions), max(fractions)
            row["overhead_ms"] = statistics.median(1000 * (f.wall_s - d.wall_s) / f.requests for d, f in pairs)
    return out


def print_table(summary: dict[str, dict[str, float]], args: argparse.Namespace, total_s: float) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.requests} chat completions per concurrency and path, max_tokens {args.max_tokens}, {args.runs} "
          f"run(s), medians; transformers serve --continuous-batching, tiny random Llama; nproc {os.cpu_count()}, "
          f"load average after {load}; {total_s:.0f} s in all")  # fmt: skip
    print("\n| path | C | requests/s | of ceiling (min-max) | overhead ms/request | p50 ms | p99 ms "
          "| server CPU ms/request | sender CPU ms/request |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, x in summary.items():
        path, c = key.split("/")
        share = (f"{x['fraction_of_ceiling']:.1%} ({x['fraction_min']:.0%}-{x['fraction_max']:.0%})"
                 if "fraction_of_ceiling" in x else "")  # fmt: skip
        overhead = f"{x['overhead_ms']:.2f}" if "overhead_ms" in x else ""
        print(f"| {path} | {c} | {x['requests_per_s']:.1f} | {share} | {overhead} | {x['p50_ms']:.1f} "
              f"| {x['p99_ms']:.1f} | {x['server_cpu_ms']:.1f} | {x['sender_cpu_ms']:.2f} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=256, help="Requests per concurrency and path, per run.")
    ap.add_argument("--runs", type=int, default=3, help="Runs; each figure is the median over them.")
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCIES)),
                    help="Comma-separated numbers of requests in flight.")  # fmt: skip
    ap.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each chat completion.")
    ap.add_argument("--smoke", action="store_true", help="64 requests, 1 run: a short check that prints figures.")
    ap.add_argument("--json", action="store_true", help="One JSON line per trial, then the summary as JSON.")
    args = ap.parse_args()
    if args.smoke:
        args.requests, args.runs = 64, 1
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    t0 = time.perf_counter()
    proc, base_url, model, log_path = start_server()
    up_s = time.perf_counter() - t0
    trials: list[Figures] = []
    try:
        with RedisServer() as server:
            fleet = LocalFleet(server.url, namespace=NS)
            fleet.start_dispatcher()
            forwarding = Forwarding(fleet, server, base_url, model)
            # warm-up, not timed: the first batches of continuous batching set up its cache
            direct(base_url, model, max(concurrencies), max(concurrencies), args.max_tokens, proc.pid)
            try:
                for run in range(args.runs):
                    for c in concurrencies:
                        node_id = f"fw-c{c}-run{run}"
                        forwarding.start_forwarder(node_id, c, args.max_tokens)
                        order = PATHS if run % 2 == 0 else PATHS[::-1]
                        for path in order:
                            f = (direct(base_url, model, c, args.requests, args.max_tokens, proc.pid)
                                 if path == "direct" else
                                 forwarding.measure(node_id, c, args.requests, args.max_tokens, proc.pid))  # fmt: skip
                            trials.append(f)
                            if args.json:
                                print(json.dumps({"run": run, **asdict(f)}), flush=True)
                            else:
                                print(f"run {run} {path:9} c={c:<3} {f.requests_per_s:7.1f} req/s  p50 {f.p50_ms:6.1f}"
                                      f" ms  p99 {f.p99_ms:6.1f} ms  server CPU {f.server_cpu_ms:5.1f} ms/req  "
                                      f"sender CPU {f.sender_cpu_ms:5.2f} ms/req", file=sys.stderr,
                                      flush=True)  # fmt: skip
                        fleet.stop(node_id)
            finally:
                fleet.stop()
    finally:
        stop_server(proc)
        Path(log_path).unlink(missing_ok=True)
    summary = summarize(trials)
    total_s = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"summary": summary, "server_up_s": up_s, "total_s": total_s, "nproc": os.cpu_count(),
                          "loadavg": os.getloadavg(), "max_tokens": args.max_tokens,
                          "requests": args.requests}))  # fmt: skip
    else:
        print(f"server answered {up_s:.1f} s after start", file=sys.stderr)
        print_table(summary, args, total_s)


if __name__ == "__main__":
    main()
