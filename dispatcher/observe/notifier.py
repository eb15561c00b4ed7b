"""Batch-end notifications: each ended batch's summary POSTed as JSON to its `--notify` URL.

The notifier runs in the dispatcher's process, in a thread of its own (the dispatch loop never
waits for it), and works only while that dispatcher holds the lease. It follows the event
stream from a cursor kept in Redis (keys.notifications): each batch_ended event of a batch
with a notify URL becomes a notification kept there too, in the same step as the cursor moves
past it (note_batch_ends.lua). A notification stays until its POST gets a 2xx reply, or has
failed TRIES times, BACKOFF_S apart and doubling (1, 2, 4, 8 s). A restarted dispatcher, or a
standby taking over, goes on from the cursor and sends what is still kept, so none is lost; one
whose POST went out just before the process died (or while two dispatchers overlapped for a
moment) is sent again: delivery is at least once, and a receiver can tell a repeat by its
`event` id. Tries start over after a restart. Events the stream dropped before the notifier
read them (more than Settings.events_max written while no dispatcher ran) notify nobody.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import httpx
from redis import Redis
from rq.utils import as_text

from ..client.results import failed_records
from ..store.connection import REDIS_DOWN
from ..store.events import CURSOR_FIELD, READ_COUNT, BatchField, EventKind, EventReader, iso_ms, stream_time
from ..store.job import BatchCounter
from ..store.keys import Keys
from ..store.scripts import Scripts

log = logging.getLogger(__name__)

TRIES = 5  # POSTs of one notification before it is given up
BACKOFF_S = 1.0  # before the second try; doubling after each failed one
TIMEOUT_S = 10.0  # for one POST: connect, send and read
FAILURES = 5  # failed jobs named in a summary
BLOCK_MS = 1000  # the longest wait on the event stream, so the lease and due retries are seen
# After a read that caught up with the stream, events gather this long before the next: a busy
# fleet writes events all the time, and a read per event would cost the fleet round trips per
# job; a batch's notification goes out at most this much later.
GATHER_S = 0.5
STANDBY_S = 1.0  # how often a standby looks whether it holds the lease now


def summary(r: Redis, keys: Keys, event_id: str, batch_id: str) -> dict[str, Any]:
    """The JSON a notification POSTs: the batch, its size and its counts by outcome (its counters
    now: the same as at its end unless it was resumed since), when it was created and ended (the
    batch_ended event's time), how long that took, up to FAILURES failed jobs, and the event id."""
    raw = {as_text(k): as_text(v) for k, v in r.hgetall(keys.batch_info(batch_id)).items()}
    counts = {name: int(float(raw.get(name) or 0)) for name in
              (BatchCounter.SIZE, BatchCounter.FINISHED, BatchCounter.FAILED, BatchCounter.CANCELED)}  # fmt: skip
    created_s, ended = float(raw.get("created_at") or 0), stream_time(event_id)
    failures = failed_records(r, keys, batch_id, FAILURES) if counts[BatchCounter.FAILED] else []
    return {
        "batch": batch_id, **counts,
        "created_at": iso_ms(datetime.fromtimestamp(created_s, timezone.utc)) if created_s else None,
        "ended_at": iso_ms(ended),
        "duration_s": round(ended.timestamp() - created_s, 3) if created_s else None,
        "failures": [{"id": f["id"], "job_id": f["job_id"], "error": f.get("error", "")} for f in failures],
        "event": event_id,
    }  # fmt: skip


class Notifier:
    """Sends the notifications of ended batches (see the module docstring); `active` says
    whether this process holds the dispatcher lease. `transport` is httpx's (tests pass a
    MockTransport); `clock` paces the retries."""

    def __init__(self, r: Redis, keys: Keys, *, active: Callable[[], bool], tries: int = TRIES,
                 backoff_s: float = BACKOFF_S, transport: httpx.BaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._r, self._keys, self._scripts = r, keys, Scripts(r, keys)
        self._active, self._tries, self._backoff_s, self._clock = active, tries, backoff_s, clock
        self._http = httpx.Client(timeout=TIMEOUT_S, transport=transport)
        self._after: str | None = None  # the cursor, once read from Redis while active
        self._failed: dict[str, tuple[int, float]] = {}  # event id -> (tries failed, when the next is due)

    def run(self, stop: threading.Event) -> None:
        """Send notifications while active, until `stop` is set; rides out Redis outages."""
        down = False
        try:
            while not stop.is_set():
                try:
                    if not self._active():
                        self._after, self._failed = None, {}  # another dispatcher moves the cursor meanwhile
                        stop.wait(STANDBY_S)
                        continue
                    read = self.follow(self.send_due())
                    if 0 < read < READ_COUNT:  # caught up (a full read means more are waiting)
                        stop.wait(GATHER_S)
                    if down:
                        log.info("notifier: redis reachable again")
                        down = False
                except REDIS_DOWN as e:
                    if not down:
                        log.warning("notifier: redis unreachable, retrying error=%s", e)
                        down = True
                    stop.wait(STANDBY_S)
                except Exception:  # a bug must not end the thread: notifications would stop for good
                    log.exception("notifier: unexpected error")
                    stop.wait(STANDBY_S)
        finally:
            self._http.close()

    def follow(self, block_ms: int = BLOCK_MS) -> int:
        """Read the events after the cursor (waiting up to `block_ms` for one), queue a
        notification for each batch_ended of a batch with a notify URL and move the cursor, in
        one step; how many events were read."""
        if self._after is None:
            self._after = as_text(self._r.hget(self._keys.notifications, CURSOR_FIELD) or b"0-0")
        reader = EventReader(self._r, self._keys, kinds=(EventKind.BATCH_ENDED,), after=self._after)
        ends = [(e.id, e.batch) for e in reader.new(block_ms) if e.batch]
        if reader.read:
            self._scripts.note_batch_ends(reader.after, ends)
            self._after = reader.after
        return reader.read

    def send_due(self) -> int:
        """POST every kept notification whose next try is due; the milliseconds until the next
        retry is due (BLOCK_MS at most), for `follow` to wait."""
        kept = {as_text(k): as_text(v) for k, v in self._r.hgetall(self._keys.notifications).items()}
        kept.pop(CURSOR_FIELD, None)
        self._failed = {event_id: f for event_id, f in self._failed.items() if event_id in kept}  # sent by another
        for event_id, batch_id in kept.items():
            failed, due = self._failed.get(event_id, (0, 0.0))
            if due <= self._clock():
                self._try(event_id, batch_id, failed)
        if not self._failed:
            return BLOCK_MS
        wait_s = min(due for _, due in self._failed.values()) - self._clock()
        return max(1, min(BLOCK_MS, int(wait_s * 1000)))  # XREAD BLOCK 0 would wait for ever

    def _try(self, event_id: str, batch_id: str, failed: int) -> None:
        """One try of one notification: forgotten once delivered (or its batch has no URL any
        more) or out of tries, else due again after its backoff."""
        url = as_text(self._r.hget(self._keys.batch_info(batch_id), BatchField.NOTIFY_URL) or b"")
        error = self._post(url, event_id, batch_id) if url else ""
        host = httpx.URL(url).host if url else ""
        if error and failed + 1 < self._tries:
            self._failed[event_id] = (failed + 1, self._clock() + self._backoff_s * 2**failed)
            log.warning("notification failed, will retry batch=%s host=%s try=%d error=%s", batch_id, host,
                        failed + 1, error)  # fmt: skip
            return
        if error:
            log.error("notification given up batch=%s host=%s tries=%d error=%s", batch_id, host, self._tries, error)
        elif url:
            log.info("notification sent batch=%s host=%s event=%s", batch_id, host, event_id)
        self._failed.pop(event_id, None)
        self._r.hdel(self._keys.notifications, event_id)

    def _post(self, url: str, event_id: str, batch_id: str) -> str:
        """POST the batch's summary to `url`: "" when delivered (a 2xx reply), else why not."""
        try:
            reply = self._http.post(url, json=summary(self._r, self._keys, event_id, batch_id))
        except httpx.HTTPError as e:
            return f"{type(e).__name__}: {e}"
        return "" if reply.is_success else f"HTTP {reply.status_code}"
