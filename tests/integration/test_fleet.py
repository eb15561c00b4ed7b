"""A real fleet: `gpufleet dispatcher` and three `gpufleet worker` processes on a real Redis."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest
import redis

from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import LocalFleet, SimNode

from .support import FAST_ENV, gpufleet, wait_until

NODES = [SimNode("n1", 1.0), SimNode("n2", 2.0), SimNode("n3", 4.0)]


@pytest.fixture(scope="module")
def fleet(redis_server: RedisServer) -> Iterator[tuple[LocalFleet, redis.Redis]]:
    r = redis.Redis.from_url(redis_server.url)
    r.flushdb()
    f = LocalFleet(redis_server.url, namespace="itest", env=FAST_ENV)
    try:
        f.start_dispatcher()
        for n in NODES:
            f.start_worker(n)
        f.wait_for_nodes(r, [n.node_id for n in NODES])
        yield f, r
    finally:
        f.stop()


def test_a_300_job_batch_completes_over_three_workers(fleet: tuple[LocalFleet, redis.Redis],
                                                      redis_server: RedisServer) -> None:  # fmt: skip
    """Every job finishes, every result carries its own input, and every node ran some."""
    _, r = fleet
    keys = Keys("itest")
    specs = [JobSpec("gpufleet.worker.tasks:synthetic", {"cost": 0.02, "i": i}, client_id=f"j{i}") for i in range(300)]
    receipt = Submitter(r, Settings(redis_url=redis_server.url, namespace="itest")).submit(specs)
    wait_until(lambda: read_progress(r, keys, receipt.batch_id).done, 60, "the batch to finish")

    records = list(iter_results(r, keys, receipt.batch_id))
    assert [rec["status"] for rec in records] == ["finished"] * 300
    assert all(rec["result"]["input"]["i"] == int(rec["id"][1:]) for rec in records)
    assert all(rec["result"]["node"] == rec["node"] and rec["attempts"] == 1 for rec in records)
    per_node = {n.node_id: sum(rec["node"] == n.node_id for rec in records) for n in NODES}
    assert all(count > 0 for count in per_node.values()), per_node
    assert per_node["n3"] > per_node["n1"]  # the 4x node frees up more often, so takes more

    out = gpufleet(redis_server.url, "itest", "results", receipt.batch_id)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 300
    assert json.loads(out.stdout.splitlines()[0])["id"] == "j0"


def test_status_json_shows_every_node_heartbeating(fleet: tuple[LocalFleet, redis.Redis],
                                                   redis_server: RedisServer) -> None:  # fmt: skip
    out = gpufleet(redis_server.url, "itest", "status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    nodes = {n["node"]: n for n in status["nodes"]}
    assert set(nodes) == {"n1", "n2", "n3"}
    assert all(n["state"] == "alive" and n["heartbeat_age_s"] < 1.0 and n["probe"] == "sim" for n in nodes.values())
    assert status["ingress"] == {"high": 0, "normal": 0, "low": 0}


def test_a_killed_worker_is_dead_once_its_liveness_key_expires(fleet: tuple[LocalFleet, redis.Redis],
                                                              redis_server: RedisServer) -> None:  # fmt: skip
    f, r = fleet
    keys = Keys("itest")
    f.signal("n1", signal.SIGKILL)
    assert r.pttl(keys.alive("n1")) <= 1000  # nothing refreshes it now: gone within the 1 s TTL
    wait_until(lambda: not r.exists(keys.alive("n1")), 5.0, "n1's liveness key to expire")
    status = json.loads(gpufleet(redis_server.url, "itest", "status", "--json").stdout)
    assert {n["node"]: n["state"] for n in status["nodes"]} == {"n1": "dead", "n2": "alive", "n3": "alive"}


def max_overlap(records: list[dict]) -> int:  # type: ignore[type-arg]
    """The most jobs whose [started_at, ended_at] intervals overlap at one instant."""
    events = sorted([(rec["started_at"], 1) for rec in records] + [(rec["ended_at"], -1) for rec in records],
                    key=lambda e: (e[0], e[1]))  # fmt: skip
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_a_node_of_capacity_three_runs_jobs_side_by_side(redis_server: RedisServer) -> None:
    """--capacity N runs N slot processes on one node queue, reported by one heartbeat."""
    r = redis.Redis.from_url(redis_server.url)
    f = LocalFleet(redis_server.url, namespace="cap", env=FAST_ENV)
    try:
        f.start_dispatcher()
        f.start_worker(SimNode("wide", 1.0, capacity=3))
        f.wait_for_nodes(r, ["wide"])
        specs = [JobSpec("gpufleet.worker.tasks:synthetic", {"cost": 1.0}) for _ in range(6)]
        receipt = Submitter(r, Settings(redis_url=redis_server.url, namespace="cap")).submit(specs)
        wait_until(lambda: read_progress(r, Keys("cap"), receipt.batch_id).done, 60, "the batch to finish")
        records = list(iter_results(r, Keys("cap"), receipt.batch_id))
        assert {rec["status"] for rec in records} == {"finished"}
        assert max_overlap(records) >= 2
        hb = r.hgetall(Keys("cap").heartbeat("wide"))
        assert hb[b"capacity"] == b"3" and int(hb[b"completed"]) + int(hb[b"running"]) >= 5
    finally:
        f.stop()
