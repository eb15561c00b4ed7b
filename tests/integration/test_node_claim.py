"""Claiming a node id (node_claim.claim_node_id) against a real Redis, with the waiting driven
by an injected clock and sleep: no test here waits out a real TTL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from gpufleet.dispatcher.errors import NodeIdInUse
from gpufleet.dispatcher.fleet.node_claim import ProcessIdentity, claim_node_id, drains, stop_mark
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.scripts import Scripts

KEYS = Keys("claim")
ME = ProcessIdentity(host="h1", pidns="pid:[1]", pid=os.getpid())


class Clock:
    """Time that moves only when the code sleeps; `on_sleep` runs at each sleep (the other
    process's heartbeat, or its key expiring)."""

    def __init__(self, on_sleep: object = None) -> None:
        self.now, self.on_sleep = 0.0, on_sleep

    def sleep(self, s: float) -> None:
        self.now += s
        if callable(self.on_sleep):
            self.on_sleep()


def held_by(r: redis.Redis, token: str, **beat: str) -> None:
    """The node as a process `token` left it: its liveness key and heartbeat fields."""
    r.set(KEYS.alive("n1"), token, px=60_000)
    r.hset(KEYS.heartbeat("n1"), mapping={"incarnation": token, "ts": "1.0", **beat})


def claim(r: redis.Redis, token: str, clock: Clock | None = None) -> None:
    clock = clock or Clock()
    claim_node_id(r, KEYS, Scripts(r, KEYS), "n1", token, ttl_s=5.0, me=ME, clock=lambda: clock.now,
                  sleep=clock.sleep)  # fmt: skip


def test_a_free_node_id_is_claimed_and_claiming_it_again_is_a_no_op(r: redis.Redis) -> None:
    claim(r, "new")
    claim(r, "new")  # tried again after Redis went away mid-start: still ours, no wait
    assert r.get(KEYS.alive("n1")) == b"new" and 0 < r.pttl(KEYS.alive("n1")) <= 5000


def test_a_node_id_held_by_a_dead_process_on_this_host_is_taken_over_at_once(r: redis.Redis) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held_by(r, "old", host="h1", pidns="pid:[1]", pid=dead.stdout.strip())
    clock = Clock()
    claim(r, "new", clock)
    assert r.get(KEYS.alive("n1")) == b"new" and clock.now == 0.0


def test_a_node_id_held_by_a_live_process_is_refused(r: redis.Redis) -> None:
    """Given a holder elsewhere that keeps beating (its ts moves), the claim is refused with a
    message naming it, and its key is left alone."""
    held_by(r, "old", host="h2", pidns="pid:[9]", pid="77")
    clock = Clock(on_sleep=lambda: r.hset(KEYS.heartbeat("n1"), "ts", str(clock.now)))
    with pytest.raises(NodeIdInUse, match=r"node id 'n1' is run by a live worker \(pid 77 on host h2"):
        claim(r, "new", clock)
    assert r.get(KEYS.alive("n1")) == b"old"


def test_a_node_id_whose_holder_stops_beating_is_claimed_once_its_key_expires(r: redis.Redis) -> None:
    """Given a holder on another host (its death cannot be seen from here) whose key expires
    during the wait, as a pod rescheduled elsewhere does, the claim succeeds then."""
    held_by(r, "old", host="h2", pidns="pid:[9]", pid="77")
    clock = Clock(on_sleep=lambda: r.delete(KEYS.alive("n1")) if clock.now >= 3.0 else None)
    claim(r, "new", clock)
    assert r.get(KEYS.alive("n1")) == b"new" and 3.0 <= clock.now < 5.0


def test_a_stop_mark_drains_only_the_incarnation_that_set_it() -> None:
    assert drains(stop_mark("a").encode(), b"a")
    assert not drains(stop_mark("old").encode(), b"new")  # left by a process since replaced
    assert drains(b"operator", b"new") and not drains(None, b"new")
