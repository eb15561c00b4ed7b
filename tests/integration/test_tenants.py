"""Tenants on a real fleet: fair share under backlog, quotas, a refused submit, and the count
of jobs in flight kept exact through successes, failures and cancels."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from gpufleet.dispatcher.client.results import read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.fleet.control import cancel
from gpufleet.dispatcher.fleet.tenants import read_usage, set_tenant
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import LocalFleet, SimNode

from .support import FAST_ENV, gpufleet, wait_until

NS = "tenants"
KEYS = Keys(NS)
NODES = [SimNode(f"t{i}") for i in range(4)]
SYNTHETIC = "gpufleet.worker.tasks:synthetic"


@pytest.fixture(scope="module")
def fleet(redis_server: RedisServer) -> Iterator[tuple[redis.Redis, Settings]]:
    r = redis.Redis.from_url(redis_server.url)
    r.flushdb()
    f = LocalFleet(redis_server.url, namespace=NS, env=FAST_ENV)
    try:
        f.start_dispatcher()
        for n in NODES:
            f.start_worker(n)
        f.wait_for_nodes(r, [n.node_id for n in NODES])
        yield r, Settings(redis_url=redis_server.url, namespace=NS)
    finally:
        f.stop()


def jobs(n: int, cost: float, **extra: object) -> list[JobSpec]:
    return [JobSpec(SYNTHETIC, {"cost": cost, "i": i, **extra}) for i in range(n)]


def ended(r: redis.Redis, batch_id: str) -> int:
    p = read_progress(r, KEYS, batch_id)
    return p.finished + p.failed + p.canceled


def flight(r: redis.Redis) -> dict[str, int]:
    return {u.tenant: u.in_flight for u in read_usage(r, KEYS)}


def test_a_small_batch_of_another_tenant_is_not_stuck_behind_a_big_one(fleet: tuple[redis.Redis, Settings]) -> None:
    """FIFO would end B's 20 jobs after all of A's 400; fair share ends them while A has most
    of its batch still to run."""
    r, settings = fleet
    submitter = Submitter(r, settings)
    big = submitter.submit(jobs(400, 0.02), tenant="team-a").batch_id
    small = submitter.submit(jobs(20, 0.02), tenant="team-b").batch_id
    wait_until(lambda: read_progress(r, KEYS, small).done, 30, "team-b's batch to end")
    assert ended(r, big) < 200, "team-b waited for most of team-a's batch"
    wait_until(lambda: read_progress(r, KEYS, big).done, 60, "team-a's batch to end")
    assert read_progress(r, KEYS, big).finished == 400
    wait_until(lambda: not any(flight(r).values()), 10, "nothing in flight")


def test_a_tenants_batches_share_its_part_too(fleet: tuple[redis.Redis, Settings]) -> None:
    r, settings = fleet
    submitter = Submitter(r, settings)
    big = submitter.submit(jobs(300, 0.02), tenant="solo").batch_id
    small = submitter.submit(jobs(10, 0.02), tenant="solo").batch_id
    wait_until(lambda: read_progress(r, KEYS, small).done, 30, "the small batch to end")
    assert ended(r, big) < 150
    wait_until(lambda: read_progress(r, KEYS, big).done, 60, "the big batch to end")


def test_max_running_caps_a_tenants_jobs_in_flight(fleet: tuple[redis.Redis, Settings]) -> None:
    """Four idle nodes, a quota of 2: never more than 2 of the tenant's jobs start at once, and
    2 do run together; the count of jobs in flight goes back to 0."""
    r, settings = fleet
    set_tenant(r, KEYS, "capped", quotas={"max_running": 2})
    batch = Submitter(r, settings).submit(jobs(12, 0.15), tenant="capped").batch_id
    most_running = most_flight = 0
    deadline = time.monotonic() + 30
    while not read_progress(r, KEYS, batch).done and time.monotonic() < deadline:
        ids = r.lrange(KEYS.batch_jobs(batch), 0, -1)
        with r.pipeline(transaction=False) as p:
            for job_id in ids:
                p.hget(Keys.rq_job(job_id.decode()), "status")
            p.hget(KEYS.tenant_flight, "capped")
            *statuses, in_flight = p.execute()
        most_running = max(most_running, sum(s == b"started" for s in statuses))
        most_flight = max(most_flight, int(in_flight or 0))
        time.sleep(0.02)
    assert read_progress(r, KEYS, batch).finished == 12
    assert most_running == 2 and most_flight <= 2
    assert flight(r).get("capped", 0) == 0


def test_a_submit_past_max_queued_is_refused_whole(fleet: tuple[redis.Redis, Settings],
                                                   redis_server: RedisServer) -> None:  # fmt: skip
    r, _ = fleet
    set_tenant(r, KEYS, "small", quotas={"max_queued": 5})
    lines = "\n".join(json.dumps({"input": {"cost": 0.01}}) for _ in range(6))
    refused = gpufleet(redis_server.url, NS, "submit", "-", "--func", SYNTHETIC, "--tenant", "small",
                       "--batch", "too-big", input=lines)  # fmt: skip
    assert refused.returncode == 1
    assert "at most 5 jobs waiting" in refused.stderr and "nothing was submitted" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not r.exists(KEYS.batch_info("too-big"))
    ok = gpufleet(redis_server.url, NS, "submit", "-", "--func", SYNTHETIC, "--tenant", "small", "--wait",
                  input="\n".join(lines.splitlines()[:5]))  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_flight_counts_return_to_zero_through_failures_and_cancels(fleet: tuple[redis.Redis, Settings],
                                                                   redis_server: RedisServer) -> None:  # fmt: skip
    r, settings = fleet
    submitter = Submitter(r, settings)
    failing = submitter.submit([*jobs(5, 0.01, fail=True), *jobs(5, 0.01)], tenant="mixed").batch_id
    slow = submitter.submit(jobs(40, 0.2), tenant="mixed").batch_id
    wait_until(lambda: read_progress(r, KEYS, failing).done, 30, "the failing batch to end")
    wait_until(lambda: ended(r, slow) >= 2, 30, "some of the slow batch to run")
    report = cancel(r, settings, slow)
    assert report.canceled > 0
    wait_until(lambda: read_progress(r, KEYS, slow).done, 30, "the canceled batch to end")
    progress = read_progress(r, KEYS, failing)
    assert (progress.finished, progress.failed) == (5, 5)
    wait_until(lambda: flight(r).get("mixed", 0) == 0, 10, "mixed's jobs in flight to reach 0")

    listed = {t["tenant"]: t for t in json.loads(gpufleet(redis_server.url, NS, "tenant", "list", "--json").stdout)}
    assert "mixed" not in listed  # no settings, nothing waiting or in flight
    assert listed["capped"] == {"tenant": "capped", "weight": 1.0, "max_running": 2, "max_queued": None,
                                "waiting": 0, "in_flight": 0}  # fmt: skip
    status = json.loads(gpufleet(redis_server.url, NS, "status", "--json").stdout)
    assert {t["tenant"] for t in status["tenants"]} >= {"capped", "small"}
