"""A local fleet of real processes: one dispatcher and sim workers, for `demo`, `local`, the
integration tests and the benchmarks. Each process is the `gpufleet` command, as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis import Redis

from gpufleet.dispatcher.fleet.snapshot import read_nodes
from gpufleet.dispatcher.store.keys import Keys

STOP_GRACE_S = 5.0
# The `gpufleet` command as a child process, started so that the current directory cannot shadow
# gpufleet's modules: `-c` puts the working directory first on sys.path (as '', which this takes
# out), where a user's `cli/` package or `worker.py` would otherwise win over gpufleet's.
GPUFLEET = (sys.executable, "-c", "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
            "from gpufleet.cli.main import main; main()")  # fmt: skip


@dataclass(frozen=True)
class SimNode:
    node_id: str
    speed: float = 1.0
    capacity: int = 1


@dataclass
class LocalFleet:
    """Starts, watches and stops the processes of one fleet on this machine."""

    redis_url: str
    namespace: str = "gpufleet"
    log_level: str = "WARNING"
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_dir: str | None = None  # each process's stderr goes to <log_dir>/<name>.log (appended); None: ours

    def _spawn(self, name: str, args: Sequence[str],
               stdout: int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:  # fmt: skip
        cmd = [*GPUFLEET, "--redis-url", self.redis_url, "--namespace", self.namespace, "--log-level", self.log_level,
               *args]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        if self.log_dir is None:
            proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=None, start_new_session=True)
        else:
            with open(os.path.join(self.log_dir, f"{name}.log"), "ab") as log:
                proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=log, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_dispatcher(self, *extra: str, name: str = "dispatcher") -> subprocess.Popen[bytes]:
        return self._spawn(name, ["dispatcher", *extra])

    def start_worker(self, node: SimNode, *extra: str) -> subprocess.Popen[bytes]:
        args = ["worker", "--node-id", node.node_id, "--probe", "sim", "--sim-speed", f"{node.speed:g}",
                "--capacity", str(node.capacity), *extra]  # fmt: skip
        return self._spawn(node.node_id, args)

    def wait_for_nodes(self, r: Redis, node_ids: Sequence[str], timeout_s: float = 20.0) -> None:
        """Block until every node in `node_ids` is alive; RuntimeError naming the missing ones."""
        keys = Keys(self.namespace)
        deadline = time.monotonic() + timeout_s
        while True:
            alive = {n.node_id for n in read_nodes(r, keys) if n.alive}
            missing = sorted(set(node_ids) - alive)
            if not missing:
                return
            dead = [name for name, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"nodes not alive: {', '.join(missing)} (exited: {', '.join(dead) or 'none'})")
            time.sleep(0.05)

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def stop(self, name: str | None = None) -> None:
        """SIGTERM (warm shutdown), then SIGKILL whatever is still up after the grace period."""
        names = [name] if name else list(self.procs)
        for n in names:
            if self.procs[n].poll() is None:
                self.procs[n].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for n in names:
            proc = self.procs.pop(n)
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
