"""Opening a Redis connection, and translating "Redis is not there" into one clear error."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis
from redis import Redis

from .errors import RedisUnavailable, SettingsError


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, safe to print and log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def connect(url: str, *, check: bool = True, timeout_s: float = 5.0) -> Redis:
    """A client for `url` (redis://, rediss://, unix://); with `check`, ping it now so a missing
    server is reported up front as RedisUnavailable instead of deep inside a command."""
    try:
        r = Redis.from_url(url, socket_connect_timeout=timeout_s, health_check_interval=30)
    except ValueError as e:
        raise SettingsError(f"invalid Redis URL {mask_url(url)}: {e}") from None
    if check:
        try:
            r.ping()
        except redis.AuthenticationError as e:
            raise RedisUnavailable(mask_url(url), f"authentication failed ({e})") from None
        except redis.ConnectionError as e:
            raise RedisUnavailable(mask_url(url), str(e) or type(e).__name__) from None
    return r
