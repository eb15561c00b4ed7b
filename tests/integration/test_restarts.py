"""A node id is run by one live process at a time: a restart under the same id gives back what
the killed process held, two live processes are refused, a stopped one that was taken over
stops itself, a killed slot's job is retried, and a job holding the GIL does not make its
node look dead. Real worker and dispatcher processes, kill -9, SIGSTOP."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gpufleet.dispatcher.client.results import read_progress
from gpufleet.dispatcher.fleet.snapshot import read_nodes
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import LocalFleet, SimNode

from .support import gpufleet, kill_tree, local_fleet, process_tree, tracebacks, wait_until
from .test_failures import cheap, finish, start, submit

NS = "fail"  # test_failures' helpers work in this namespace
KEYS = Keys(NS)


@pytest.fixture
def fleet(redis_server: RedisServer, tmp_path: Path) -> Iterator[LocalFleet]:
    with local_fleet(redis_server.url, NS, log_dir=str(tmp_path)) as f:
        yield f


def leftovers(r: redis.Redis, node_id: str) -> dict[str, int]:
    """What a node still holds once its batch is done: nothing, on a fleet that lost nothing."""
    queue = KEYS.node_queue(node_id)
    held = [k.decode() for k in r.smembers(KEYS.held_lists(node_id))]  # type: ignore[union-attr]
    counts = {"started": r.zcard(Keys.rq_started(queue)), "intermediate": r.llen(Keys.rq_intermediate(queue)),
              "held": sum(r.llen(k) for k in held)}  # fmt: skip
    return {k: v for k, v in counts.items() if v}


def test_a_worker_killed_and_restarted_under_its_node_id_leaves_nothing_behind(fleet: LocalFleet) -> None:
    """Given 400 jobs on two nodes, when one node's processes are SIGKILLed while running a job
    and restarted at once under the same node id, five times, every job finishes, and the node
    holds nothing at the end: what each killed process took or started was given back."""
    r = redis.Redis.from_url(fleet.redis_url)
    start(fleet, r, [SimNode("k1", capacity=2), SimNode("k2")])
    batch = submit(fleet, r, cheap(400, cost=0.05))
    for _ in range(5):
        wait_until(lambda: r.zcard(Keys.rq_started(KEYS.node_queue("k1"))) > 0, 30, "k1 to run a job")
        kill_tree(fleet.procs["k1"].pid)
        fleet.procs["k1"].wait()
        fleet.start_worker(SimNode("k1", capacity=2))
        fleet.wait_for_nodes(r, ["k1"])
    records = finish(r, batch)
    assert [rec["status"] for rec in records] == ["finished"] * 400
    assert leftovers(r, "k1") == {} and leftovers(r, "k2") == {}
    assert all(rec["attempts"] >= 1 for rec in records)


def test_a_second_live_worker_under_one_node_id_is_refused(fleet: LocalFleet) -> None:
    """Given a live worker w1, another `gpufleet worker --node-id w1` exits 1 with a message
    naming the live one, and w1 keeps its node."""
    r = redis.Redis.from_url(fleet.redis_url)
    start(fleet, r, [SimNode("w1")])
    holder = r.get(KEYS.alive("w1"))
    second = gpufleet(fleet.redis_url, NS, "worker", "--node-id", "w1", "--probe", "sim")
    assert second.returncode == 1, second.stderr
    assert "node id 'w1' is run by a live worker" in second.stderr and "Traceback" not in second.stderr
    assert r.get(KEYS.alive("w1")) == holder and fleet.procs["w1"].poll() is None
    [rec] = finish(r, submit(fleet, r, cheap(1)))
    assert rec["node"] == "w1"


def test_a_worker_stopped_past_its_ttl_and_taken_over_stops_itself(fleet: LocalFleet) -> None:
    """Given a worker SIGSTOPped longer than its liveness TTL and a new process started under
    its node id meanwhile, when the old one resumes it takes nothing, stops with a message, and
    the batch finishes on the new one with nothing left behind."""
    r = redis.Redis.from_url(fleet.redis_url)
    start(fleet, r, [SimNode("s1")])
    batch = submit(fleet, r, cheap(150, cost=0.02))
    wait_until(lambda: read_progress(r, KEYS, batch).finished >= 20, 30, "20 jobs to finish")
    old = fleet.procs["s1"]
    kill_tree(old.pid, signal.SIGSTOP)
    wait_until(lambda: not r.exists(KEYS.alive("s1")), 10, "the stopped node's liveness to expire")
    fleet.procs["s1-old"] = old
    fleet.start_worker(SimNode("s1"))
    fleet.wait_for_nodes(r, ["s1"])
    kill_tree(old.pid, signal.SIGCONT)
    assert old.wait(timeout=30) == 1  # taken over: NodeTakenOver, exit 1
    records = finish(r, batch)
    assert [rec["status"] for rec in records] == ["finished"] * 150
    assert leftovers(r, "s1") == {}
    log = (fleet.log_dir or "") + "/s1.log"
    assert "was taken over by another worker process" in Path(log).read_text()


def test_a_killed_slot_process_has_its_running_job_retried_at_once(fleet: LocalFleet) -> None:
    """Given a node of capacity 3 running three 2 s jobs, when one slot process is SIGKILLed,
    its job is handed back and runs again (attempts 2) while the node stays alive, and the
    slot is restarted: nothing waits for a liveness TTL that never expires."""
    r = redis.Redis.from_url(fleet.redis_url)
    start(fleet, r, [SimNode("c1", capacity=3)])
    batch = submit(fleet, r, cheap(3, cost=2.0))
    queue = KEYS.node_queue("c1")
    wait_until(lambda: r.zcard(Keys.rq_started(queue)) == 3, 30, "three jobs running")
    node_pid = fleet.procs["c1"].pid
    slots = [p for p in process_tree(node_pid) if p != node_pid]
    assert len(slots) >= 3
    kill_tree(slots[0])
    records = finish(r, batch, timeout_s=60)
    assert [rec["status"] for rec in records] == ["finished"] * 3
    assert sorted(rec["attempts"] for rec in records) == [1, 1, 2]
    assert leftovers(r, "c1") == {} and fleet.procs["c1"].poll() is None


def test_a_job_holding_the_gil_past_the_ttl_does_not_make_its_node_look_dead(fleet: LocalFleet) -> None:
    """Given a job that holds the GIL for three liveness TTLs (a C call that never releases it),
    its node stays alive throughout (the heartbeat runs in the node's own process) and the job
    runs exactly once."""
    r = redis.Redis.from_url(fleet.redis_url)
    start(fleet, r, [])
    fleet.start_worker(SimNode("g1"), "--allow", "tests.integration.tasks")
    fleet.wait_for_nodes(r, ["g1"])
    batch = submit(fleet, r, [JobSpec("tests.integration.tasks:hold_gil", 3)])
    wait_until(lambda: r.zcard(Keys.rq_started(KEYS.node_queue("g1"))) == 1, 30, "the job to start")
    while not read_progress(r, KEYS, batch).done:
        assert [n.alive for n in read_nodes(r, KEYS) if n.node_id == "g1"] == [True]
        time.sleep(0.1)
    [rec] = finish(r, batch)
    assert (rec["status"], rec["attempts"], rec["result"]) == ("finished", 1, "held")
    assert tracebacks(fleet.log_dir or "") == {}
