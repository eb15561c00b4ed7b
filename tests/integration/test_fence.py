"""The late-result fence: a run whose job was handed back meanwhile writes nothing, and the
result that counts is the newest attempt's. In-process workers, real Redis: the job itself
hands its node's jobs back while it runs, as the dispatcher does for a node declared dead."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from rq.job import Job

from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.fleet.control import cancel
from gpufleet.dispatcher.fleet.health import Leftovers, requeue_node
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.job import SERIALIZER
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.scripts import Scripts
from gpufleet.worker import context
from gpufleet.worker.node_worker import NodeWorker
from tests.conftest import into_ingress

from .test_take_next import NODE, node_worker

TASKS = ("gpufleet.worker.tasks", "tests.integration.tasks")


def routed_to(r: redis.Redis, settings: Settings, node_id: str) -> list[str]:
    """Move what waits in the normal ingress to `node_id`'s queue; the ids moved."""
    keys = Keys(settings.namespace)
    into_ingress(r, keys)
    ingress = keys.ingress_queue("normal")
    ids = [i.decode() for i in r.lrange(Keys.rq_queue(ingress), 0, -1)]
    Scripts(r, keys).move_to_nodes(ingress, [(job_id, node_id) for job_id in ids])
    return ids


def test_a_result_that_comes_back_after_its_job_was_handed_back_is_dropped(r: redis.Redis, settings: Settings) -> None:
    """Given a job handed back while it runs, when the run ends its result is not written: the
    job waits in the ingress to run again, and its batch counts nothing finished."""
    spec = {"redis_url": settings.redis_url, "namespace": settings.namespace}
    batch = Submitter(r, settings).submit([JobSpec("tests.integration.tasks:handed_back_while_running", spec)]).batch_id
    [job_id] = routed_to(r, settings, NODE)
    context.set_current(context.NodeContext(node_id=NODE))
    node_worker(r, settings, allow=TASKS).work(burst=True)

    keys = Keys(settings.namespace)
    assert Job.fetch(job_id, connection=r, serializer=SERIALIZER).get_status() == "queued"
    assert [i.decode() for i in r.lrange(Keys.rq_queue(keys.ingress_queue("normal")), 0, -1)] == [job_id]
    assert read_progress(r, keys, batch).finished == 0
    assert r.xlen(Keys.rq_results(job_id)) == 0  # no Result of the late run


def test_a_hand_back_just_before_the_write_still_drops_the_result(
    r: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a job handed back after it ran but before its result is written (the worker was
    stopped, or slow, in between), the result is still dropped: the write itself checks that
    the job is still this run's, so no pause between a check and the write lets it through."""
    batch = Submitter(r, settings).submit([JobSpec("gpufleet.worker.tasks:echo", "result")]).batch_id
    [job_id] = routed_to(r, settings, NODE)
    keys = Keys(settings.namespace)
    write = NodeWorker.record_successes

    def handed_back_first(self: NodeWorker, done: Any) -> Any:
        requeue_node(r, keys, Scripts(r, keys), settings, NODE, Leftovers(queued=True))
        return write(self, done)

    monkeypatch.setattr(NodeWorker, "record_successes", handed_back_first)
    node_worker(r, settings).work(burst=True)

    assert Job.fetch(job_id, connection=r, serializer=SERIALIZER).get_status() == "queued"
    assert read_progress(r, keys, batch).finished == 0 and r.xlen(Keys.rq_results(job_id)) == 0


def test_a_late_failure_schedules_no_retry_and_fails_nothing(r: redis.Redis, settings: Settings) -> None:
    """Given a job with a retry left that fails after it was handed back, neither the retry nor
    the failure is written: the job is only in the ingress, as the hand-back left it."""
    spec = {"redis_url": settings.redis_url, "namespace": settings.namespace}
    batch = Submitter(r, settings).submit([JobSpec("tests.integration.tasks:handed_back_then_fails", spec,
                                                   retries=1)]).batch_id  # fmt: skip
    [job_id] = routed_to(r, settings, NODE)
    context.set_current(context.NodeContext(node_id=NODE))
    node_worker(r, settings, allow=TASKS).work(burst=True)

    keys = Keys(settings.namespace)
    assert Job.fetch(job_id, connection=r, serializer=SERIALIZER).get_status() == "queued"
    assert r.zcard(keys.retry_schedule("normal")) == 0 and r.zcard(Keys.rq_failed(keys.node_queue(NODE))) == 0
    assert read_progress(r, keys, batch).failed == 0 and r.xlen(Keys.rq_results(job_id)) == 0


def test_the_result_that_counts_is_the_newest_attempts(r: redis.Redis, settings: Settings) -> None:
    """Given a job handed back while it ran on n1, then run again on n2, its record is n2's run:
    finished, attempts 2, n2's result, and the batch counts it once."""
    spec = {"redis_url": settings.redis_url, "namespace": settings.namespace}
    batch = Submitter(r, settings).submit([JobSpec("tests.integration.tasks:handed_back_while_running", spec)]).batch_id
    routed_to(r, settings, NODE)
    context.set_current(context.NodeContext(node_id=NODE))
    node_worker(r, settings, allow=TASKS).work(burst=True)

    r.hset(Keys.rq_job(routed_to(r, settings, NODE)[0]), "data", Job.create(  # the same job, now a plain echo
        "gpufleet.worker.tasks.echo", args=("from the second run",), serializer=SERIALIZER,
        connection=r).to_dict()["data"])  # fmt: skip
    node_worker(r, settings, allow=TASKS).work(burst=True)

    keys = Keys(settings.namespace)
    [record] = iter_results(r, keys, batch)
    assert (record["status"], record["attempts"], record["result"]) == ("finished", 2, "from the second run")
    assert read_progress(r, keys, batch).finished == 1
    assert r.xlen(Keys.rq_results(record["job_id"])) == 1  # the first run wrote nothing


def test_every_final_state_lists_the_job_among_its_batch_s_ended_ones(r: redis.Redis, settings: Settings) -> None:
    """A job's end, however it comes (a result, a failure for good, a cancel), appends it once
    to its batch's ended list, which `results --follow` reads in finish order; a retry does not."""
    keys = Keys(settings.namespace)
    specs = [JobSpec("gpufleet.worker.tasks:echo", "ok"),
             JobSpec("gpufleet.worker.tasks:synthetic", {"cost": 0, "fail": True}, retries=1)]  # fmt: skip
    batch = Submitter(r, settings).submit(specs).batch_id
    ok, _failing = routed_to(r, settings, NODE)
    context.set_current(context.NodeContext(node_id=NODE))
    node_worker(r, settings).work(burst=True)  # ok finishes; failing fails once and waits for its retry
    assert [i.decode() for i in r.lrange(keys.batch_ended(batch), 0, -1)] == [ok]
    queued = Submitter(r, settings).submit([JobSpec("gpufleet.worker.tasks:echo", 1)], batch_id="b2")
    cancel(r, settings, queued.batch_id)
    assert r.llen(keys.batch_ended("b2")) == 1
