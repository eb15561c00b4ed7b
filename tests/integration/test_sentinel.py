"""Redis Sentinel on real processes: a redis+sentinel:// client writes to the master, follows a
failover to the promoted replica, and never talks to the old master once it rejoins as a replica;
a whole fleet (dispatcher and workers) finishes its batch across a failover."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest
import redis

from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.errors import RedisUnavailable
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.connection import REDIS_DOWN, connect
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import SentinelGroup
from gpufleet.worker.fleet import LocalFleet, SimNode

from .support import FAST_ENV, gpufleet

NS = "ha"
KEYS = Keys(NS)
T = TypeVar("T")

# Idempotent, so a retry after an error that hid whether it ran is harmless; a script, so the
# new master's empty script cache (NOSCRIPT) is part of what a failover must survive.
ADD_NODE = "return redis.call('SADD', KEYS[1], ARGV[1])"


def until_up(op: Callable[[], T], errors: list[Exception], timeout_s: float = 15.0) -> T:
    """`op()`, retried with a short backoff while it fails with REDIS_DOWN (each kept in `errors`),
    as every gpufleet loop does."""
    deadline, backoff_s = time.monotonic() + timeout_s, 0.02
    while True:
        try:
            return op()
        except REDIS_DOWN as e:
            errors.append(e)
            if time.monotonic() > deadline:
                raise
            time.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 0.5)


def on_port(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2)


def test_a_sentinel_url_reads_and_writes_the_current_master(sentinel_group: SentinelGroup) -> None:
    r = connect(sentinel_group.url)
    receipt = Submitter(r, Settings(redis_url=sentinel_group.url, namespace=NS)).submit(
        [JobSpec("gpufleet.worker.tasks:echo", i) for i in range(3)])
    assert read_progress(r, KEYS, receipt.batch_id).size == 3
    master = sentinel_group.master_port()
    assert r.connection_pool.master_address == ("127.0.0.1", master)
    assert on_port(master).llen(KEYS.batch_jobs(receipt.batch_id)) == 3


def test_the_same_client_writes_to_the_new_master_after_a_failover(sentinel_group: SentinelGroup) -> None:
    """Given a client that wrote (and waited for the replica), if the master is SIGKILLed, then
    once the sentinels promote the replica, the same client object (retrying on REDIS_DOWN)
    writes there, runs a script (reloaded on NOSCRIPT), and the replicated write survived."""
    r = connect(sentinel_group.url)
    add_node = r.register_script(ADD_NODE)
    add_node(keys=[KEYS.nodes], args=["before"])
    assert r.wait(1, 2000) == 1  # replicated before the crash: async replication loses only the unacked

    started = time.monotonic()
    old = sentinel_group.kill_master()
    new = sentinel_group.wait_for_failover(old)
    failover_s = time.monotonic() - started

    errors: list[Exception] = []
    until_up(lambda: add_node(keys=[KEYS.nodes], args=["after"]), errors)
    assert new != old and r.connection_pool.master_address == ("127.0.0.1", new)
    assert on_port(new).smembers(KEYS.nodes) == {b"before", b"after"}
    assert failover_s < 15, f"failover took {failover_s:.1f} s"


def test_a_client_of_the_old_master_follows_the_new_one_when_the_old_one_rejoins(
    sentinel_group: SentinelGroup,
) -> None:
    """Given a client connected to the master, if the master is SIGKILLed, fails over, and comes
    back (with its AOF: it believes it is the master until the sentinels demote it), then the
    client's writes land on the new master, and never fail with READONLY from the old one."""
    r = connect(sentinel_group.url)
    r.sadd(KEYS.nodes, "before")
    old = sentinel_group.kill_master()
    new = sentinel_group.wait_for_failover(old)
    sentinel_group.restart_killed()
    assert on_port(old).role()[0] == b"slave"

    errors: list[Exception] = []
    until_up(lambda: r.sadd(KEYS.nodes, "after"), errors)
    assert r.connection_pool.master_address == ("127.0.0.1", new)
    assert not [e for e in errors if isinstance(e, redis.exceptions.ReadOnlyError)]
    assert b"after" in on_port(new).smembers(KEYS.nodes)
    assert sentinel_group.master_port() == new


def test_a_password_is_the_masters_and_never_shows() -> None:
    """The password authenticates to master and replica; the sentinels take none."""
    with SentinelGroup(password="s3cret-pw") as group:
        r = connect(group.url)
        r.sadd(KEYS.nodes, "a")
        assert r.smembers(KEYS.nodes) == {b"a"}
        with pytest.raises(RedisUnavailable, match="authentication failed") as e:
            connect(group.url.replace("s3cret-pw", "wrong-pw"))
        assert "wrong-pw" not in str(e.value) and ":***@127.0.0.1" in str(e.value)


def test_the_cli_takes_a_sentinel_url(sentinel_group: SentinelGroup) -> None:
    out = gpufleet(sentinel_group.url, NS, "status", "--json")
    assert out.returncode == 0, out.stderr


def test_a_fleet_on_sentinel_finishes_its_batch_across_a_failover(sentinel_group: SentinelGroup) -> None:
    """Given a dispatcher and two workers on the sentinel URL, mid-batch, if the master is
    SIGKILLed, every process follows the promoted replica and the whole batch finishes."""
    fleet = LocalFleet(sentinel_group.url, namespace=NS, env=FAST_ENV)
    try:
        r = connect(sentinel_group.url)
        fleet.start_dispatcher()
        for node in ("s1", "s2"):
            fleet.start_worker(SimNode(node))
        fleet.wait_for_nodes(r, ["s1", "s2"])
        specs = [JobSpec("gpufleet.worker.tasks:synthetic", {"cost": 0.02, "i": i}) for i in range(300)]
        batch = Submitter(r, Settings(redis_url=sentinel_group.url, namespace=NS)).submit(specs).batch_id
        assert r.wait(1, 2000) == 1  # the submission reached the replica: a failover cannot lose it
        errors: list[Exception] = []
        deadline = time.monotonic() + 60
        while (before := until_up(lambda: read_progress(r, KEYS, batch), errors)).finished < 50:
            assert time.monotonic() < deadline, "50 jobs did not finish"
            time.sleep(0.05)

        sentinel_group.wait_for_failover(sentinel_group.kill_master())
        assert not before.done  # the failover came mid-batch
        deadline = time.monotonic() + 90
        while not until_up(lambda: read_progress(r, KEYS, batch), errors).done:
            assert time.monotonic() < deadline, f"batch not done: {read_progress(r, KEYS, batch)}"
            time.sleep(0.1)
        records = list(iter_results(r, KEYS, batch))
        assert [rec["status"] for rec in records] == ["finished"] * 300
        assert sorted(int(rec["result"]["input"]["i"]) for rec in records) == list(range(300))
    finally:
        fleet.stop()
