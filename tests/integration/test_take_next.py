"""A worker takes and starts its next job in the transaction that records the last one
(take_job), and puts it back, its start undone, when its loop ends before running it."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job

from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.fleet.node_claim import holder_name
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.job import SERIALIZER, job_class
from gpufleet.dispatcher.store.keys import JobField, Keys
from gpufleet.dispatcher.store.scripts import Scripts, Taker, TakeStart
from gpufleet.worker.node_worker import NodeWorker
from gpufleet.worker.stats import NodeStats
from tests.conftest import into_ingress

NODE = "n1"


def jobs_on_node(r: redis.Redis, settings: Settings, count: int) -> list[str]:
    keys = Keys(settings.namespace)
    Submitter(r, settings).submit([JobSpec("gpufleet.worker.tasks:echo", i) for i in range(count)])
    into_ingress(r, keys)
    ingress = keys.ingress_queue("normal")
    ids = [i.decode() for i in r.lrange(Keys.rq_queue(ingress), 0, -1)]
    Scripts(r, keys).move_to_nodes(ingress, [(job_id, NODE) for job_id in ids])
    return ids


def taker(settings: Settings, incarnation: str = "i1") -> Taker:
    """Slot 0 of incarnation `incarnation` of NODE."""
    return Taker.of(Keys(settings.namespace), NODE, holder_name(incarnation, 0), incarnation)


def node_worker(r: redis.Redis, settings: Settings, cls: type[NodeWorker] = NodeWorker,
                allow: tuple[str, ...] = ("gpufleet.worker.tasks",)) -> NodeWorker:  # fmt: skip
    """A worker of NODE, which it holds (as claim_node_id leaves the liveness key)."""
    keys = Keys(settings.namespace)
    fleet_job = job_class(keys, allow)
    queue = Queue(keys.node_queue(NODE), connection=r, serializer=SERIALIZER, job_class=fleet_job)
    t = taker(settings)
    r.set(t.alive, t.token)
    return cls([queue], connection=r, serializer=SERIALIZER, job_class=fleet_job, stats=NodeStats(), node_id=NODE,
               settings=settings, taker=t)  # fmt: skip


def ids_in(r: redis.Redis, key: str) -> list[str]:
    return [i.decode() for i in r.lrange(key, 0, -1)]


def test_each_recorded_job_brings_the_next_so_only_the_first_is_taken_alone(
    r: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = jobs_on_node(r, settings, 3)
    alone = []
    real = Scripts.take_job

    def counting(self: Scripts, taker: Taker, start: TakeStart, pipeline: Any = None) -> Any:
        if pipeline is None:
            alone.append(1)
        return real(self, taker, start, pipeline)

    monkeypatch.setattr(Scripts, "take_job", counting)
    worker = node_worker(r, settings)
    worker.work(burst=True)
    assert len(alone) == 2  # the first job, then the empty queue that ends the burst
    assert [Job.fetch(i, connection=r, serializer=SERIALIZER).return_value() for i in ids] == [0, 1, 2]
    queue = worker.queues[0]
    assert ids_in(r, queue.key) == [] and ids_in(r, worker.taker.held) == []
    assert queue.started_job_registry.get_job_ids() == []


class StopsAfterFirstJob(NodeWorker):
    """As if SIGTERM arrived just after the first job was recorded (and the next one taken)."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        super().execute_job(job, queue)
        self._stop_requested = True


def test_a_taken_job_goes_back_to_the_head_of_the_queue_when_the_loop_ends_first(
    r: redis.Redis, settings: Settings
) -> None:
    ids = jobs_on_node(r, settings, 3)
    worker = node_worker(r, settings, StopsAfterFirstJob)
    worker.work(burst=True)
    queue = worker.queues[0]
    assert ids_in(r, queue.key) == ids[1:]  # in order, the taken one first
    assert ids_in(r, worker.taker.held) == []
    assert Job.fetch(ids[0], connection=r, serializer=SERIALIZER).get_status() == "finished"
    back = Job.fetch(ids[1], connection=r, serializer=SERIALIZER)
    assert back.get_status() == "queued" and back.started_at is None and not back.worker_name
    assert r.hget(back.key, JobField.ATTEMPTS) == b"0"  # its start undone: the attempt too
    assert queue.started_job_registry.get_job_ids() == []
    assert r.keys("rq:execution:" + ids[1] + ":*") == [] and r.zcard(Keys.rq_executions(ids[1])) == 0
    assert r.smembers(Keys.rq_worker_executions(worker.name)) == set()
    scripts = Scripts(r, Keys(settings.namespace))
    assert not scripts.put_back_started(worker.taker, worker.name, ids[1], "x")  # not started: left alone
    assert ids_in(r, queue.key) == ids[1:]


def test_an_idle_worker_waits_for_a_wake_up_before_looking_again_at_a_queue_it_just_found_empty(
    r: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record that found the node queue empty was the look: the idle loop goes straight to
    the wake-up list (a job routed here since left a token there), one round trip a job less."""
    jobs_on_node(r, settings, 1)
    worker = node_worker(r, settings)
    calls: list[str] = []
    real = Scripts.take_job

    def counting(self: Scripts, taker: Taker, start: TakeStart, pipeline: Any = None) -> Any:
        calls.append("take" if pipeline is None else "take in the record")
        return real(self, taker, start, pipeline)

    def blpop(keys: Any, timeout: float) -> None:
        calls.append("wait")
        jobs_on_node(r, settings, 1)  # the dispatcher routes one meanwhile

    monkeypatch.setattr(Scripts, "take_job", counting)
    job, queue = worker.dequeue_job_and_maintain_ttl(timeout=1)
    worker.execute_job(job, queue)
    monkeypatch.setattr(worker.connection, "blpop", blpop)
    assert worker.dequeue_job_and_maintain_ttl(timeout=1) is not None
    assert calls == ["take", "take in the record", "wait", "take"]
