"""A worker takes its next job in the transaction that records the last one (take_job), and
puts it back when its loop ends before starting it."""

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
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.scripts import Scripts, Taker
from gpufleet.worker.node_worker import NodeWorker
from gpufleet.worker.stats import NodeStats

NODE = "n1"


def jobs_on_node(r: redis.Redis, settings: Settings, count: int) -> list[str]:
    keys = Keys(settings.namespace)
    Submitter(r, settings).submit([JobSpec("gpufleet.worker.tasks:echo", i) for i in range(count)])
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

    def counting(self: Scripts, taker: Taker, pipeline: Any = None, count: int = 1) -> Any:
        if pipeline is None:
            alone.append(1)
        return real(self, taker, pipeline, count)

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
    assert Job.fetch(ids[1], connection=r, serializer=SERIALIZER).get_status() == "queued"
    assert not Scripts(r, Keys(settings.namespace)).put_back_job(worker.taker, ids[1])  # no longer taken: left alone
    assert ids_in(r, queue.key) == ids[1:]
