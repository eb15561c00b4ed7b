"""The dispatch loop's rounds against a real Redis: a job's end wakes a round that sees the freed
slot at once (the record step counts the end; no node re-read), while the health pass keeps to
the snapshot interval."""

from __future__ import annotations

from dataclasses import replace

import redis

from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.loop import Dispatcher
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.routing.policies import make_policy
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.job import wake_dispatcher
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.scripts import FencedWrites, Scripts
from gpufleet.worker.gpu import Reading
from gpufleet.worker.heartbeat import NodeInfo, heartbeat_fields
from gpufleet.worker.stats import StatsView
from tests.conftest import write_heartbeat
from tests.integration.test_take_next import node_worker


def test_a_freed_slot_is_filled_at_once_without_an_extra_health_pass(r: redis.Redis, settings: Settings) -> None:
    settings = replace(settings, prefetch=2)  # a node holds 3 jobs: a freed slot is the only room
    keys = Keys(settings.namespace)
    fields = heartbeat_fields(NodeInfo("n1"), StatsView(0, 0, 0, 1.0, 0.0), Reading("sim"))
    write_heartbeat(r, keys, "n1", fields, ttl_s=60)
    Submitter(r, settings).submit([JobSpec("gpufleet.worker.tasks:echo", i) for i in range(5)])
    now = [0.0]
    d = Dispatcher(r, settings, make_policy(settings.policy), clock=lambda: now[0])
    checks = []
    check = d.health.check
    d.health.check = lambda nodes, now_s=None: (checks.append(1), check(nodes, now_s))  # type: ignore[method-assign]

    assert d.dispatch_once().moved == 3  # capacity 1 + prefetch 2
    node_queue = keys.node_queue("n1")
    job_id = r.lpop(Keys.rq_queue(node_queue))  # a worker took a job, ran it and recorded its end:
    member = f"{job_id.decode()}:e1"
    r.zadd(Keys.rq_started(node_queue), {member: 1})
    writes = FencedWrites(r)
    writes.group(member).zrem(Keys.rq_started(node_queue), member)
    with r.pipeline() as p:
        Scripts(r, keys).apply_fenced(p, "n1", writes, events_max=settings.events_max)  # ... which counts the end
        wake_dispatcher(p, keys)  # ... and wakes it
        p.execute()
    assert d.dispatch_once().moved == 1  # the same instant: the freed slot is seen at once
    assert d.dispatch_once().moved == 0  # and only that one
    assert len(checks) == 1  # without a node read: the health pass waits for its interval
    now[0] += settings.snapshot_interval_s
    d.dispatch_once()
    assert len(checks) == 2


def test_an_idle_node_takes_each_job_at_once_however_many_ran_before(r: redis.Redis, settings: Settings) -> None:
    """One job at a time through a node that holds at most 3: each is routed in the round after
    its submit, with no node re-read between (the clock stands still), because each end is
    counted when recorded. Counting only placements between reads, the 4th would wait."""
    keys = Keys(settings.namespace)
    fields = heartbeat_fields(NodeInfo("n1"), StatsView(0, 0, 0, 1.0, 0.0), Reading("sim"))
    write_heartbeat(r, keys, "n1", fields, ttl_s=60, incarnation="i1")
    d = Dispatcher(r, settings, make_policy(settings.policy), clock=lambda: 0.0)
    submitter = Submitter(r, settings)
    for i in range(8):
        batch = submitter.submit([JobSpec("gpufleet.worker.tasks:echo", i)]).batch_id
        assert d.dispatch_once().moved == 1, f"job {i} was not routed"
        node_worker(r, settings).work(burst=True)  # a real worker of n1 runs it and records it
        assert r.hget(keys.batch_info(batch), "finished") == b"1"
    assert r.hgetall(keys.dispatch_ended) == {b"n1": b"1"}  # the last end: the next round takes it off
    d.dispatch_once()
    assert not r.exists(keys.dispatch_ended)


def test_a_slow_node_takes_a_job_only_once_enough_wait_in_the_ingress(r: redis.Redis, settings: Settings) -> None:
    """A fast node (0.1 s jobs) busy and an idle slow one (1 s), 3 jobs a second coming in: the
    slow node's threshold is 7 waiting jobs. One job waits for the fast node; once 7 wait, the
    round reads the ingress depth (the gates count it) and the slow node takes one."""
    keys = Keys(settings.namespace)
    for node_id, service_s in (("fast", 0.1), ("slow", 1.0)):
        fields = heartbeat_fields(NodeInfo(node_id), StatsView(0, 0, 0, service_s, 0.0), Reading("sim"))
        write_heartbeat(r, keys, node_id, fields, ttl_s=60, incarnation=node_id)
    r.zadd(Keys.rq_started(keys.node_queue("fast")), {"running-job:e1": 1})  # the fast node's slot is taken
    now = [0.0]
    d = Dispatcher(r, settings, make_policy(settings.policy), clock=lambda: now[0])
    d.arrivals.rate = 3.0  # as measured (no rate window closes in this test's few instants)
    assert d.dispatch_once().moved == 0  # an idle round hands the rate to the router...
    now[0] += settings.snapshot_interval_s  # ...whose next node read solves the thresholds for it
    submitter = Submitter(r, settings)
    submitter.submit([JobSpec("gpufleet.worker.tasks:echo", 0)])
    assert d.dispatch_once().moved == 0  # one waits: the fast node finishes it sooner
    assert d.router.gated
    submitter.submit([JobSpec("gpufleet.worker.tasks:echo", i) for i in range(1, 6)])
    assert d.dispatch_once().moved == 0  # 6 wait: still below the slow node's 7
    submitter.submit([JobSpec("gpufleet.worker.tasks:echo", 6)])
    assert d.dispatch_once().moved == 1  # 7 wait: the slow node takes one
    assert r.llen(Keys.rq_queue(keys.node_queue("slow"))) == 1
