"""connect() against a real redis-server, and the embedded server's own process group."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from gpufleet.dispatcher.store.connection import connect
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def test_a_checked_client_still_blocks_longer_than_the_check_timeout(redis_server: RedisServer) -> None:
    """The check's short socket timeout stays on its own connection: an idle worker's BLPOP (5 s
    in node_worker.py, minutes in rq's dequeue) is not cut short by it."""
    r = connect(redis_server.url, timeout_s=0.2)
    started = time.monotonic()
    assert r.blpop([Keys("conn").node_wakeup("a")], timeout=1) is None
    assert time.monotonic() - started >= 0.9


CTRL_C = textwrap.dedent("""
    import os, signal, time
    import redis
    from gpufleet.dispatcher.store.redis_server import RedisServer

    server = RedisServer().start()
    try:
        os.killpg(0, signal.SIGINT)  # Ctrl-C: SIGINT to the terminal's whole foreground group
        time.sleep(5)
    except KeyboardInterrupt:
        pass
    time.sleep(0.5)  # long enough for a redis-server that got the SIGINT to shut down
    try:
        print("alive" if redis.Redis(port=server.port).ping() else "no pong")
    except redis.ConnectionError as e:
        print("dead", e)
    server.cleanup()
""")


def test_the_embedded_redis_server_outlives_a_ctrl_c_until_the_cli_stops_it() -> None:
    """Given a process (in a group of its own, standing in for the terminal's) that started a
    RedisServer, if the group gets SIGINT, the server keeps running until the process stops it."""
    out = subprocess.run([sys.executable, "-c", CTRL_C], cwd=ROOT, capture_output=True, text=True, timeout=30,
                         start_new_session=True)  # fmt: skip
    assert out.stdout.strip() == "alive", out.stdout + out.stderr
