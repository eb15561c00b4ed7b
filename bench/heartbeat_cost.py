"""What one heartbeat costs: round trips, Redis commands, bytes and time (issue 6, target 5).

Against a private loopback redis-server (`RedisServer`, a free port; never the Redis on 6379),
`--beats` heartbeats are sent two ways:
- `dispatcher.scripts.Scripts.beat` with fields from `heartbeat_fields` (the write alone: the
  beat.lua script, which checks the node's incarnation, then writes the HASH and liveness);
- `worker.heartbeat.Heartbeat.beat`, what the worker's heartbeat thread does each interval:
  read the node's counters (`NodeStats`, shared memory), its probe (`--probe`: sim, or cpu
  which reads /proc), the models kept warm, then the same write.

Round trips are counted by a redis-py connection that counts its sends (a pipeline sends all
its commands in one write and then reads their replies: one round trip), and cross-checked
with the replies it reads; commands by INFO commandstats (CONFIG RESETSTAT before, this
script's own INFO/CONFIG calls left out); bytes are what the connection wrote. Time is the
wall time per beat, median and p99 over the beats (loopback, so mostly Python and one RTT).
With `--gpus N` the simulated node reports N GPUs in its per-GPU list (sim probe readings are
replaced by N fixed GpuReadings), as a multi-GPU host would.

Placement: this script and redis-server on one machine, unpinned.

    python bench/heartbeat_cost.py                 # 2,000 beats each way, sim probe, 1 GPU
    python bench/heartbeat_cost.py --smoke         # 100 beats
    python bench/heartbeat_cost.py --gpus 8 --probe cpu --json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

from gpufleet.dispatcher.fleet.snapshot import read_nodes
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.dispatcher.store.scripts import Scripts
from gpufleet.worker.gpu import GpuReading, Probe, Reading, make_probe
from gpufleet.worker.heartbeat import Heartbeat, NodeInfo, heartbeat_fields
from gpufleet.worker.stats import NodeStats, StatsView


class CountingConnection(redis.Connection):
    """Counts sends (one per round trip: a pipeline writes all its commands at once), the
    bytes sent, and replies read."""

    sends = replies = sent_bytes = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        chunks = [command] if isinstance(command, (bytes, str)) else command
        CountingConnection.sent_bytes += sum(len(c) for c in chunks)
        super().send_packed_command(command, check_health)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        CountingConnection.replies += 1
        return super().read_response(*args, **kwargs)


class FixedGpus:
    """A probe reporting `n` busy GPUs (what an N-GPU host's NVML probe would send)."""

    name = "nvml"  # the probe name the heartbeat carries

    def __init__(self, n: int) -> None:
        self._reading = Reading.aggregate("nvml", tuple(
            GpuReading(i, "NVIDIA H100 80GB HBM3", 0.8, 40.0, 80.0, temperature_c=61.0, power_w=410.5,
                       power_limit_w=700.0, uuid=f"GPU-{i:08d}") for i in range(n)))  # fmt: skip

    def read(self) -> Reading:
        return self._reading


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def measure(r: Redis, beats: int, beat: Any) -> dict[str, Any]:
    """Round trips, commands, bytes and time per call of `beat()`."""
    beat()  # warm: connection, imports
    r.config_resetstat()
    sends0, replies0, bytes0 = CountingConnection.sends, CountingConnection.replies, CountingConnection.sent_bytes
    times = []
    for _ in range(beats):
        t0 = time.perf_counter()
        beat()
        times.append(time.perf_counter() - t0)
    sends = CountingConnection.sends - sends0
    replies = CountingConnection.replies - replies0
    sent = CountingConnection.sent_bytes - bytes0
    stats = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in r.info("commandstats").items()}
    for name in ("info", "config", "config|resetstat"):
        stats.pop(name, None)
    return {
        "round_trips": sends / beats, "replies": replies / beats, "commands": sum(stats.values()) / beats,
        "by_command": {k: v / beats for k, v in sorted(stats.items())}, "bytes_sent": sent / beats,
        "time_us": {"median": statistics.median(times) * 1e6, "p99": pct(times, 0.99) * 1e6},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beats", type=int, default=2000, help="Heartbeats sent each way.")
    ap.add_argument("--probe", default="sim", choices=("sim", "cpu"),
                    help="Probe Heartbeat.beat reads (with --gpus 0).")  # fmt: skip
    ap.add_argument("--gpus", type=int, default=1, help="GPUs in the node's per-GPU list (0: the probe's own reading).")
    ap.add_argument("--smoke", action="store_true", help="100 beats each way.")
    ap.add_argument("--json", action="store_true", help="Print the result as one JSON object.")
    args = ap.parse_args(argv)
    if args.smoke:
        args.beats = 100
    keys = Keys("hbcost")
    info = NodeInfo("node-0", capacity=1, incarnation="bench")
    stats = NodeStats(slots=1)
    probe: Probe = FixedGpus(args.gpus) if args.gpus else make_probe(args.probe, lambda: stats.last_busy_fraction)
    with RedisServer() as server:
        r = Redis.from_url(server.url, connection_class=CountingConnection)
        fields = heartbeat_fields(info, StatsView(1, 10, 0, 0.05, 0.8), probe.read())
        scripts = Scripts(r, keys)
        write = measure(r, args.beats, lambda: scripts.beat(info.node_id, info.incarnation, 5000, fields))
        heartbeat = Heartbeat(scripts, info, stats, probe, interval_s=1.0, ttl_s=5.0)
        beat = measure(r, args.beats, heartbeat.beat)
        [node] = read_nodes(r, keys)  # what was written reads back as the node
        assert node.alive and node.node_id == info.node_id and node.gpu_count == args.gpus, node
        result = {"beats": args.beats, "gpus": args.gpus, "probe": probe.name,
                  "redis_version": r.info("server")["redis_version"], "hash_fields": len(fields),
                  "Scripts.beat": write, "Heartbeat.beat": beat}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    source = f"{args.gpus} fixed GPU reading(s)" if args.gpus else f"the {probe.name} probe"
    print(f"{args.beats} beats each way; node reporting {source}; {len(fields)} heartbeat "
          f"fields; redis-server {result['redis_version']}, loopback, unpinned")  # fmt: skip
    for name in ("Scripts.beat", "Heartbeat.beat"):
        x = result[name]
        cmds = ", ".join(f"{k.upper()} {v:g}" for k, v in x["by_command"].items())
        print(f"  {name:15} {x['round_trips']:.2f} round trip(s), {x['replies']:.2f} replies, {x['commands']:.2f} "
              f"commands ({cmds}), {x['bytes_sent']:,.0f} bytes sent; {x['time_us']['median']:.0f} us median, "
              f"p99 {x['time_us']['p99']:.0f} us per beat")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
