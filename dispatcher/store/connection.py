"""Opening a Redis connection, and translating "Redis is not there" into one clear error.

URLs: redis://, rediss:// (TLS) and unix:// as redis-py reads them, and
`redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]`
(`rediss+sentinel://` for TLS to sentinels and master alike), opened with redis-py's
`Sentinel(...).master_for(service_name)`: every connection asks a sentinel for the current
master, so a process follows a failover the next time it connects. The password is the
master's and replicas' (`requirepass`); sentinels are asked without one (redis-py's
`sentinel_kwargs` carry only socket options), so sentinels must not set `requirepass`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from ..errors import RedisUnavailable, SettingsError

# Errors that mean "Redis is not there right now", not "this command or job is wrong": the
# server is down, restarting (loading its AOF), unreachable, or a demoted master that now
# refuses writes (a failover). Whoever sees one reconnects with backoff and tries again; it
# never counts against a job.
REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
)

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme -> TLS
SENTINEL_PORT = 26379  # a sentinel's port when the URL names none
NO_RETRY = Retry(NoBackoff(), 0)  # fail at once: callers back off on REDIS_DOWN, the check reports


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed redis+sentinel:// URL: where the sentinels are and which master to ask for."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, safe to print and log."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    user, at, hosts = netloc.rpartition("@")  # a password may hold '@'; the host part never does
    if at and ":" in user:
        netloc = f"{user.split(':', 1)[0]}:***@{hosts}"
    tail = re.sub(r"([?&]password=)[^&#]*", r"\1***", tail)  # redis-py also reads ?password=
    return f"{scheme}{sep}{netloc}{slash}{tail}"


def parse_sentinel_url(url: str) -> SentinelTarget:
    """A redis+sentinel:// URL's parts; SettingsError saying what is wrong when it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise SettingsError(f"not a redis+sentinel:// URL: {mask_url(url)}")

    def bad(why: str) -> SettingsError:
        form = f"{parts.scheme}://[:password@]host:port[,host:port...]/service_name[/db]"
        return SettingsError(f"invalid Sentinel URL {mask_url(url)}: {why} (expected {form})")

    if parts.query or parts.fragment:
        raise bad("query parameters are not supported")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = []
    for item in hostlist.split(","):
        entry = urlsplit(f"//{item}")
        try:
            host, port = entry.hostname, entry.port
        except ValueError:
            raise bad(f"bad port in {item!r}") from None
        if not host:
            raise bad(f"no host in {item!r}" if item else "no sentinel host")
        if port == 0:
            raise bad(f"bad port in {item!r}")
        sentinels.append((host, port or SENTINEL_PORT))
    service_name, _, db = parts.path.strip("/").partition("/")
    if not service_name:
        raise bad("no service name")
    if db and not db.isdigit():
        raise bad(f"db must be a number, not {db!r}")
    return SentinelTarget(
        sentinels=tuple(sentinels), service_name=unquote(service_name), db=int(db or 0),
        username=unquote(username) or None, password=unquote(password) or None,
        ssl=SENTINEL_SCHEMES[parts.scheme],
    )  # fmt: skip


def connect(url: str, *, check: bool = True, timeout_s: float = 5.0) -> Redis:
    """A client for `url`; with `check`, ping it now so a missing server is reported up front as
    RedisUnavailable instead of deep inside a command.

    The check runs on a throwaway client with a `timeout_s` socket timeout and no retries, so a
    server that accepts TCP but never answers is reported within `timeout_s`. The returned
    client has no socket timeout (as redis-py's default): its commands include BLPOP/BLMOVE that
    block for minutes, and rq's worker sets its own, longer socket_timeout on the pool, which
    only connections made after that take up; a short-timeout connection left in the pool by
    the check would cut a worker's blocking dequeue short."""
    client = _client(url, timeout_s=timeout_s)
    if check:
        probe = _client(url, timeout_s=timeout_s, socket_timeout_s=timeout_s)
        try:
            probe.ping()
        except redis.RedisError as e:
            raise RedisUnavailable(mask_url(url), _reason(e, url, timeout_s)) from None
        finally:
            probe.close()
    return client


def _is_sentinel(url: str) -> bool:
    return url.partition("://")[0] in SENTINEL_SCHEMES


def _client(url: str, *, timeout_s: float, socket_timeout_s: float | None = None) -> Redis:
    """A redis-py client for `url`: from_url for plain URLs, Sentinel.master_for for sentinel ones."""
    options: dict[str, Any] = {"socket_connect_timeout": timeout_s, "health_check_interval": 30, "retry": NO_RETRY}
    if socket_timeout_s is not None:
        options["socket_timeout"] = socket_timeout_s
    if not _is_sentinel(url):
        try:
            return Redis.from_url(url, **options)
        except ValueError as e:
            raise SettingsError(f"invalid Redis URL {mask_url(url)}: {e}") from None
    target = parse_sentinel_url(url)
    # Sentinel queries are short, never blocking: always bounded, so one silent sentinel is
    # skipped (discover_master moves on to the next) rather than hanging discovery.
    sentinel_kwargs = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "retry": NO_RETRY,
                       "ssl": target.ssl}  # fmt: skip
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    master = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.service_name, db=target.db, username=target.username, password=target.password, ssl=target.ssl,
        **options,
    )
    return cast(Redis, master)


def _reason(e: redis.RedisError, url: str, timeout_s: float) -> str:
    """What went wrong, in words a user can act on."""
    if isinstance(e, MasterNotFoundError):  # its own text is a repr of every sentinel client
        target = parse_sentinel_url(url)
        hosts = ",".join(f"{h}:{p}" for h, p in target.sentinels)
        return (f"no sentinel at {hosts} named a master for service {target.service_name!r} "
                "(sentinels down or unreachable, a wrong service name, or its master is down)")  # fmt: skip
    if isinstance(e, redis.AuthenticationError):
        return f"authentication failed ({e})"
    if isinstance(e, redis.TimeoutError):
        return f"no answer within {timeout_s:g} s ({e}); is it a Redis server, and reachable?"
    if isinstance(e, redis.ConnectionError):
        return str(e) or type(e).__name__
    if isinstance(e, redis.ResponseError):
        what = "a Sentinel" if _is_sentinel(url) else "a Redis server"
        return f"unexpected reply ({e}); not {what}?"
    return f"the reply is not Redis protocol ({e}); not a Redis server?"
