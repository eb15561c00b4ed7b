"""`gpufleet forget NODE` on real processes: a live node is refused; a node killed with jobs on
it gives them back, then leaves no key of its own in Redis; its failed job stays requeueable."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from gpufleet.dispatcher.client.results import read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.fleet.tenants import read_waiting_counts
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import RQ_QUEUES, Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import LocalFleet, SimNode

from .support import gpufleet, kill_tree, local_fleet, wait_until

pytestmark = pytest.mark.integration

NS = "forget"
KEYS = Keys(NS)
QUEUE = KEYS.node_queue("n1")


@pytest.fixture
def fleet(redis_server: RedisServer) -> Iterator[LocalFleet]:
    with local_fleet(redis_server.url, NS) as f:
        yield f


def submit(r: redis.Redis, url: str, specs: list[JobSpec]) -> str:
    return Submitter(r, Settings(redis_url=url, namespace=NS)).submit(specs).batch_id


def test_a_killed_node_gives_its_jobs_back_and_leaves_no_key(fleet: LocalFleet) -> None:
    """Given n1 with a failed job behind it, one job running and two queued: `forget` refuses
    it while it is live; once it is killed (and no dispatcher runs to clean up after it),
    `forget` hands the three back to the ingress, removes every key of n1's, and keeps its
    dead-letter queue, which `requeue --failed` still empties."""
    r = redis.Redis.from_url(fleet.redis_url)
    fleet.start_dispatcher("--prefetch", "2")  # two jobs wait on the node behind the one running
    worker = fleet.start_worker(SimNode("n1"))
    fleet.wait_for_nodes(r, ["n1"])
    failing = submit(r, fleet.redis_url, [JobSpec("gpufleet.worker.tasks:synthetic", {"cost": 0, "fail": True})])
    wait_until(lambda: read_progress(r, KEYS, failing).failed == 1, 20, "the failing job to fail")
    submit(r, fleet.redis_url, [JobSpec("gpufleet.worker.tasks:synthetic", {"cost": 60, "i": i})
                                       for i in range(3)])  # fmt: skip
    wait_until(lambda: r.zcard(Keys.rq_started(QUEUE)) == 1 and r.llen(Keys.rq_queue(QUEUE)) == 2, 20,
               "one job running on n1 and two queued")  # fmt: skip

    out = gpufleet(fleet.redis_url, NS, "forget", "n1")
    assert out.returncode == 1 and "node 'n1' is live" in out.stderr and r.sismember(KEYS.nodes, "n1"), out.stderr

    fleet.stop("dispatcher")  # nobody hands n1's jobs back but forget
    kill_tree(worker.pid)
    wait_until(lambda: not r.exists(KEYS.alive("n1")), 10, "n1's liveness key to expire")
    out = gpufleet(fleet.redis_url, NS, "forget", "n1", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["requeued"] + report["retried"] == 3 and report["failed"] == 0 and report["failed_kept"] == 1

    assert r.llen(Keys.rq_queue(KEYS.ingress_queue("normal"))) == 3
    assert not r.sismember(KEYS.nodes, "n1") and not r.keys(f"{NS}:node:n1:*")
    assert not r.exists(Keys.rq_queue(QUEUE), Keys.rq_started(QUEUE), Keys.rq_intermediate(QUEUE))
    assert r.sismember(RQ_QUEUES, Keys.rq_queue(QUEUE))  # its dead-letter queue is still listed
    status = json.loads(gpufleet(fleet.redis_url, NS, "status", "--json").stdout)
    assert status["nodes"] == [] and status["hidden_dead"] == 0

    out = gpufleet(fleet.redis_url, NS, "requeue", "--failed", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == {"requeued": 1}, out.stderr
    assert r.llen(Keys.rq_queue(KEYS.ingress_queue("normal"))) == 3  # the three, in flight still
    assert read_waiting_counts(r, KEYS)["normal"].lanes == {"default": 1}  # the failed one waits its turn again
