"""Stopping a running job, the parts without a server: the slot's CallStop (a request from another
thread raises inside the call, and only there) and the node's Stopper on fakeredis (what it tells
slots, when it restarts one, what it leaves alone)."""

from __future__ import annotations

import json
import threading
import time

import fakeredis
import pytest
from rq.command import PUBSUB_CHANNEL_TEMPLATE

from gpufleet.dispatcher.errors import SettingsError
from gpufleet.dispatcher.fleet.node_claim import worker_name, worker_pid
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.worker.call_stop import CallStop, JobStopped
from gpufleet.worker.stopper import Stopper


def request_soon(stop: CallStop, execution_id: str, delay_s: float = 0.05) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay_s), stop.request(execution_id)))
    t.start()
    return t


def test_a_request_for_a_run_of_the_call_cuts_its_sleep_short() -> None:
    stop = CallStop()
    stop.install()
    started = time.monotonic()
    with pytest.raises(JobStopped), stop.stoppable(["e1", "e2"]):
        t = request_soon(stop, "e2")
        time.sleep(10)
    t.join()
    assert time.monotonic() - started < 5
    assert stop.requested == {"e2"}


def test_a_task_s_except_exception_does_not_swallow_the_stop() -> None:
    stop = CallStop()
    stop.install()
    with pytest.raises(JobStopped), stop.stoppable(["e1"]):
        t = request_soon(stop, "e1")
        try:
            time.sleep(10)
        except Exception:  # what a task might write
            pytest.fail("JobStopped is no Exception")
    t.join()


def test_a_request_for_another_run_or_after_the_call_does_nothing() -> None:
    stop = CallStop()
    stop.install()
    with stop.stoppable(["e1"]):
        assert stop.request("other") is False
        time.sleep(0.05)
    assert stop.request("e1") is False  # the call is over
    with stop.stoppable(["e3"]):
        time.sleep(0.1)  # a signal for the old call, had one been sent, must not reach this one
    assert stop.requested == frozenset()


NODE, INCARNATION = "n1", "inc1"
KEYS = Keys("t")


class Slots:
    """The node's slot processes as the Stopper sees them: their pids; the kills it asks for."""

    def __init__(self, *pids: int) -> None:
        self.pids = set(pids)
        self.killed: list[tuple[int, int]] = []

    def kill(self, pid: int, sig: int) -> None:
        self.killed.append((pid, sig))


def running(r: fakeredis.FakeRedis, job_id: str, execution_id: str, worker: str, *, asked: bool = True) -> str:
    """A run in the node queue's started registry, its job started by `worker`, asked to stop."""
    member = f"{job_id}:{execution_id}"
    r.zadd(Keys.rq_started(KEYS.node_queue(NODE)), {member: time.time() + 60})
    r.hset(Keys.rq_job(job_id), "worker_name", worker)
    if asked:
        r.sadd(KEYS.stop_requests(NODE), member)
    return member


def stopper(r: fakeredis.FakeRedis, slots: Slots, clock: list[float], grace_s: float = 10.0) -> Stopper:
    return Stopper(r, KEYS, NODE, INCARNATION, grace_s=grace_s, slot_pids=lambda: slots.pids,
                   clock=lambda: clock[0], kill=slots.kill)  # fmt: skip


def test_worker_pid_reads_the_pid_of_this_incarnation_s_slots_only() -> None:
    name = worker_name(NODE, f"{INCARNATION}.2")
    assert worker_pid(name, NODE, INCARNATION) == int(name.split(".")[3])
    assert worker_pid(name, NODE, "inc0") is None
    assert worker_pid("n1.inc1.x.12.ab", NODE, INCARNATION) is None


def test_the_slot_running_an_asked_run_is_told_again_until_it_stops_then_restarted_after_the_grace() -> None:
    r, slots, clock = fakeredis.FakeRedis(), Slots(4242), [0.0]
    worker = f"{NODE}.{INCARNATION}.0.4242.ab12"
    running(r, "j1", "e1", worker)
    channel = r.pubsub()
    channel.subscribe(PUBSUB_CHANNEL_TEMPLATE % worker)  # rq's command channel of that worker
    channel.get_message(timeout=1)
    s = stopper(r, slots, clock)
    assert s.step() == 1
    clock[0] = 5.0
    assert s.step() == 1
    commands = [json.loads(m["data"]) for m in iter(lambda: channel.get_message(timeout=0.2), None)]
    assert commands == [{"command": "stop-execution", "job_id": "j1", "execution_id": "e1"}] * 2
    assert slots.killed == []
    clock[0] = 10.0  # the grace has passed: the slot process is killed, once
    s.step()
    s.step()
    assert slots.killed == [(4242, 9)]


def test_requests_for_runs_that_are_over_are_dropped_and_other_processes_runs_are_left_alone() -> None:
    r, slots, clock = fakeredis.FakeRedis(), Slots(4242, 77), [0.0]
    r.sadd(KEYS.stop_requests(NODE), "gone:e0")  # ended before the stopper looked
    running(r, "j2", "e2", f"{NODE}.inc0.0.77.cd34")  # a run of an earlier incarnation: its recovery ends it
    running(r, "j3", "e3", f"{NODE}.{INCARNATION}.1.99.ef56")  # a process that is no slot of this node now
    s = stopper(r, slots, clock, grace_s=0.0)
    assert s.step() == 1
    assert {m.decode() for m in r.smembers(KEYS.stop_requests(NODE))} == {"j2:e2", "j3:e3"}
    assert slots.killed == []  # pid 99 is not a live slot: nothing is killed for it


def test_the_stop_grace_is_a_setting_and_a_negative_one_is_refused() -> None:
    assert Settings.from_env({"GPUFLEET_STOP_GRACE_S": "1"}).stop_grace_s == 1.0
    assert Settings().stop_grace_s == 10.0
    with pytest.raises(SettingsError, match="stop_grace_s must be >= 0"):
        Settings(stop_grace_s=-0.5)
