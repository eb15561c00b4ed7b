"""`gpufleet status --batch B` and the batch list behind `gpufleet top`, on a real redis-server.

No dispatcher or worker processes: jobs move only along the real paths (the move_to_nodes
script, an rq SimpleWorker in burst mode, `cancel`), never by writing counters by hand."""

from __future__ import annotations

import json

import pytest
import redis
from rq import Queue, SimpleWorker

from gpufleet.dispatcher.client.results import batches_in_flight, read_batch_status
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.errors import NotFound
from gpufleet.dispatcher.fleet.control import cancel
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.job import SERIALIZER, job_class
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.dispatcher.store.scripts import Scripts
from tests.conftest import into_ingress

from .support import gpufleet

KEYS = Keys()


def submit(r: redis.Redis, settings: Settings, n: int, batch_id: str) -> list[str]:
    Submitter(r, settings).submit([JobSpec("gpufleet.worker.tasks:echo", i) for i in range(n)], batch_id=batch_id)
    return [i.decode() for i in r.lrange(KEYS.batch_jobs(batch_id), 0, -1)]


def test_a_fresh_batch_is_all_queued_with_no_eta(r: redis.Redis, settings: Settings) -> None:
    submit(r, settings, 1200, "fresh")  # more than one READ_CHUNK of statuses
    record = read_batch_status(r, KEYS, "fresh").record(now=r.time()[0] + 1.0)
    assert (record["size"], record["queued"], record["running"], record["finished"]) == (1200, 1200, 0, 0)
    assert record["eta_s"] is None and record["done"] is False and record["created_at"].endswith("Z")


def test_finished_and_canceled_jobs_move_the_counts_and_give_an_eta(r: redis.Redis, settings: Settings) -> None:
    """Given 10 jobs, if 3 are routed to node n1 and worked there and 2 more are canceled,
    expect 5 queued, 3 finished, 2 canceled and a finite ETA."""
    ids = submit(r, settings, 10, "b")
    into_ingress(r, KEYS)
    Scripts(r, KEYS).move_to_nodes(KEYS.ingress_queue("normal"), [(job_id, "n1") for job_id in ids[:3]])
    cls = job_class(KEYS, ("gpufleet.worker.tasks",))
    queue = Queue(KEYS.node_queue("n1"), connection=r, serializer=SERIALIZER, job_class=cls)
    SimpleWorker([queue], connection=r, serializer=SERIALIZER, job_class=cls).work(burst=True)
    assert cancel(r, settings, ids[3]).canceled == 1 and cancel(r, settings, ids[4]).canceled == 1
    status = read_batch_status(r, KEYS, "b")
    record = status.record(now=status.row.created_at + 2.0)
    assert {k: record[k] for k in ("queued", "running", "retrying", "finished", "failed", "canceled")} == {
        "queued": 5, "running": 0, "retrying": 0, "finished": 3, "failed": 0, "canceled": 2}  # fmt: skip
    assert record["eta_s"] == pytest.approx(5 / (3 / 2.0), abs=0.1)  # 5 left at 1.5 jobs/s


def test_top_lists_unfinished_batches_newest_first(r: redis.Redis, settings: Settings) -> None:
    submit(r, settings, 2, "old")
    submit(r, settings, 3, "new")
    ids = [i.decode() for i in r.lrange(KEYS.batch_jobs("old"), 0, -1)]
    assert [b.batch_id for b in batches_in_flight(r, KEYS)] == ["new", "old"]
    for job_id in ids:
        cancel(r, settings, job_id)
    assert [(b.batch_id, b.progress.size) for b in batches_in_flight(r, KEYS)] == [("new", 3)]


def test_an_unknown_batch_is_a_clear_error(r: redis.Redis) -> None:
    with pytest.raises(NotFound, match="no batch 'nope'"):
        read_batch_status(r, KEYS, "nope")


def test_the_cli_prints_batch_status_as_json_and_text(r: redis.Redis, settings: Settings,
                                                       redis_server: RedisServer) -> None:  # fmt: skip
    submit(r, settings, 4, "cli")
    out = gpufleet(redis_server.url, KEYS.namespace, "status", "--batch", "cli", "--json")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert (record["batch"], record["queued"], record["finished"], record["eta_s"]) == ("cli", 4, 0, None)
    text = gpufleet(redis_server.url, KEYS.namespace, "status", "--batch", "cli").stdout
    assert "queued 4" in text and "ETA unknown" in text
    once = gpufleet(redis_server.url, KEYS.namespace, "top", "--once")
    assert once.returncode == 0 and "cli" in once.stdout and "0/4" in once.stdout and "desired -" in once.stdout
    missing = gpufleet(redis_server.url, KEYS.namespace, "status", "--batch", "nope")
    assert missing.returncode == 1 and "no batch 'nope'" in missing.stderr
