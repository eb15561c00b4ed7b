"""`gpufleet worker --openai-url`: a node that forwards OpenAI requests, many in flight, with
the guarantees of any node. Real dispatcher and worker processes, against a small local
OpenAI-shaped server (fake_openai.py) that can answer 429, 5xx, slowly, or not at all."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Job
from rq.results import Result
from rq.utils import as_text

from gpufleet.dispatcher.client.openai_batch import BATCH_CANCELLED, FORWARD_FUNC, output_line, parse_failure
from gpufleet.dispatcher.client.results import read_progress
from gpufleet.dispatcher.fleet.snapshot import read_nodes
from gpufleet.dispatcher.routing.models import OPENAI, JobSpec
from gpufleet.dispatcher.store.job import SERIALIZER
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import LocalFleet, SimNode

from .fake_openai import MODEL, FakeOpenAI
from .support import gpufleet, kill_tree, local_fleet, tracebacks, wait_until
from .test_failures import KEYS, NS, finish, submit


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as s:
        yield s


@pytest.fixture
def fleet(redis_server: RedisServer, tmp_path: Path) -> Iterator[LocalFleet]:
    with local_fleet(redis_server.url, NS, log_dir=str(tmp_path)) as f:
        f.start_dispatcher(name="d0")
        yield f


def forwarder(f: LocalFleet, r: redis.Redis, node_id: str, url: str, *extra: str) -> None:
    f.start_worker(SimNode(node_id), "--openai-url", url, *extra)
    f.wait_for_nodes(r, [node_id])


def requests(n: int, answer: str = "ok", retries: int = 3, **kw: Any) -> list[JobSpec]:
    return [JobSpec(FORWARD_FUNC, {"method": "POST", "url": "/v1/chat/completions",
                                   "body": {"model": MODEL, "id": i, "answer": answer,
                                            "messages": [{"role": "user", "content": "hi"}]}},
                    client_id=str(i), model=MODEL, backend=OPENAI, retries=retries, **kw)
            for i in range(n)]  # fmt: skip


def test_a_forwarder_keeps_many_requests_in_flight_and_records_each_response(
    fleet: LocalFleet, server: FakeOpenAI
) -> None:
    """Given 40 requests and a forwarder of concurrency 8, every job finishes with the server's
    answer as its result, and the server saw 8 requests at once: one process, many in flight."""
    r = redis.Redis.from_url(fleet.redis_url)
    server.answer_s = 1.0  # long enough that all 8 are started before the first answer, on a busy machine too
    forwarder(fleet, r, "fw1", server.url, "--concurrency", "8")
    records = finish(r, submit(fleet, r, requests(40)))
    assert [rec["status"] for rec in records] == ["finished"] * 40
    first = records[0]["result"]
    assert first["status_code"] == 200 and first["request_id"].startswith("req-")
    assert first["body"]["choices"][0]["message"]["content"] == "echo 0"
    assert server.most_in_flight == 8
    [node] = [n for n in read_nodes(r, KEYS) if n.node_id == "fw1"]
    assert (node.capacity, node.backend, node.models) == (8, OPENAI, (MODEL,))
    assert (node.server_waiting, node.kv_cache_usage) == (3, 0.42)  # from the server's /metrics
    assert tracebacks(fleet.log_dir or "") == {}


def test_429_and_5xx_are_retried_and_other_4xx_fail_with_the_servers_message(
    fleet: LocalFleet, server: FakeOpenAI
) -> None:
    r = redis.Redis.from_url(fleet.redis_url)
    forwarder(fleet, r, "fw1", server.url)
    once = finish(r, submit(fleet, r, requests(3, "429-once", retries=2)))
    assert [(rec["status"], rec["attempts"]) for rec in once] == [("finished", 2)] * 3
    [refused] = finish(r, submit(fleet, r, requests(1, "400", retries=3)))
    assert (refused["status"], refused["attempts"]) == ("failed", 1)  # a bad request is not sent again
    assert parse_failure(refused["error"]) == {"status_code": 400, "code": "invalid_parameter",
                                               "message": "bad request: no such parameter 'x'"}  # fmt: skip
    [broken] = finish(r, submit(fleet, r, requests(1, "500", retries=1)))
    assert (broken["status"], broken["attempts"]) == ("failed", 2)
    assert parse_failure(broken["error"])["status_code"] == 500  # type: ignore[index]


def test_a_request_past_its_timeout_is_retried_then_failed(fleet: LocalFleet, server: FakeOpenAI) -> None:
    r = redis.Redis.from_url(fleet.redis_url)
    server.slow_s = 3.0
    forwarder(fleet, r, "fw1", server.url, "--request-timeout-s", "0.5")
    [slow] = finish(r, submit(fleet, r, requests(1, "slow", retries=1)))
    assert (slow["status"], slow["attempts"]) == ("failed", 2)
    assert parse_failure(slow["error"])["code"] == "timeout"  # type: ignore[index]


def test_a_server_that_goes_away_makes_its_node_unhealthy_until_it_is_back(
    fleet: LocalFleet, server: FakeOpenAI
) -> None:
    """Given a forwarder whose server starts answering 503, the node turns unhealthy (nothing
    routed there, its queue handed back); once the server answers again, the node is healthy
    and the batch finishes."""
    r = redis.Redis.from_url(fleet.redis_url)
    forwarder(fleet, r, "fw1", server.url)
    server.down = True
    wait_until(lambda: [n.healthy for n in read_nodes(r, KEYS) if n.node_id == "fw1"] == [False], 20,
               "the node to turn unhealthy")  # fmt: skip
    [node] = [n for n in read_nodes(r, KEYS) if n.node_id == "fw1"]
    assert "openai server" in node.health_reason and "503" in node.health_reason
    batch = submit(fleet, r, requests(10))
    server.down = False
    records = finish(r, batch)
    assert [rec["status"] for rec in records] == ["finished"] * 10


def test_a_killed_forwarder_s_requests_are_retried_on_another(fleet: LocalFleet, server: FakeOpenAI) -> None:
    """Given two forwarders sharing 60 requests, when one is SIGKILLed with requests in flight,
    every job still finishes; only those in flight on it ran twice."""
    r = redis.Redis.from_url(fleet.redis_url)
    server.answer_s = 0.1
    forwarder(fleet, r, "fw1", server.url, "--concurrency", "4")
    forwarder(fleet, r, "fw2", server.url, "--concurrency", "4")
    batch = submit(fleet, r, requests(60))
    wait_until(lambda: r.zcard(Keys.rq_started(KEYS.node_queue("fw1"))) > 0, 30, "fw1 to have requests in flight")
    kill_tree(fleet.procs["fw1"].pid)
    records = finish(r, batch, timeout_s=120)
    assert [rec["status"] for rec in records] == ["finished"] * 60
    assert sum(rec["attempts"] for rec in records) <= 60 + 4


def test_a_python_job_never_lands_on_a_forwarder_nor_a_request_on_a_python_worker(
    fleet: LocalFleet, server: FakeOpenAI
) -> None:
    r = redis.Redis.from_url(fleet.redis_url)
    forwarder(fleet, r, "fw1", server.url)
    fleet.start_worker(SimNode("py1"))
    fleet.wait_for_nodes(r, ["py1"])
    plain = finish(r, submit(fleet, r, [JobSpec("gpufleet.worker.tasks:echo", i) for i in range(10)]))
    forwarded = finish(r, submit(fleet, r, requests(10)))
    assert {rec["node"] for rec in plain} == {"py1"} and {rec["node"] for rec in forwarded} == {"fw1"}


def test_drain_lets_requests_in_flight_finish(fleet: LocalFleet, server: FakeOpenAI) -> None:
    """Given a forwarder with requests in flight, SIGTERM drains it: the requests it had end
    `finished`, the rest wait for another node, and the worker exits 0."""
    r = redis.Redis.from_url(fleet.redis_url)
    server.answer_s = 0.5
    forwarder(fleet, r, "fw1", server.url, "--concurrency", "4")
    batch = submit(fleet, r, requests(12))
    wait_until(lambda: r.zcard(Keys.rq_started(KEYS.node_queue("fw1"))) == 4, 30, "four requests in flight")
    fleet.procs["fw1"].send_signal(signal.SIGTERM)
    assert fleet.procs.pop("fw1").wait(timeout=30) == 0
    p = read_progress(r, KEYS, batch)
    assert p.finished >= 4 and p.failed == 0
    forwarder(fleet, r, "fw2", server.url)
    assert [rec["status"] for rec in finish(r, batch)] == ["finished"] * 12


def test_cancel_stops_what_was_not_sent_and_lets_requests_in_flight_finish(
    fleet: LocalFleet, server: FakeOpenAI
) -> None:
    """Given 12 requests and a forwarder with 2 in flight, `gpufleet cancel BATCH` cancels the
    ones not sent (the OpenAI output says batch_cancelled), the 2 sent finish, and the server
    never sees the canceled ones."""
    r = redis.Redis.from_url(fleet.redis_url)
    server.answer_s = 0.5
    forwarder(fleet, r, "fw1", server.url, "--concurrency", "2")
    batch = submit(fleet, r, requests(12))
    wait_until(lambda: r.zcard(Keys.rq_started(KEYS.node_queue("fw1"))) == 2, 30, "two requests in flight")
    done = gpufleet(fleet.redis_url, NS, "cancel", batch, "--json")
    assert done.returncode == 0, done.stderr
    records = finish(r, batch)
    states = Counter(rec["status"] for rec in records)
    assert states["finished"] >= 2 and states["finished"] + states["canceled"] == 12 and states["canceled"] >= 8
    assert sum(server.seen.values()) == states["finished"]
    canceled = next(rec for rec in records if rec["status"] == "canceled")
    assert output_line(canceled) is not None and output_line(canceled)[0]["error"]["code"] == BATCH_CANCELLED  # type: ignore[index]


def test_a_frozen_forwarder_s_late_responses_are_dropped(fleet: LocalFleet, server: FakeOpenAI) -> None:
    """Given a forwarder frozen (SIGSTOP) with requests in flight past its liveness TTL, its
    requests are retried on another forwarder; when it thaws, the responses it then reads are
    not recorded: each job has exactly one result, the second node's."""
    r = redis.Redis.from_url(fleet.redis_url)
    server.answer_s = 0.3
    forwarder(fleet, r, "fw1", server.url, "--concurrency", "4")
    batch = submit(fleet, r, requests(8))
    wait_until(lambda: r.zcard(Keys.rq_started(KEYS.node_queue("fw1"))) == 4, 30, "four requests in flight on fw1")
    kill_tree(fleet.procs["fw1"].pid, signal.SIGSTOP)
    frozen = {as_text(m).split(":")[0] for m in r.zrange(Keys.rq_started(KEYS.node_queue("fw1")), 0, -1)}
    forwarder(fleet, r, "fw2", server.url, "--concurrency", "4")
    records = finish(r, batch)
    kill_tree(fleet.procs["fw1"].pid, signal.SIGCONT)
    log = Path(fleet.log_dir or "", "fw1.log")
    wait_until(lambda: log.read_text().count("late result dropped") == len(frozen), 20,
               "the thawed forwarder to drop its late responses")  # fmt: skip
    assert [rec["status"] for rec in records] == ["finished"] * 8
    for rec in records:
        stored = Result.all(Job.fetch(rec["job_id"], connection=r, serializer=SERIALIZER), serializer=SERIALIZER)
        assert len(stored) == 1, rec
    assert {rec["node"] for rec in records if rec["job_id"] in frozen} == {"fw2"}
