"""The event format (store/events.py), reading and filtering the stream, the human line, the
notify URL check, and the notifier's sending and retries: fakeredis for the plain commands, an
httpx MockTransport for the receiver. The Lua writers are tested on a real redis-server
(tests/integration/test_events.py)."""

from __future__ import annotations

import json
from pathlib import Path

import fakeredis
import httpx
import pytest
from click.testing import CliRunner

from gpufleet.cli.main import cli
from gpufleet.cli.render import render_event
from gpufleet.dispatcher.client.notify import notify_url_problem
from gpufleet.dispatcher.errors import SettingsError
from gpufleet.dispatcher.observe.notifier import Notifier, summary
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.events import BatchField, Event, EventKind, EventReader, add_event, short_error
from gpufleet.dispatcher.store.job import QueuedJobHash
from gpufleet.dispatcher.store.keys import Keys

KEYS = Keys("ev")


def test_an_entry_reads_as_its_kind_with_counts_as_numbers_and_empty_fields_left_out() -> None:
    raw = {b"event": b"batch_ended", b"canceled": b"0", b"batch": b"b1", b"failed": b"2", b"size": b"10",
           b"finished": b"8", b"tenant": b"", b"shard": b"x"}  # fmt: skip
    event = Event.from_entry(b"1764558000123-4", raw)
    assert (event.kind, event.batch) == ("batch_ended", "b1")
    assert event.time.isoformat() == "2025-12-01T03:00:00.123000+00:00"  # the id's milliseconds
    record = event.record()
    assert list(record) == ["id", "time", "event", "batch", "size", "finished", "failed", "canceled", "shard"]
    assert record == {"id": "1764558000123-4", "time": "2025-12-01T03:00:00.123Z", "event": "batch_ended",
                      "batch": "b1", "size": 10, "finished": 8, "failed": 2, "canceled": 0, "shard": "x"}  # fmt: skip


def test_a_human_line_has_the_time_the_kind_and_key_value_pairs_quoted_when_needed() -> None:
    event = Event.from_entry("1764558000123-0", {b"event": b"job_failed", b"batch": b"b1", b"job": b"j1",
                                                 b"node": b"n1", b"attempt": b"3", b"error": b"ValueError: bad"})
    assert render_event(event) == ('2025-12-01T03:00:00.123Z job_failed batch=b1 job=j1 node=n1 attempt=3 '
                                   'error="ValueError: bad"')  # fmt: skip


def test_an_error_is_its_last_line_cut_short() -> None:
    traceback = "Traceback (most recent call last):\n  File x\nValueError: bad input\n\n"
    assert short_error(traceback) == "ValueError: bad input"
    assert len(short_error("E" * 1000)) == 200 and short_error("") == ""


def add(r: fakeredis.FakeRedis, kind: str, **fields: str | int) -> None:
    add_event(r, KEYS, 1000, kind, **fields)


def test_the_reader_filters_by_batch_and_moves_past_the_other_batches_entries() -> None:
    """Given events of two batches, the reader of one batch returns only its events, and reading
    on after new events returns only the new ones of that batch."""
    r = fakeredis.FakeRedis()
    add(r, EventKind.BATCH_SUBMITTED, batch="a", size=1, func="m:f", tenant="")
    add(r, EventKind.BATCH_SUBMITTED, batch="b", size=2, func="m:f")
    add(r, EventKind.JOB_STARTED, batch="a", job="j1", node="n1", attempt=1)
    reader = EventReader(r, KEYS, batch="a")
    kept = list(reader.kept())
    assert [(e.kind, e.batch) for e in kept] == [("batch_submitted", "a"), ("job_started", "a")]
    assert "tenant" not in kept[0].fields  # empty fields are not written
    add(r, EventKind.JOB_STARTED, batch="b", job="j2", node="n1", attempt=1)
    add(r, EventKind.JOB_FINISHED, batch="a", job="j1", node="n1")
    assert [e.kind for e in reader.new(block_ms=1)] == ["job_finished"]
    assert reader.new(block_ms=1) == [] and list(reader.kept()) == []
    assert [e.batch for e in EventReader(r, KEYS).kept()] == ["a", "b", "a", "b", "a"]


def test_a_reader_of_some_kinds_skips_the_others_and_counts_what_it_read() -> None:
    r = fakeredis.FakeRedis()
    add(r, EventKind.JOB_FINISHED, batch="a", job="j1", node="n1")
    add(r, EventKind.BATCH_ENDED, batch="a", size=1, finished=1, failed=0, canceled=0)
    add(r, EventKind.BATCH_SUBMITTED, batch="b", size=1)
    reader = EventReader(r, KEYS, kinds=(EventKind.BATCH_ENDED,))
    assert [(e.kind, e.fields["finished"]) for e in reader.new(block_ms=1)] == [("batch_ended", 1)]
    assert reader.read == 3 and reader.new(block_ms=1) == [] and reader.read == 0


@pytest.mark.parametrize("url", ["https://hooks.example.com/batch?token=x", "http://127.0.0.1:8080/"])
def test_an_http_url_with_a_host_can_be_notified(url: str) -> None:
    assert notify_url_problem(url) is None


@pytest.mark.parametrize("url", ["ftp://example.com/x", "example.com/hook", "http://", "https://h:99999/", ""])
def test_any_other_url_is_refused_with_what_it_must_be(url: str) -> None:
    assert notify_url_problem(url) is not None


def test_submit_refuses_a_bad_notify_url_before_it_touches_redis(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"input": 1}\n')
    out = CliRunner().invoke(cli, ["--redis-url", "redis://127.0.0.1:1/0", "submit", str(jobs), "--func",
                                   "gpufleet.worker.tasks:echo", "--notify", "ftp://example.com/x"])  # fmt: skip
    assert out.exit_code == 1
    assert "must be an http:// or https:// URL with a host" in out.output and "cannot reach Redis" not in out.output


def test_the_events_kept_come_from_the_environment_and_must_be_positive() -> None:
    assert Settings.from_env({"GPUFLEET_EVENTS_MAX": "500"}).events_max == 500
    assert Settings().events_max == 100_000
    with pytest.raises(SettingsError, match="events_max"):
        Settings(events_max=0)


def ended_batch(r: fakeredis.FakeRedis, batch: str = "b1", *, failed: int = 0) -> str:
    """A batch of 3 that has ended (as the scripts leave it), its notify URL and its kept
    notification; the batch_ended event's id."""
    r.hset(KEYS.batch_info(batch), mapping={"size": 3, "finished": 3 - failed, "failed": failed, "canceled": 0,
                                            "created_at": "1764558000.0", BatchField.NOTIFY_URL: "http://hook/x"})
    hashes = QueuedJobHash(KEYS, batch, result_ttl_s=60)
    for i in range(3):
        spec = JobSpec("gpufleet.worker.tasks:echo", i, client_id=f"q{i}")
        key, fields = hashes.build(f"j{i}", spec, "2025-12-01T03:00:00.0Z")
        r.hset(key, items=list(fields))
        ending = {"status": "failed", "gf_error": "RuntimeError: no"} if i < failed else {"status": "finished"}
        r.hset(key, mapping=ending)
        r.rpush(KEYS.batch_ended(batch), f"j{i}")
    event_id = "1764558002500-0"
    r.hset(KEYS.notifications, event_id, batch)
    return event_id


class Receiver:
    """An httpx MockTransport that answers `statuses` in turn (then 200) and keeps each body."""

    def __init__(self, *statuses: int) -> None:
        self.statuses, self.bodies = list(statuses), list[dict[str, object]]()
        self.transport = httpx.MockTransport(self.reply)

    def reply(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        return httpx.Response(self.statuses.pop(0) if self.statuses else 200)


def test_a_summary_has_the_counts_the_duration_and_the_failed_jobs() -> None:
    r = fakeredis.FakeRedis()
    event_id = ended_batch(r, failed=2)
    assert summary(r, KEYS, event_id, "b1") == {
        "batch": "b1", "size": 3, "finished": 1, "failed": 2, "canceled": 0,
        "created_at": "2025-12-01T03:00:00.000Z", "ended_at": "2025-12-01T03:00:02.500Z", "duration_s": 2.5,
        "failures": [{"id": "q0", "job_id": "j0", "error": "RuntimeError: no"},
                     {"id": "q1", "job_id": "j1", "error": "RuntimeError: no"}],
        "event": event_id,
    }  # fmt: skip


def test_a_failed_post_is_retried_after_its_backoff_then_forgotten_once_delivered() -> None:
    """Given a receiver that answers 500, then 503, then 200: each retry waits out its backoff
    (1 s, then 2 s), and the third try delivers, which drops the kept notification."""
    r, now, receiver = fakeredis.FakeRedis(), [0.0], Receiver(500, 503)
    event_id = ended_batch(r)
    notifier = Notifier(r, KEYS, active=lambda: True, transport=receiver.transport, clock=lambda: now[0])
    assert notifier.send_due() == 1000 and len(receiver.bodies) == 1  # the next try is due in 1 s
    now[0] = 0.9
    notifier.send_due()
    assert len(receiver.bodies) == 1  # not yet
    now[0] = 1.0
    notifier.send_due()
    assert len(receiver.bodies) == 2  # the next try is due 2 s later
    now[0] = 2.9
    notifier.send_due()
    assert len(receiver.bodies) == 2
    now[0] = 3.0
    notifier.send_due()
    assert len(receiver.bodies) == 3 and r.hget(KEYS.notifications, event_id) is None
    assert {body["event"] for body in receiver.bodies} == {event_id}  # the same notification each time


def test_a_notification_that_keeps_failing_is_given_up_after_its_tries() -> None:
    r, now, receiver = fakeredis.FakeRedis(), [0.0], Receiver(*[500] * 10)
    event_id = ended_batch(r)
    notifier = Notifier(r, KEYS, active=lambda: True, tries=3, backoff_s=0.5, transport=receiver.transport,
                        clock=lambda: now[0])  # fmt: skip
    for t in (0.0, 0.5, 1.5):
        now[0] = t
        notifier.send_due()
    assert len(receiver.bodies) == 3 and r.hget(KEYS.notifications, event_id) is None
    now[0] = 10.0
    notifier.send_due()
    assert len(receiver.bodies) == 3


def test_a_notification_another_dispatcher_delivered_is_not_retried() -> None:
    r, receiver = fakeredis.FakeRedis(), Receiver(500)
    event_id = ended_batch(r)
    notifier = Notifier(r, KEYS, active=lambda: True, transport=receiver.transport, clock=lambda: 100.0)
    notifier.send_due()
    r.hdel(KEYS.notifications, event_id)  # delivered by the dispatcher that holds the lease now
    assert notifier.send_due() == 1000 and len(receiver.bodies) == 1
