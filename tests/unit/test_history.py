"""The fleet's history buckets (observe/history.py): what a bucket counts, and that the HASH
stays bounded and old buckets drop out of the window."""

from __future__ import annotations

import fakeredis

from gpufleet.dispatcher.observe.history import HISTORY_BUCKETS, History, read_history
from gpufleet.dispatcher.store.keys import Keys
from tests.conftest import node

KEYS = Keys("hist")


def test_a_bucket_counts_what_the_node_counters_grew_by_a_restart_counting_from_zero() -> None:
    h = History(bucket_s=10.0)
    h.observe([node("a", completed=100, failed=5), node("b", completed=7)])  # first sight: nothing yet
    assert (h.ended, h.failed) == (0, 0)
    h.observe([node("a", completed=110, failed=6), node("b", completed=9)])
    assert (h.ended, h.failed) == (13, 1)
    h.observe([node("a", completed=3, failed=0), node("b", completed=9)])  # a restarted: its new 3 count
    assert (h.ended, h.failed) == (16, 1)


def test_a_bucket_is_written_once_it_ended_and_read_back_with_rates() -> None:
    r = fakeredis.FakeRedis()
    h = History(bucket_s=10.0)
    assert not h.write(r, KEYS, 1000.0)  # the first call only starts the bucket
    h.observe([node("a", completed=0)])
    h.observe([node("a", completed=20, failed=5)])
    assert not h.write(r, KEYS, 1009.9)
    assert h.write(r, KEYS, 1010.0)
    [bucket] = read_history(r, KEYS, 1010.0)
    assert bucket == {"t": 1000.0, "ended": 25, "failed": 5, "waiting": 0, "jobs_per_s": 2.5, "failed_share": 0.2}
    assert (h.ended, h.failed) == (0, 0) and not h.write(r, KEYS, 1015.0)


def test_the_hash_stays_bounded_and_old_buckets_leave_the_window() -> None:
    r = fakeredis.FakeRedis()
    h = History(bucket_s=1.0)
    h.write(r, KEYS, 0.0)
    for t in range(1, HISTORY_BUCKETS + 50):
        h.write(r, KEYS, float(t))
    assert r.hlen(KEYS.history) == HISTORY_BUCKETS
    buckets = read_history(r, KEYS, float(HISTORY_BUCKETS + 49))
    assert len(buckets) == HISTORY_BUCKETS and buckets[0]["t"] >= 49
    assert buckets == sorted(buckets, key=lambda b: b["t"])
    assert read_history(r, KEYS, 10.0 * HISTORY_BUCKETS + 1000) == []  # all older than the window
    r.hset(KEYS.history, "0", "not json")
    assert len(read_history(r, KEYS, float(HISTORY_BUCKETS + 49))) == HISTORY_BUCKETS - 1  # a bad value is skipped
