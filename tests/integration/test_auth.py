"""A Redis with a password: everything works, and the password never shows."""

from __future__ import annotations

import signal
import subprocess

import redis

from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import GPUFLEET

from .support import gpufleet, wait_until

SECRET = "s3cret-pw"


def test_a_password_url_works_and_is_masked_everywhere() -> None:
    with RedisServer(password=SECRET) as server:
        out = gpufleet(server.url, "auth", "status", "--json")
        assert out.returncode == 0, out.stderr

        wrong = gpufleet(server.url.replace(SECRET, "wrong-pw"), "auth", "status")
        assert wrong.returncode == 1 and "authentication failed" in wrong.stderr.lower()
        assert ":***@127.0.0.1" in wrong.stderr and "wrong-pw" not in wrong.stderr

        proc = subprocess.Popen([*GPUFLEET, "--redis-url", server.url, "--namespace", "auth",
                                 "--log-level", "DEBUG", "dispatcher"], stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            r = redis.Redis.from_url(server.url)
            wait_until(lambda: r.exists(Keys("auth").dispatcher_lease), 10, "the dispatcher to take its lease")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
        assert "dispatcher started redis=redis://:***@127.0.0.1" in err
        assert SECRET not in err
