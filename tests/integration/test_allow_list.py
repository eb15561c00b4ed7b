"""The allow-list against a real worker: a job HASH written to name a function the worker's
allowed module merely imports fails with PermissionError, and the worker serves on."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import pytest
import redis
from rq.serializers import JSONSerializer

from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import LocalFleet, SimNode

from .support import local_fleet, wait_until

NS = "allow"
KEYS = Keys(NS)


@pytest.fixture
def fleet(redis_server: RedisServer) -> Iterator[LocalFleet]:
    with local_fleet(redis_server.url, NS) as f:
        yield f


def submit(r: redis.Redis, url: str, spec: JobSpec) -> str:
    return Submitter(r, Settings(redis_url=url, namespace=NS)).submit([spec]).batch_id


def finish(r: redis.Redis, batch: str, timeout_s: float = 20) -> dict:  # type: ignore[type-arg]
    wait_until(lambda: read_progress(r, KEYS, batch).done, timeout_s, f"batch {batch} to end")
    [record] = iter_results(r, KEYS, batch)
    return record


def test_a_job_hash_naming_an_imported_function_fails_and_the_worker_serves_on(fleet: LocalFleet) -> None:
    """Given a queued job whose HASH was rewritten to call gpufleet.worker.tasks.time.sleep(30) (rq's
    import_attribute would reach the stdlib's time.sleep through gpufleet.worker.tasks), it ends failed
    with the PermissionError, at once, and the next job on the same node finishes."""
    r = redis.Redis.from_url(fleet.redis_url)
    batch = submit(r, fleet.redis_url, JobSpec("gpufleet.worker.tasks:echo", "harmless"))  # no node yet: it waits
    [job_id] = [i.decode() for i in r.lrange(KEYS.batch_jobs(batch), 0, -1)]
    data = JSONSerializer.dumps(("gpufleet.worker.tasks.time.sleep", None, [30], {}))  # rq's `data`: zlib of the call
    r.hset(Keys.rq_job(job_id), "data", zlib.compress(data))

    fleet.start_dispatcher()
    fleet.start_worker(SimNode("s1"))
    fleet.wait_for_nodes(r, ["s1"])
    refused = finish(r, batch)
    assert refused["status"] == "failed" and refused["node"] == "s1"
    assert "PermissionError: function 'gpufleet.worker.tasks.time.sleep' is refused" in refused["error"]
    assert "attribute path" in refused["error"]

    served = finish(r, submit(r, fleet.redis_url, JobSpec("gpufleet.worker.tasks:echo", {"next": 1})))
    assert (served["status"], served["node"], served["result"]) == ("finished", "s1", {"next": 1})
