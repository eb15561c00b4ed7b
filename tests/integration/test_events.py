"""Events and notifications on a real redis-server: the scripts write each state change as an
event (real worker processes and dispatchers, the CLI as a subprocess), the stream stays capped,
and a batch's summary reaches its --notify URL, on a retry when the receiver fails at first."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gpufleet.dispatcher.client.api import Client
from gpufleet.dispatcher.client.notify import set_notify
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.errors import SettingsError
from gpufleet.dispatcher.fleet.control import cancel
from gpufleet.dispatcher.observe.notifier import Notifier
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.events import BatchField, EventReader
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import GPUFLEET, LocalFleet, SimNode

from .support import FAST_ENV, gpufleet, local_fleet, wait_until

NS = "ev"
KEYS = Keys(NS)
SYNTHETIC = "gpufleet.worker.tasks:synthetic"


@pytest.fixture
def fleet(redis_server: RedisServer) -> Iterator[LocalFleet]:
    """A dispatcher and one sim worker, up."""
    with local_fleet(redis_server.url, NS) as f:
        f.start_dispatcher()
        f.start_worker(SimNode("n1"))
        f.wait_for_nodes(redis.Redis.from_url(redis_server.url), ["n1"])
        yield f


def job_file(tmp_path: Path, jobs: list[dict[str, Any]]) -> str:
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps({"func": SYNTHETIC, **job}) + "\n" for job in jobs))
    return str(path)


def events(url: str, *args: str) -> list[dict[str, Any]]:
    out = gpufleet(url, NS, "events", "--json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def submit(r: redis.Redis, url: str, n: int, batch: str) -> None:
    Submitter(r, Settings(redis_url=url, namespace=NS)).submit([JobSpec(SYNTHETIC, {"cost": 0})] * n, batch_id=batch)


def test_a_batch_shows_submitted_each_start_and_finish_and_one_end(fleet: LocalFleet, tmp_path: Path) -> None:
    """Given two batches run by a real worker, `events --batch B --json` shows B's submit, a
    start and a later finish for each of its jobs, and one batch_ended, last, with its counts;
    the other batch's events are left out, and the human lines are the same events."""
    url = fleet.redis_url
    assert gpufleet(url, NS, "submit", job_file(tmp_path, [{"input": {"cost": 0}}]), "--batch", "other",
                    "--wait").returncode == 0  # fmt: skip
    out = gpufleet(url, NS, "submit", job_file(tmp_path, [{"input": {"cost": 0, "i": i}} for i in range(6)]),
                   "--batch", "b1", "--wait")  # fmt: skip
    assert out.returncode == 0, out.stderr
    seen = events(url, "--batch", "b1")
    assert {e["batch"] for e in seen} == {"b1"}
    assert seen[0] == {**seen[0], "event": "batch_submitted", "size": 6, "tenant": "default"}
    assert seen[-1] == {**seen[-1], "event": "batch_ended", "size": 6, "finished": 6, "failed": 0, "canceled": 0}
    assert [e["event"] for e in seen].count("batch_ended") == 1
    started = {e["job"]: e["id"] for e in seen if e["event"] == "job_started"}
    finished = {e["job"]: e["id"] for e in seen if e["event"] == "job_finished"}
    assert len(started) == 6 and started.keys() == finished.keys()
    assert all(tuple(map(int, started[j].split("-"))) < tuple(map(int, finished[j].split("-"))) for j in started)
    assert {e["node"] for e in seen if e["event"] in ("job_started", "job_finished")} == {"n1"}
    lines = gpufleet(url, NS, "events", "--batch", "b1").stdout.splitlines()
    assert [line.split()[1] for line in lines] == [e["event"] for e in seen]
    assert lines[-1].endswith("batch_ended batch=b1 size=6 finished=6 failed=0 canceled=0")
    assert len(events(url)) == len(seen) + 4  # the other batch: submitted, started, finished, ended


def test_each_job_of_a_batched_run_has_its_start(redis_server: RedisServer) -> None:
    """Given three jobs of a batch-of-three task, the first is taken (take_job) and the other
    two join it (start_jobs): each start is an event, and so is each finish."""
    r = redis.Redis.from_url(redis_server.url)
    with local_fleet(redis_server.url, NS) as fleet:
        fleet.start_dispatcher("--prefetch", "2")  # the node holds all three, so the gather finds them
        fleet.start_worker(SimNode("g1"), "--allow", "gpufleet.worker.tasks", "--allow", "tests.integration.tasks")
        fleet.wait_for_nodes(r, ["g1"])
        batched = JobSpec("tests.integration.tasks:three_at_once", 0)
        Submitter(r, Settings(redis_url=redis_server.url, namespace=NS)).submit([batched] * 3, batch_id="g")
        wait_until(lambda: r.hget(KEYS.batch_info("g"), "finished") == b"3", 60, "the batch of three")
    seen = [e.record() for e in EventReader(r, KEYS, batch="g").kept()]
    assert [e["event"] for e in seen].count("job_started") == 3
    assert {(e["node"], e["attempt"]) for e in seen if e["event"] == "job_started"} == {("g1", 1)}
    assert len({e["job"] for e in seen if e["event"] == "job_finished"}) == 3 and seen[-1]["event"] == "batch_ended"


def test_a_retry_a_failure_a_requeue_and_the_second_end_are_events(fleet: LocalFleet, tmp_path: Path) -> None:
    """Given a job that fails twice (retries 1) beside one that finishes, the events say the
    first attempt was retried and the second failed, with the error; the batch ends with one
    failure. `requeue --failed` reopens the batch and it ends a second time."""
    url = fleet.redis_url
    jobs = [{"input": {"cost": 0, "fail": True}, "retries": 1}, {"input": {"cost": 0}}]
    assert gpufleet(url, NS, "submit", job_file(tmp_path, jobs), "--batch", "f1", "--wait").returncode == 1
    seen = events(url, "--batch", "f1")
    failing = next(e["job"] for e in seen if e["event"] == "job_retried")
    attempts = [(e["event"], e.get("attempt")) for e in seen if e.get("job") == failing]
    assert attempts == [("job_started", 1), ("job_retried", 1), ("job_started", 2), ("job_failed", 2)]
    error = "RuntimeError: synthetic failure requested by the job input"
    assert {e["error"] for e in seen if e["event"] in ("job_retried", "job_failed")} == {error}
    ended = [e for e in seen if e["event"] == "batch_ended"]
    assert [(e["finished"], e["failed"]) for e in ended] == [(1, 1)]

    assert gpufleet(url, NS, "requeue", "--failed", "--batch", "f1").returncode == 0
    r = redis.Redis.from_url(url)
    wait_until(lambda: len([e for e in EventReader(r, KEYS, batch="f1").kept() if e.kind == "batch_ended"]) == 2,
               30, "the requeued batch to end again")  # fmt: skip
    again = events(url, "--batch", "f1")[len(seen):]
    assert [e["event"] for e in again][:1] == ["job_requeued"] and again[0]["job"] == failing
    assert again[-1] == {**again[-1], "event": "batch_ended", "finished": 1, "failed": 1}


def test_cancel_writes_each_job_canceled_and_the_end_and_the_stream_stays_capped(r: redis.Redis,
                                                                                  redis_server: RedisServer) -> None:
    """Given 600 queued jobs and a stream capped at 100, a cancel writes an event per job: the
    stream keeps about the newest 100 (whole stream nodes are trimmed), ending with the
    batch's one batch_ended."""
    settings = Settings(redis_url=redis_server.url, namespace=NS, events_max=100)
    submit(r, redis_server.url, 600, "c1")
    assert cancel(r, settings, "c1").canceled == 600
    assert 100 <= r.xlen(KEYS.events) < 200
    kept = list(EventReader(r, KEYS).kept())
    assert {e.kind for e in kept[:-1]} == {"job_canceled"} and {e.fields["error"] for e in kept[:-1]} == {"canceled"}
    assert (kept[-1].kind, kept[-1].fields["canceled"], kept[-1].fields["size"]) == ("batch_ended", 600, 600)


def test_a_fleet_running_a_batch_keeps_the_stream_capped(redis_server: RedisServer) -> None:
    """Workers and dispatcher with GPUFLEET_EVENTS_MAX=100: 400 jobs write over 800 events, and
    the stream ends near 100 entries, the newest, the batch's end last."""
    r = redis.Redis.from_url(redis_server.url)
    r.flushdb()
    fleet = LocalFleet(redis_server.url, namespace=NS, env={**FAST_ENV, "GPUFLEET_EVENTS_MAX": "100"})
    try:
        fleet.start_dispatcher()
        fleet.start_worker(SimNode("n1"))
        fleet.wait_for_nodes(r, ["n1"])
        submit(r, redis_server.url, 400, "big")
        wait_until(lambda: r.hget(KEYS.batch_info("big"), "finished") == b"400", 60, "400 jobs to finish")
    finally:
        fleet.stop()
    assert 100 <= r.xlen(KEYS.events) < 200
    assert list(EventReader(r, KEYS).kept())[-1].kind == "batch_ended"


def test_follow_prints_each_new_event_and_ctrl_c_ends_it_quietly(r: redis.Redis, redis_server: RedisServer) -> None:
    submit(r, redis_server.url, 1, "old")
    cmd = [*GPUFLEET, "--redis-url", redis_server.url, "--namespace", NS, "events", "--follow", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **FAST_ENV})  # fmt: skip
    try:
        assert json.loads(read_line(proc))["batch"] == "old"  # what was kept
        submit(r, redis_server.url, 1, "new")  # while it follows
        line = json.loads(read_line(proc))
        assert (line["event"], line["batch"], line["size"]) == ("batch_submitted", "new", 1)
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in stderr


def read_line(proc: subprocess.Popen[str], timeout_s: float = 10.0) -> str:
    """The next line `proc` prints, or AssertionError after `timeout_s`."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, f"no line within {timeout_s} s"
    return proc.stdout.readline()


class Receiver:
    """A local HTTP endpoint (stdlib http.server): keeps each POSTed JSON body, and answers
    `statuses` in turn, then 200."""

    def __init__(self, *statuses: int) -> None:
        self.statuses, self.bodies = list(statuses), list[dict[str, Any]]()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=t"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    served = Receiver()
    yield served
    served.close()


def test_notify_posts_the_summary_once_the_batch_ends(fleet: LocalFleet, receiver: Receiver, tmp_path: Path) -> None:
    """Given `submit --notify URL` of 3 jobs, one failing, the dispatcher POSTs the batch's
    summary when it ends: its counts, its duration, the failed job and its error, and the
    batch_ended event's id; nothing stays to send."""
    url = fleet.redis_url
    jobs = [{"input": {"cost": 0}, "id": "ok1"}, {"input": {"cost": 0, "fail": True}, "id": "bad"},
            {"input": {"cost": 0}, "id": "ok2"}]  # fmt: skip
    out = gpufleet(url, NS, "submit", job_file(tmp_path, jobs), "--batch", "n1", "--notify", receiver.url)
    assert out.returncode == 0, out.stderr
    wait_until(lambda: receiver.bodies, 30, "the notification")
    [body] = receiver.bodies
    ended = [e for e in events(url, "--batch", "n1") if e["event"] == "batch_ended"]
    assert {k: body[k] for k in ("batch", "size", "finished", "failed", "canceled", "event")} == {
        "batch": "n1", "size": 3, "finished": 2, "failed": 1, "canceled": 0, "event": ended[0]["id"]}  # fmt: skip
    assert [(f["id"], f["error"]) for f in body["failures"]] == [
        ("bad", "RuntimeError: synthetic failure requested by the job input")]  # fmt: skip
    assert 0 <= body["duration_s"] < 30 and body["ended_at"] == ended[0]["time"]
    r = redis.Redis.from_url(url)
    wait_until(lambda: r.hkeys(KEYS.notifications) == [b"cursor"], 10, "the delivered notification to be dropped")


def test_a_receiver_that_fails_at_first_gets_the_summary_on_a_retry(fleet: LocalFleet, tmp_path: Path) -> None:
    """Given a receiver that answers 500 twice, the dispatcher tries again after 1 s and 2 s,
    and the third POST, the same summary, is delivered."""
    failing = Receiver(500, 500)
    try:
        out = gpufleet(fleet.redis_url, NS, "submit", job_file(tmp_path, [{"input": {"cost": 0}}]), "--batch", "n2",
                       "--notify", failing.url)  # fmt: skip
        assert out.returncode == 0, out.stderr
        wait_until(lambda: len(failing.bodies) == 3, 30, "three tries")
    finally:
        failing.close()
    assert len({json.dumps(body, sort_keys=True) for body in failing.bodies}) == 1
    assert (failing.bodies[0]["batch"], failing.bodies[0]["finished"]) == ("n2", 1)


class Transport:
    """An httpx MockTransport answering `statuses` in turn, then 200, keeping each body."""

    def __init__(self, *statuses: int) -> None:
        self.statuses, self.bodies = list(statuses), list[dict[str, Any]]()
        self.mock = httpx.MockTransport(self.reply)

    def reply(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        return httpx.Response(self.statuses.pop(0) if self.statuses else 200)


def ended_batch(r: redis.Redis, url: str, batch: str, notify: str | None) -> None:
    """A batch of 2, ended by a cancel (end_jobs.lua counts it and writes its batch_ended)."""
    submit(r, url, 2, batch)
    if notify is not None:
        set_notify(r, KEYS, batch, notify)
    assert cancel(r, Settings(redis_url=url, namespace=NS), batch).canceled == 2


def test_a_kept_notification_outlives_the_notifier_that_failed_to_send_it(r: redis.Redis,
                                                                          redis_server: RedisServer) -> None:
    """Given a notifier whose POST fails and which then dies (a dispatcher restart), the next
    notifier goes on from the cursor kept in Redis and sends that notification, once."""
    ended_batch(r, redis_server.url, "k1", "http://hook.example/x")
    first, second = Transport(503), Transport()
    dying = Notifier(r, KEYS, active=lambda: True, transport=first.mock)
    dying.follow(block_ms=1)  # read the end: the notification is kept with the cursor
    dying.send_due()
    assert len(first.bodies) == 1 and r.hlen(KEYS.notifications) == 2
    successor = Notifier(r, KEYS, active=lambda: True, transport=second.mock)
    assert successor.follow(block_ms=1) == 0  # no event past the cursor
    successor.send_due()
    assert [b["batch"] for b in second.bodies] == ["k1"] and r.hkeys(KEYS.notifications) == [b"cursor"]


def queued(r: redis.Redis) -> list[bytes]:
    """The batches of the notifications kept."""
    return sorted(batch for field, batch in r.hgetall(KEYS.notifications).items() if field != b"cursor")


def test_a_url_set_after_the_notifier_read_the_end_is_notified_once(r: redis.Redis,
                                                                     redis_server: RedisServer) -> None:
    """Given a batch that ends before `--notify` is stored, and a notifier that read its end
    first, set_notify queues the notification itself; a batch whose URL came first is queued by
    the notifier only: each is sent once."""
    transport = Transport()
    notifier = Notifier(r, KEYS, active=lambda: True, transport=transport.mock)
    ended_batch(r, redis_server.url, "late", None)
    ended_batch(r, redis_server.url, "early", "http://hook.example/x")
    notifier.follow(block_ms=1)
    assert queued(r) == [b"early"]  # "late" has no URL yet
    set_notify(r, KEYS, "late", "http://hook.example/x")  # the cursor is past its end: queued here
    set_notify(r, KEYS, "early", "http://hook.example/y")  # queued already: stays one
    assert queued(r) == [b"early", b"late"]
    notifier.send_due()
    notifier.send_due()
    assert sorted(b["batch"] for b in transport.bodies) == ["early", "late"]


def test_the_python_client_stores_the_url_and_refuses_a_bad_one_before_enqueueing(r: redis.Redis,
                                                                                   redis_server: RedisServer) -> None:
    with Client(redis_server.url, namespace=NS) as client:
        batch = client.submit(SYNTHETIC, [{"cost": 0}], batch="py", notify="https://hooks.example.com/x")
        assert r.hget(KEYS.batch_info(batch.id), BatchField.NOTIFY_URL) == b"https://hooks.example.com/x"
        with pytest.raises(SettingsError, match="http:// or https://"):
            client.submit_jobs([JobSpec(SYNTHETIC, {"cost": 0})], batch="refused", notify="mailto:ops@example.com")
    assert not r.exists(KEYS.batch_info("refused"))


def test_a_standby_dispatcher_sends_nothing(r: redis.Redis, redis_server: RedisServer) -> None:
    ended_batch(r, redis_server.url, "s1", "http://hook.example/x")
    transport, stop = Transport(), threading.Event()
    standby = threading.Thread(target=Notifier(r, KEYS, active=lambda: False, transport=transport.mock).run,
                               args=(stop,))  # fmt: skip
    standby.start()
    stop.wait(0.3)
    stop.set()
    standby.join(5)
    assert transport.bodies == [] and not r.exists(KEYS.notifications)
