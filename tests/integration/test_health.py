"""The health loop's moves on a real Redis, without processes: exact order and accounting."""

from __future__ import annotations

import redis
from rq.job import JobStatus

from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.fleet.health import Health
from gpufleet.dispatcher.fleet.snapshot import read_nodes
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import JobField, Keys
from gpufleet.dispatcher.store.scripts import Scripts
from gpufleet.worker.gpu import Reading
from gpufleet.worker.heartbeat import NodeInfo, heartbeat_fields
from gpufleet.worker.stats import StatsView
from tests.conftest import into_ingress, write_heartbeat

KEYS = Keys()


def ingress(r: redis.Redis, priority: str = "normal") -> list[str]:
    return [j.decode() for j in r.lrange(Keys.rq_queue(KEYS.ingress_queue(priority)), 0, -1)]


def beat(r: redis.Redis, node_id: str, completed: int = 0, failed: int = 0) -> None:
    fields = heartbeat_fields(NodeInfo(node_id), StatsView(0, completed, failed, 1.0, 0.0), Reading("sim"))
    write_heartbeat(r, KEYS, node_id, fields, ttl_s=60)


def place_on_node(r: redis.Redis, node_id: str, job_ids: list[str], running: dict[str, int]) -> None:
    """Put jobs in a node's queue, and others in its started registry with `attempts` started."""
    scripts = Scripts(r, KEYS)
    scripts.move_to_nodes(KEYS.ingress_queue("normal"), [(j, node_id) for j in [*running, *job_ids]])
    queue = KEYS.node_queue(node_id)
    for job_id, attempts in running.items():
        r.lrem(Keys.rq_queue(queue), 1, job_id)
        r.zadd(Keys.rq_started(queue), {f"{job_id}:exec1": 9e9})
        r.hset(Keys.rq_job(job_id), mapping={"status": JobStatus.STARTED.value, JobField.ATTEMPTS: attempts})


def test_a_dead_node_returns_running_then_queued_jobs_to_the_front_in_order(r: redis.Redis, settings: Settings) -> None:
    receipt = Submitter(r, settings).submit([JobSpec("gpufleet.worker.tasks:echo", i) for i in range(6)])
    into_ingress(r, KEYS)
    j0, j1, j2, j3, w1, w2 = ingress(r)  # w1, w2 stay in the ingress throughout
    beat(r, "a")
    place_on_node(r, "a", [j1, j2, j3], running={j0: 1})
    r.delete(KEYS.alive("a"))  # node a is dead

    Health(r, KEYS, Scripts(r, KEYS), settings).check(read_nodes(r, KEYS))
    assert ingress(r) == [j0, j1, j2, j3, w1, w2]
    assert not r.exists(Keys.rq_queue(KEYS.node_queue("a")), Keys.rq_started(KEYS.node_queue("a")))
    assert r.hmget(Keys.rq_job(j0), "status", "origin", JobField.NODE) == [b"queued", b"gpufleet.ingress.normal", b""]
    assert read_progress(r, KEYS, receipt.batch_id).failed == 0


def test_a_running_job_past_its_retry_limit_fails_with_node_lost(r: redis.Redis, settings: Settings) -> None:
    receipt = Submitter(r, settings).submit([JobSpec("gpufleet.worker.tasks:echo", "x")])
    into_ingress(r, KEYS)
    [job] = ingress(r)
    beat(r, "b")
    place_on_node(r, "b", [], running={job: settings.node_loss_retries + 1})
    r.delete(KEYS.alive("b"))

    Health(r, KEYS, Scripts(r, KEYS), settings).check(read_nodes(r, KEYS))
    assert ingress(r) == []
    [rec] = iter_results(r, KEYS, receipt.batch_id)
    assert (rec["status"], rec["error"]) == ("failed", "node b lost")
    assert r.zscore(Keys.rq_failed(KEYS.node_queue("b")), job) is not None
    assert read_progress(r, KEYS, receipt.batch_id).failed == 1


def test_a_node_failing_its_jobs_is_ejected_and_its_queue_handed_back(r: redis.Redis, settings: Settings) -> None:
    Submitter(r, settings).submit([JobSpec("gpufleet.worker.tasks:echo", i) for i in range(2)])
    into_ingress(r, KEYS)
    queued = ingress(r)
    health = Health(r, KEYS, Scripts(r, KEYS), settings)
    beat(r, "c")
    health.check(read_nodes(r, KEYS))
    place_on_node(r, "c", queued, running={})
    beat(r, "c", completed=1, failed=settings.outlier_min_jobs)
    health.check(read_nodes(r, KEYS))  # ejects c
    [c] = read_nodes(r, KEYS)
    assert c.ejected and not c.accepting
    assert 0 < r.pttl(KEYS.ejected("c")) <= settings.eject_cooldown_s * 1000
    health.check(read_nodes(r, KEYS))  # an ejected node hands back its queue
    assert ingress(r) == queued
