"""Dynamic batching with real processes: a dispatcher and a worker running a @batched task."""

from __future__ import annotations

from collections import Counter
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

from .support import FAST_ENV, wait_until

NS = "batch"
KEYS = Keys(NS)
BATCHED = "gpufleet.worker.tasks:synthetic_batched"


@pytest.fixture
def fleet(redis_server: RedisServer) -> Iterator[tuple[LocalFleet, redis.Redis]]:
    r = redis.Redis.from_url(redis_server.url)
    r.flushdb()
    f = LocalFleet(redis_server.url, namespace=NS, env=FAST_ENV)
    try:
        f.start_dispatcher()
        f.start_worker(SimNode("b1"))
        f.wait_for_nodes(r, ["b1"])
        yield f, r
    finally:
        f.stop()


def run_batch(r: redis.Redis, url: str, specs: list[JobSpec]) -> list[dict]:  # type: ignore[type-arg]
    receipt = Submitter(r, Settings(redis_url=url, namespace=NS)).submit(specs)
    wait_until(lambda: read_progress(r, KEYS, receipt.batch_id).done, 60, "the batch to end")
    return list(iter_results(r, KEYS, receipt.batch_id))


def test_batched_jobs_run_together_and_each_keeps_its_own_result_or_error(
    fleet: tuple[LocalFleet, redis.Redis], redis_server: RedisServer
) -> None:
    _, r = fleet
    specs = [JobSpec(BATCHED, {"cost": 0.05, "i": i, "fail": i == 7}, client_id=str(i)) for i in range(96)]
    records = run_batch(r, redis_server.url, specs)

    assert [rec["status"] for rec in records] == ["finished"] * 7 + ["failed"] + ["finished"] * 88
    assert records[7]["error"] == "RuntimeError: synthetic failure requested by the job input"
    assert all(rec["result"]["input"]["i"] == int(rec["id"]) for rec in records if rec["status"] == "finished")
    # the jobs of one batch end together: far fewer distinct end times than jobs
    calls = Counter(rec["ended_at"] for rec in records)
    assert len(calls) <= 96 // 4, calls
    assert max(calls.values()) > 3  # a full batch is 32; the first ones are smaller (capacity not yet known)
    queue = KEYS.node_queue("b1")  # every job left rq's lists and registries as rq's own path leaves them
    assert r.zcard(Keys.rq_started(queue)) == r.llen(Keys.rq_intermediate(queue)) == r.llen(Keys.rq_queue(queue)) == 0
    assert r.zcard(Keys.rq_failed(queue)) == 1


def test_a_batching_node_advertises_slots_times_batch_size_as_its_capacity(
    fleet: tuple[LocalFleet, redis.Redis], redis_server: RedisServer
) -> None:
    _, r = fleet
    assert r.hget(KEYS.heartbeat("b1"), "capacity") == b"1"  # no batched task seen yet
    run_batch(r, redis_server.url, [JobSpec(BATCHED, {"cost": 0.01, "i": i}) for i in range(4)])
    wait_until(lambda: r.hget(KEYS.heartbeat("b1"), "capacity") == b"32", 5, "the heartbeat to report capacity 32")
    assert r.hmget(KEYS.heartbeat("b1"), "slots", "batch_max") == [b"1", b"32"]


def test_batched_and_plain_jobs_share_a_node_queue(fleet: tuple[LocalFleet, redis.Redis],
                                                    redis_server: RedisServer) -> None:  # fmt: skip
    _, r = fleet
    specs = [JobSpec(BATCHED if i % 2 else "gpufleet.worker.tasks:synthetic", {"cost": 0.01, "i": i})
             for i in range(40)]  # fmt: skip
    records = run_batch(r, redis_server.url, specs)
    assert [rec["status"] for rec in records] == ["finished"] * 40
    assert [rec["result"]["input"]["i"] for rec in records] == list(range(40))
