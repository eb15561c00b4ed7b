"""Redis URLs without a Redis: sentinel URL parsing and masking, and clear errors from a port
that is not Redis (real loopback sockets, no redis-server)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from click.testing import CliRunner
from redis.connection import SSLConnection
from redis.sentinel import SentinelConnectionPool, SentinelManagedConnection, SentinelManagedSSLConnection

from gpufleet.cli.main import cli
from gpufleet.dispatcher.errors import RedisUnavailable, SettingsError
from gpufleet.dispatcher.store.connection import SENTINEL_PORT, SentinelTarget, connect, mask_url, parse_sentinel_url
from gpufleet.dispatcher.store.redis_server import free_port

HTTP_REPLY = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@contextmanager
def tcp_listener(reply: bytes | None) -> Iterator[int]:
    """A loopback port that accepts connections and sends `reply` to the first bytes it reads,
    or, with None, reads and never answers. Yields the port."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if reply is not None:
                conn.recv(4096)
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.shutdown(socket.SHUT_RDWR)  # wakes the accept(); a bare close() would leave it listening
        server.close()
        for conn in held:
            conn.close()
        thread.join(2)


def test_a_sentinel_url_names_every_sentinel_the_service_and_the_db() -> None:
    t = parse_sentinel_url("redis+sentinel://:s3cret@10.0.0.1:26379,sentinel-2:26380,[::1]:26381/gpufleet/2")
    assert t == SentinelTarget(sentinels=(("10.0.0.1", 26379), ("sentinel-2", 26380), ("::1", 26381)),
                               service_name="gpufleet", db=2, password="s3cret")  # fmt: skip


def test_a_sentinel_url_defaults_to_port_26379_db_0_and_no_password() -> None:
    assert parse_sentinel_url("redis+sentinel://s1,s2/mymaster") == SentinelTarget(
        sentinels=(("s1", SENTINEL_PORT), ("s2", SENTINEL_PORT)), service_name="mymaster", db=0)


def test_a_sentinel_url_takes_a_user_and_a_percent_encoded_password() -> None:
    t = parse_sentinel_url("rediss+sentinel://app:p%40ss%3Aw@s1:1/svc/")
    assert (t.username, t.password, t.ssl, t.db) == ("app", "p@ss:w", True, 0)


@pytest.mark.parametrize(
    "url, why",
    [
        ("redis+sentinel:///gpufleet/0", "no sentinel host"),
        ("redis+sentinel://:pw@/gpufleet", "no sentinel host"),
        ("redis+sentinel://s1:26379,:26380/gpufleet", "no host in ':26380'"),
        ("redis+sentinel://s1:abc/gpufleet", "bad port in 's1:abc'"),
        ("redis+sentinel://s1:70000/gpufleet", "bad port in 's1:70000'"),
        ("redis+sentinel://s1:0/gpufleet", "bad port in 's1:0'"),
        ("redis+sentinel://s1:26379", "no service name"),
        ("redis+sentinel://s1:26379/", "no service name"),
        ("redis+sentinel://:pw@s1:26379/gpufleet/zero", "db must be a number, not 'zero'"),
        ("redis+sentinel://s1:26379/gpufleet/0/extra", "db must be a number, not '0/extra'"),
        ("redis+sentinel://s1:26379/gpufleet?socket_timeout=1", "query parameters are not supported"),
    ],
)
def test_a_bad_sentinel_url_is_a_settings_error_saying_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises(SettingsError, match="invalid Sentinel URL") as e:
        connect(url, check=False)
    assert why in str(e.value) and "/service_name[/db]" in str(e.value)
    assert "pw@" not in str(e.value)


@pytest.mark.parametrize(
    "url, masked",
    [
        ("redis+sentinel://:s3cret@s1:26379,s2:26379/gpufleet/0", "redis+sentinel://:***@s1:26379,s2:26379/gpufleet/0"),
        ("rediss+sentinel://app:p@ss@s1,s2/svc", "rediss+sentinel://app:***@s1,s2/svc"),
        ("redis+sentinel://s1:26379,s2:26379/gpufleet/0", "redis+sentinel://s1:26379,s2:26379/gpufleet/0"),
        ("redis://h:6379/0?password=s3cret&db=1", "redis://h:6379/0?password=***&db=1"),
        ("unix://:s3cret@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        ("redis://app@h:6379/0", "redis://app@h:6379/0"),
    ],
)
def test_mask_url_hides_the_password_of_every_url_form(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_a_sentinel_client_asks_the_sentinels_for_the_master_and_gives_them_no_password() -> None:
    r = connect("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/gpufleet/3", check=False)
    pool = r.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "gpufleet" and pool.is_master
    assert pool.connection_class is SentinelManagedConnection
    assert (pool.connection_kwargs["password"], pool.connection_kwargs["db"]) == ("pw", 3)
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    assert all(s.get("password") is None and s["socket_timeout"] == 5.0 for s in sentinels)


def test_a_rediss_sentinel_url_uses_tls_to_sentinels_and_master() -> None:
    r = connect("rediss+sentinel://:pw@s1:26379/gpufleet", check=False)
    assert r.connection_pool.connection_class is SentinelManagedSSLConnection
    sentinels = r.connection_pool.sentinel_manager.sentinels
    assert all(s.connection_pool.connection_class is SSLConnection for s in sentinels)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "redis+sentinel://127.0.0.1:26379/gpufleet"])
def test_the_returned_client_leaves_the_socket_timeout_to_rq(url: str) -> None:
    """BLMOVE/BLPOP block for minutes: rq's worker raises socket_timeout itself, the client sets none."""
    assert connect(url, check=False).connection_pool.connection_kwargs.get("socket_timeout") is None


@pytest.mark.parametrize("scheme", ["redis", "redis+sentinel"])
def test_a_port_that_answers_with_http_is_reported_as_not_a_redis_server(scheme: str) -> None:
    with tcp_listener(HTTP_REPLY) as port:
        url = f"{scheme}://:pw@127.0.0.1:{port}/" + ("gpufleet/0" if "sentinel" in scheme else "0")
        with pytest.raises(RedisUnavailable, match="not a Redis server") as e:
            connect(url, timeout_s=2)
    assert f":***@127.0.0.1:{port}" in str(e.value) and "pw@" not in str(e.value)


def test_a_server_that_never_answers_is_reported_within_the_timeout() -> None:
    with tcp_listener(None) as port:
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match=r"no answer within 0\.5 s"):
            connect(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
        assert time.monotonic() - started < 2.0  # one try: no retries multiplying the timeout


def test_sentinels_that_never_answer_are_reported_within_the_timeout_each() -> None:
    with tcp_listener(None) as p1, tcp_listener(None) as p2:
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match=f"no sentinel at 127.0.0.1:{p1},127.0.0.1:{p2} named a master"):
            connect(f"redis+sentinel://127.0.0.1:{p1},127.0.0.1:{p2}/gpufleet/0", timeout_s=0.5)
        assert time.monotonic() - started < 3.0


def test_nothing_listening_is_reported_at_once() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(RedisUnavailable, match="Connection refused"):
        connect(f"redis://127.0.0.1:{port}/0")
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "url, code, words",
    [
        ("redis://127.0.0.1:{http}/0", 1, "not a Redis server?"),
        ("redis+sentinel://127.0.0.1:{http}/gpufleet", 1, "not a Redis server?"),
        ("redis+sentinel://127.0.0.1:{closed}/gpufleet", 1, "named a master for service 'gpufleet'"),
        ("redis+sentinel://127.0.0.1:{closed}", 2, "invalid Sentinel URL"),  # not a URL gpufleet can use: usage
    ],
)
def test_the_cli_says_what_is_wrong_with_the_redis_url_without_a_traceback(url: str, code: int, words: str) -> None:
    with tcp_listener(HTTP_REPLY) as http:
        result = CliRunner().invoke(cli, ["--redis-url", url.format(http=http, closed=free_port()), "status"])
    assert result.exit_code == code and words in result.output, result.output
    assert "Traceback" not in result.output
