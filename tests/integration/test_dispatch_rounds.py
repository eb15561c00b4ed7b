"""The dispatch loop's rounds against a real Redis: a job's end wakes a round that re-reads the
nodes at once, while the health pass keeps to the snapshot interval."""

from __future__ import annotations

import threading

import redis

from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.loop import Dispatcher
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.routing.policies import make_policy
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.job import wake_dispatcher
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.worker.gpu import Reading
from gpufleet.worker.heartbeat import NodeInfo, heartbeat_fields
from gpufleet.worker.stats import StatsView
from tests.conftest import write_heartbeat


def test_a_freed_slot_is_filled_at_once_without_an_extra_health_pass(r: redis.Redis, settings: Settings) -> None:
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
    node_queue = Keys.rq_queue(keys.node_queue("n1"))
    r.lpop(node_queue)  # a worker took a job and finished it:
    with r.pipeline() as p:
        wake_dispatcher(p, keys)  # ... which wakes the dispatcher
        p.execute()
    d._pause(threading.Event(), d.dispatch_once())  # the node is full: wait, and be woken
    assert d.dispatch_once().moved == 1  # the same instant: the freed slot is seen at once
    assert len(checks) == 1  # by a node read alone: the health pass waits for its interval
    now[0] += settings.snapshot_interval_s
    d.dispatch_once()
    assert len(checks) == 2
