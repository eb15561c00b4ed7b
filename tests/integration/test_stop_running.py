"""`gpufleet cancel --running`: running jobs are stopped on their node and end canceled, the node
goes on working, and nothing else is lost. Real dispatcher and worker processes: a plain job, a
@batched call stopped whole or in part, a job that holds the GIL (its slot is restarted), and a
forwarded OpenAI request (abandoned); a node that dies before it could stop its job."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.utils import as_text

from gpufleet.dispatcher.client.openai_batch import FORWARD_FUNC
from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.fleet.control import cancel
from gpufleet.dispatcher.fleet.node_claim import worker_pid
from gpufleet.dispatcher.fleet.snapshot import read_nodes
from gpufleet.dispatcher.routing.models import OPENAI, JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.dispatcher.store.scripts import Scripts
from gpufleet.worker.fleet import LocalFleet, SimNode

from .fake_openai import MODEL, FakeOpenAI
from .support import gpufleet, kill_tree, local_fleet, tracebacks, wait_until

NS = "stop"
KEYS = Keys(NS)
NAP, NAPS = "tests.integration.tasks:nap", "tests.integration.tasks:naps"


@pytest.fixture
def fleet(redis_server: RedisServer, tmp_path: Path) -> Iterator[LocalFleet]:
    with local_fleet(redis_server.url, NS, log_dir=str(tmp_path)) as f:
        f.start_dispatcher()
        yield f


def start_node(f: LocalFleet, r: redis.Redis, node_id: str, *extra: str) -> None:
    f.start_worker(SimNode(node_id), "--allow", "tests.integration.tasks", *extra)
    f.wait_for_nodes(r, [node_id])


def submit(f: LocalFleet, r: redis.Redis, specs: list[JobSpec]) -> str:
    return Submitter(r, Settings(redis_url=f.redis_url, namespace=NS)).submit(specs).batch_id


def finish(r: redis.Redis, batch: str, timeout_s: float = 60) -> list[dict[str, Any]]:
    wait_until(lambda: read_progress(r, KEYS, batch).done, timeout_s, f"batch {batch} to end")
    return list(iter_results(r, KEYS, batch))


def job_ids(r: redis.Redis, batch: str) -> list[str]:
    return [as_text(j) for j in r.lrange(KEYS.batch_jobs(batch), 0, -1)]


def running_on(r: redis.Redis, node_id: str, n: int) -> None:
    wait_until(lambda: r.zcard(Keys.rq_started(KEYS.node_queue(node_id))) == n, 30, f"{n} job(s) running on {node_id}")


def incarnation(r: redis.Redis, node_id: str) -> str:
    return next(n.incarnation for n in read_nodes(r, KEYS) if n.node_id == node_id and n.alive)


def nothing_left(r: redis.Redis, node_id: str) -> None:
    """No run of the node is left in its started registry, and no stop request stays behind."""
    queue = KEYS.node_queue(node_id)
    wait_until(lambda: not r.zcard(Keys.rq_started(queue)) and not r.scard(KEYS.stop_requests(node_id)), 10,
               f"{node_id} to hold nothing")  # fmt: skip


def cancel_running(f: LocalFleet, target: str) -> tuple[dict[str, int], float]:
    """`gpufleet cancel TARGET --running --json`: its counts, and how long it took."""
    began = time.monotonic()
    out = gpufleet(f.redis_url, NS, "cancel", target, "--running", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), time.monotonic() - began


def test_a_running_job_is_stopped_in_its_process_and_the_node_goes_on(fleet: LocalFleet) -> None:
    """Given a job sleeping a minute, `cancel JOB --running` stops it within seconds: it ends
    canceled ("stopped on request"), its slot process is the one that runs the next job (the
    model stays warm), and the node leaves nothing behind. The job's rq execution records are
    gone first, as they are once a job runs past rq's execution TTL (about 2.5 minutes)."""
    r = redis.Redis.from_url(fleet.redis_url)
    start_node(fleet, r, "s1")
    batch = submit(fleet, r, [JobSpec(NAP, {"s": 60})])
    running_on(r, "s1", 1)
    [job_id] = job_ids(r, batch)
    pid = worker_pid(as_text(r.hget(Keys.rq_job(job_id), "worker_name")), "s1", incarnation(r, "s1"))
    [member] = [as_text(m) for m in r.zrange(Keys.rq_started(KEYS.node_queue("s1")), 0, -1)]
    r.delete(Keys.rq_execution(*member.split(":")), Keys.rq_executions(job_id))
    counts, took_s = cancel_running(fleet, job_id)
    assert counts == {"canceled": 0, "stopped": 1, "stopping": 0, "left": 0}
    assert took_s < 15
    [rec] = finish(r, batch, timeout_s=5)
    assert (rec["status"], rec["error"], rec["attempts"], rec["node"]) == ("canceled", "stopped on request", 1, "s1")
    assert read_progress(r, KEYS, batch).canceled == 1
    [later] = finish(r, submit(fleet, r, [JobSpec(NAP, {"s": 0})]))
    assert later["status"] == "finished" and later["result"] == {"pid": pid, "node": "s1"}
    nothing_left(r, "s1")
    assert tracebacks(fleet.log_dir or "") == {}


def warm_up_batching(f: LocalFleet, r: redis.Redis, node_id: str) -> None:
    """Let the node learn the batched task's size, so the dispatcher routes a whole call's jobs."""
    finish(r, submit(f, r, [JobSpec(NAPS, {"s": 0})]))
    wait_until(lambda: r.hget(KEYS.heartbeat(node_id), "capacity") == b"3", 10, "the node to advertise 3")


def test_a_batched_call_is_stopped_as_a_whole(fleet: LocalFleet) -> None:
    """Given three jobs of a batch in one @batched call sleeping a minute, `cancel BATCH --running`
    stops the call once: all three end canceled within seconds, and the slot goes on."""
    r = redis.Redis.from_url(fleet.redis_url)
    start_node(fleet, r, "b1")
    warm_up_batching(fleet, r, "b1")
    batch = submit(fleet, r, [JobSpec(NAPS, {"s": 60, "i": i}) for i in range(3)])
    running_on(r, "b1", 3)
    began = time.monotonic()
    out = gpufleet(fleet.redis_url, NS, "cancel", batch, "--running")
    assert out.returncode == 0 and out.stdout == "canceled 0, stopped 3 running; 0 already ended\n", out
    assert time.monotonic() - began < 15
    records = finish(r, batch, timeout_s=5)
    assert [(rec["status"], rec["attempts"]) for rec in records] == [("canceled", 1)] * 3
    [later] = finish(r, submit(fleet, r, [JobSpec(NAPS, {"s": 0, "i": 9})]))
    assert later["status"] == "finished"
    nothing_left(r, "b1")


def test_stopping_one_job_of_a_batched_call_runs_its_batch_mates_again(fleet: LocalFleet) -> None:
    """Given one @batched call of three jobs, stopping only the slow one cuts the call short: that
    job ends canceled, the other two run again (attempt 2) and finish; none is lost."""
    r = redis.Redis.from_url(fleet.redis_url)
    start_node(fleet, r, "b2")
    warm_up_batching(fleet, r, "b2")
    batch = submit(fleet, r, [JobSpec(NAPS, {"s": 60 if i == 0 else 0, "i": i}) for i in range(3)])
    running_on(r, "b2", 3)
    slow = job_ids(r, batch)[0]
    counts, _ = cancel_running(fleet, slow)
    assert counts == {"canceled": 0, "stopped": 1, "stopping": 0, "left": 0}
    records = finish(r, batch, timeout_s=30)
    assert [(rec["status"], rec["attempts"]) for rec in records] == [("canceled", 1), ("finished", 2),
                                                                     ("finished", 2)]  # fmt: skip
    nothing_left(r, "b2")


def test_a_job_that_does_not_stop_has_its_slot_restarted_after_the_grace(fleet: LocalFleet) -> None:
    """Given a job holding the GIL for a minute (a C call that never returns to Python: no signal
    handler runs), the node kills its slot process once the stop grace (1 s here) has passed; the
    job ends canceled, not retried; the node stays alive (same incarnation) and its new slot
    process runs the next job."""
    r = redis.Redis.from_url(fleet.redis_url)
    fleet.env["GPUFLEET_STOP_GRACE_S"] = "1"
    start_node(fleet, r, "g1")
    before = incarnation(r, "g1")
    batch = submit(fleet, r, [JobSpec("tests.integration.tasks:hold_gil", 60)])
    running_on(r, "g1", 1)
    [job_id] = job_ids(r, batch)
    pid = worker_pid(as_text(r.hget(Keys.rq_job(job_id), "worker_name")), "g1", before)
    began = time.monotonic()
    report = cancel(r, Settings(redis_url=fleet.redis_url, namespace=NS, stop_grace_s=1.0), job_id, running=True,
                    wait_s=30)  # fmt: skip
    assert (report.stopped, report.stopping, report.left) == (1, 0, 0)
    assert 1.0 <= time.monotonic() - began < 20
    [rec] = finish(r, batch, timeout_s=5)
    assert (rec["status"], rec["error"], rec["attempts"]) == ("canceled", "stopped on request", 1)
    [later] = finish(r, submit(fleet, r, [JobSpec(NAP, {"s": 0})]))
    assert later["status"] == "finished" and later["result"]["pid"] != pid
    assert incarnation(r, "g1") == before
    nothing_left(r, "g1")


def test_a_forwarded_request_asked_to_stop_is_abandoned(fleet: LocalFleet) -> None:
    """Given a forwarder with a request its server has not answered, `cancel --running` abandons
    it: the server sees the connection close, the job ends canceled, and the forwarder serves
    the next request."""
    r = redis.Redis.from_url(fleet.redis_url)
    with FakeOpenAI(slow_s=60) as server:
        fleet.start_worker(SimNode("fw1"), "--openai-url", server.url)
        fleet.wait_for_nodes(r, ["fw1"])

        def request(answer: str, i: int) -> JobSpec:
            body = {"model": MODEL, "id": i, "answer": answer, "messages": [{"role": "user", "content": "hi"}]}
            return JobSpec(FORWARD_FUNC, {"method": "POST", "url": "/v1/chat/completions", "body": body},
                           model=MODEL, backend=OPENAI)  # fmt: skip

        batch = submit(fleet, r, [request("hang", 1)])
        running_on(r, "fw1", 1)
        wait_until(lambda: server.seen["1"] == 1, 10, "the server to have the request")
        counts, took_s = cancel_running(fleet, batch)
        assert counts == {"canceled": 0, "stopped": 1, "stopping": 0, "left": 0} and took_s < 15
        wait_until(lambda: server.abandoned["1"] == 1, 10, "the server to see the request abandoned")
        [rec] = finish(r, batch, timeout_s=5)
        assert (rec["status"], rec["error"]) == ("canceled", "stopped on request")
        [later] = finish(r, submit(fleet, r, [request("ok", 2)]))
        assert later["status"] == "finished"
        nothing_left(r, "fw1")


def test_request_stop_asks_only_for_runs_still_started_and_wakes_the_node(r: redis.Redis, settings: Settings) -> None:
    """request_stop.lua against a real redis-server: a run in the node queue's started registry
    is asked (the request expires with its TTL, the stopper gets one wake-up token however many
    asks), a run that is over is not."""
    keys, scripts = Keys(settings.namespace), Scripts(r, Keys(settings.namespace))
    r.zadd(Keys.rq_started(keys.node_queue("n")), {"j1:e1": time.time() + 60})
    assert scripts.request_stop("n", ["j1:e1", "j0:e0"], ttl_s=30) == [True, False]
    assert scripts.request_stop("n", ["j1:e1"], ttl_s=30) == [True]
    assert r.smembers(keys.stop_requests("n")) == {b"j1:e1"}
    assert 0 < r.ttl(keys.stop_requests("n")) <= 30
    assert r.lrange(keys.stop_wakeup("n"), 0, -1) == [b"1"]
    assert scripts.request_stop("n", ["j0:e0"], ttl_s=30) == [False] and r.llen(keys.stop_wakeup("n")) == 1


def test_a_stop_asked_of_a_node_that_dies_first_is_not_undone(fleet: LocalFleet) -> None:
    """Given a job asked to stop on a node frozen (SIGSTOP) before its stopper could act, the
    dispatcher, finding the node dead, ends the job canceled instead of retrying it."""
    r = redis.Redis.from_url(fleet.redis_url)
    start_node(fleet, r, "f1")
    batch = submit(fleet, r, [JobSpec(NAP, {"s": 60})])
    running_on(r, "f1", 1)
    [job_id] = job_ids(r, batch)
    kill_tree(fleet.procs["f1"].pid, signal.SIGSTOP)
    try:
        report = cancel(r, Settings(redis_url=fleet.redis_url, namespace=NS), job_id, running=True, wait_s=0)
        assert (report.stopped, report.stopping) == (0, 1)  # asked; only the dispatcher can end it now
        [rec] = finish(r, batch, timeout_s=15)
    finally:
        kill_tree(fleet.procs["f1"].pid)
    assert (rec["status"], rec["error"], rec["attempts"]) == ("canceled", "stopped on request", 1)
    assert r.llen(Keys.rq_queue(KEYS.ingress_queue("normal"))) == 0 and not r.scard(KEYS.stop_requests("f1"))
