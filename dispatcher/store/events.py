"""The event stream (keys.events): one entry per job or batch state change, and its JSON shape.

Writers and readers share this module. The Lua scripts that start and end jobs write their
events in the same atomic step as the change (lua/_events.lua, lua/_batch_ended.lua; each
names the fields below literally, and tests/integration/test_events.py reads them back
through `Event`); Python writes its own with `add_event`, in the pipeline that makes the
change. `gpufleet events` and the notifier (observe/notifier.py) read them with
`EventReader`.

An entry is flat strings: `event` (a kind of `EventKind`) and that kind's fields (`FIELDS`),
a field with no value left out. The entry's stream id ("<unix ms>-<seq>", Redis's clock) is
its time and its order. XADD trims the stream to about `Settings.events_max` entries (MAXLEN
~: whole stream nodes, so a few more are kept), oldest first.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from redis import Redis
from redis.client import Pipeline

from .keys import Keys


class EventKind:
    """What happened (an entry's `event` field)."""

    BATCH_SUBMITTED = "batch_submitted"  # start_batch.lua: the batch claimed its id, before its jobs are enqueued
    JOB_STARTED = "job_started"  # _start_job.lua: an attempt started on a node
    JOB_FINISHED = "job_finished"  # finish_jobs.lua: the job's result is recorded
    JOB_FAILED = "job_failed"  # failed for good: its retries spent (worker), or its node lost past them (end_jobs.lua)
    JOB_CANCELED = "job_canceled"  # end_jobs.lua: canceled before it started, or stopped while it ran
    JOB_RETRIED = "job_retried"  # an attempt failed, or its node was lost, and the job will run again
    JOB_REQUEUED = "job_requeued"  # `requeue --failed` put a failed job back to run again
    BATCH_ENDED = "batch_ended"  # its last job reached a final state: finished + failed + canceled == size


# The fields of each kind, in the order `Event.record` gives them.
FIELDS: Mapping[str, tuple[str, ...]] = {
    EventKind.BATCH_SUBMITTED: ("batch", "size", "func", "tenant"),
    EventKind.JOB_STARTED: ("batch", "job", "node", "attempt"),
    EventKind.JOB_FINISHED: ("batch", "job", "node"),
    EventKind.JOB_FAILED: ("batch", "job", "node", "attempt", "error"),
    EventKind.JOB_CANCELED: ("batch", "job", "error"),
    EventKind.JOB_RETRIED: ("batch", "job", "node", "attempt", "error"),
    EventKind.JOB_REQUEUED: ("batch", "job"),
    EventKind.BATCH_ENDED: ("batch", "size", "finished", "failed", "canceled"),
}


class BatchField:
    """Fields of the batch HASH (keys.batch_info) that events and notifications use."""

    NOTIFY_URL = "notify_url"  # submit --notify: where the batch's summary is POSTed when it ends
    ENDED_EVENT = "ended_event"  # the id of its latest batch_ended event (lua/_batch_ended.lua writes it)


CURSOR_FIELD = "cursor"  # keys.notifications' field holding the last event id the notifier read
COUNT_FIELDS = frozenset(("attempt", "size", "finished", "failed", "canceled"))  # integers in the JSON
ERROR_CHARS = 200  # an event's `error` is the error's last line, cut to this many characters
READ_COUNT = 1000  # entries per XRANGE / XREAD


def short_error(text: str) -> str:
    """The last non-blank line of an error or traceback, at most ERROR_CHARS long."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:ERROR_CHARS] if lines else ""


def add_event(p: Redis | Pipeline, keys: Keys, max_len: int, kind: str, **fields: str | int) -> None:
    """Append one event (or queue it on a pipeline); empty fields are left out."""
    entry: dict[str, str | int] = {"event": kind, **{k: v for k, v in fields.items() if v != ""}}
    p.xadd(keys.events, entry, maxlen=max_len, approximate=True)  # type: ignore[arg-type]


def stream_time(entry_id: str) -> datetime:
    """When an entry was written: its stream id's milliseconds, UTC."""
    return datetime.fromtimestamp(int(entry_id.partition("-")[0]) / 1000, timezone.utc)


@dataclass(frozen=True)
class Event:
    """One entry of the event stream."""

    id: str  # the stream id, "<unix ms>-<seq>"
    kind: str
    fields: Mapping[str, str | int]

    @classmethod
    def from_entry(cls, entry_id: bytes | str, raw: Mapping[bytes, bytes]) -> Event:
        """An entry as XRANGE / XREAD return it. Counts become ints; a field this module does
        not know is kept as text, so an event of a newer writer still reads."""
        text = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in raw.items()}
        kind = text.pop("event", "")
        fields: dict[str, str | int] = {}
        for name, value in text.items():
            if value == "":
                continue
            fields[name] = int(value) if name in COUNT_FIELDS and value.lstrip("-").isdigit() else value
        return cls(entry_id.decode() if isinstance(entry_id, bytes) else entry_id, kind, fields)

    @property
    def batch(self) -> str:
        return str(self.fields.get("batch", ""))

    @property
    def time(self) -> datetime:
        return stream_time(self.id)

    def record(self) -> dict[str, Any]:
        """The stable JSON object (README "Output formats"): id, time, event, then the kind's
        fields in FIELDS order, then any other field."""
        known = FIELDS.get(self.kind, ())
        ordered = [name for name in known if name in self.fields]
        ordered += sorted(name for name in self.fields if name not in known)
        return {"id": self.id, "time": iso_ms(self.time), "event": self.kind,
                **{name: self.fields[name] for name in ordered}}  # fmt: skip


def iso_ms(t: datetime) -> str:
    """ISO 8601 UTC to the millisecond, with a Z."""
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventReader:
    """Reads the event stream forward from a cursor (`after`, a stream id; "0-0": from the
    oldest entry kept), optionally only one batch's events, or only some kinds (looked at
    before an entry is decoded). The cursor moves past every entry read, the ones left out
    too, so reading on never returns an entry twice."""

    def __init__(self, r: Redis, keys: Keys, *, batch: str | None = None, kinds: Collection[str] = (),
                 after: str = "0-0") -> None:  # fmt: skip
        self._r, self._key, self._batch = r, keys.events, batch
        self._kinds = frozenset(kind.encode() for kind in kinds)
        self.after = after
        self.read = 0  # entries the last `new` or `kept` read, left out or not

    def kept(self, limit: int | None = None) -> Iterator[Event]:
        """Every entry after the cursor that the stream holds now, READ_COUNT per round trip;
        with `limit`, only as far as that many entries read (`read` counts them)."""
        self.read = 0
        while limit is None or self.read < limit:
            count = READ_COUNT if limit is None else min(READ_COUNT, limit - self.read)
            entries = self._r.xrange(self._key, f"({self.after}", "+", count=count)
            if not entries:
                return
            self.read += len(entries)
            yield from self._take(entries)  # type: ignore[arg-type]  # redis-py types replies loosely

    def new(self, block_ms: int) -> list[Event]:
        """The entries after the cursor, waiting up to `block_ms` for one (XREAD BLOCK)."""
        reply: Any = self._r.xread({self._key: self.after}, count=READ_COUNT, block=block_ms)
        entries = reply[0][1] if reply else []
        self.read = len(entries)
        return list(self._take(entries))

    def _take(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> Iterator[Event]:
        for entry_id, raw in entries:
            self.after = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            if self._kinds and raw.get(b"event") not in self._kinds:
                continue
            event = Event.from_entry(entry_id, raw)
            if self._batch is None or event.batch == self._batch:
                yield event
