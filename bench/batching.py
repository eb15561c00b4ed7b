"""Dynamic batching: throughput of a batched task against the same work unbatched (issue 7).

One private redis-server (free loopback port), a real `gpufleet dispatcher` and 1 real
`gpufleet worker --probe sim` (capacity 1), started with `LocalFleet` before the clock
starts. Each trial submits N jobs of a simulated inference and times submit -> all done:

- unbatched: `gpufleet.worker.tasks:synthetic`, one call per job, each `cost + item_cost` seconds;
- batched:   `gpufleet.worker.tasks:synthetic_batched` (@batched max_size=32, max_wait_ms=5), one call
  per batch, `max(cost) + sum(item_cost)` seconds: a forward pass has a fixed cost and a
  small cost per input, which is why GPUs batch.

jobs/s = N / wall; the speed-up is batched / unbatched, measured in the same run (trials
alternate). The ideal speed-up for full batches of B is (cost + item_cost) * B /
(cost + B * item_cost); the printout gives it beside the measured figure, and the mean batch
size the worker achieved (jobs per distinct end time).

Placement: this script, redis-server, the dispatcher and the worker share the machine, no pinning.

    python bench/batching.py                        # N=640, cost 20 ms, item_cost 0.5 ms, 3 runs
    python bench/batching.py --jobs 320 --runs 1 --cost 0.01 --item-cost 0.001
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.batching import batch_spec
from gpufleet.worker.fleet import LocalFleet, SimNode
from gpufleet.worker.tasks import synthetic_batched

NS = "bench"
KINDS = {"unbatched": "gpufleet.worker.tasks:synthetic", "batched": "gpufleet.worker.tasks:synthetic_batched"}


def trial(r: Redis, settings: Settings, func: str, n: int, cost: float, item_cost: float) -> tuple[float, float]:
    """(jobs/s, mean jobs per call) for n jobs of `func`."""
    keys = Keys(NS)
    specs = [JobSpec(func, {"cost": cost, "item_cost": item_cost, "i": i}) for i in range(n)]
    started = time.perf_counter()
    batch = Submitter(r, settings).submit(specs).batch_id
    while not read_progress(r, keys, batch).done:
        time.sleep(0.005)
    wall = time.perf_counter() - started
    records = list(iter_results(r, keys, batch))
    failed = [rec for rec in records if rec["status"] != "finished"]
    if failed:
        raise SystemExit(f"{len(failed)} jobs did not finish: {failed[0]}")
    calls = len({rec["ended_at"] for rec in records})
    return n / wall, n / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=640)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cost", type=float, default=0.02, help="fixed seconds per call (a forward pass)")
    ap.add_argument("--item-cost", type=float, default=0.0005, help="seconds per input")
    args = ap.parse_args()

    server = RedisServer().start()
    r = Redis.from_url(server.url)
    settings = Settings(redis_url=server.url, namespace=NS)
    fleet = LocalFleet(server.url, namespace=NS)
    rates: dict[str, list[float]] = {k: [] for k in KINDS}
    sizes: list[float] = []
    try:
        fleet.start_dispatcher()
        fleet.start_worker(SimNode("b1"))
        fleet.wait_for_nodes(r, ["b1"])
        trial(r, settings, KINDS["batched"], 64, args.cost, args.item_cost)  # warm-up: the node learns its batch size
        for run in range(args.runs):
            for kind, func in KINDS.items():
                rate, size = trial(r, settings, func, args.jobs, args.cost, args.item_cost)
                rates[kind].append(rate)
                if kind == "batched":
                    sizes.append(size)
                print(f"run {run + 1} {kind:9s} {rate:8.1f} jobs/s  mean jobs per call {size:5.1f}", flush=True)
    finally:
        fleet.stop()
        server.cleanup()

    b = batch_spec(synthetic_batched)
    assert b is not None
    per_job = args.cost + args.item_cost
    ideal = per_job * b.max_size / (args.cost + b.max_size * args.item_cost)
    ratios = [bt / ut for bt, ut in zip(rates["batched"], rates["unbatched"])]
    print(f"\nN={args.jobs} runs={args.runs} cost={args.cost}s item_cost={args.item_cost}s max_size={b.max_size}")
    for kind in KINDS:
        xs = rates[kind]
        print(f"{kind:9s} median {statistics.median(xs):8.1f} jobs/s  (min {min(xs):.1f}, max {max(xs):.1f})")
    print(f"speed-up  median {statistics.median(ratios):.2f}x  (min {min(ratios):.2f}, max {max(ratios):.2f}); "
          f"ideal for full batches {ideal:.2f}x; mean batch {statistics.median(sizes):.1f} jobs")  # fmt: skip


if __name__ == "__main__":
    main()
