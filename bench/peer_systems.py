"""The task queues bench/latency.py and bench/peers.py run, behind one small interface.

Each System runs its real worker processes (each in a session of its own, so its CPU time can
be read from /proc: real_policies.session_cpu_s) on one private redis-server, and offers the
client side of its own API: `submit` one job and read its `result` (what a caller waits on),
`submit_all` N jobs the way its docs bulk-submit, and a `waiter` that says when every result
is readable, polling one cheap command whose calls it counts (the benches subtract them).

    gpufleet  `gpufleet dispatcher` + `gpufleet worker --probe sim --capacity 1` (LocalFleet)
    rq        SimpleWorker, JSONSerializer, default result_ttl (peer_apps/rq_worker.py)
    celery    `celery worker --pool solo`, Redis broker and Redis result backend
    huey      RedisHuey, `huey_consumer` at its defaults (1 worker thread)
    dramatiq  RedisBroker + Results(RedisBackend), store_results=True; `--processes W`, 8 threads
    saq       Redis queue, `saq --workers W` (concurrency 10 per process, its default)
    taskiq    RedisStreamBroker + RedisAsyncResultBackend, `taskiq worker --workers W`
              (max_async_tasks 100 per process, its default)
    arq       one `arq` process per worker (max_jobs 10, its default)

The apps (one no-op `echo` task each) are bench/peer_apps/; every worker counts itself in
there (peer_apps.READY_KEY) once ready, and `start` returns once all have.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from redis import Redis

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [p for p in (str(ROOT), str(BENCH)) if p not in sys.path]  # gpufleet, then peer_apps

from peer_apps import READY_KEY  # bench/peer_apps/ (ruff files it as third-party)
from rq import Queue
from rq.serializers import JSONSerializer

from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.worker.fleet import LocalFleet, SimNode
from gpufleet.worker.tasks import echo as gpufleet_echo

READY_TIMEOUT_S = 60.0
RESULT_TIMEOUT_S = 10  # one job's result (latency); whole numbers: rq and dramatiq block in seconds
STOP_GRACE_S = 3.0
EXISTS_CHUNK = 200  # result keys per EXISTS of a KeysWaiter


# --- waiting for every result, counting the polls ---------------------------------------------


class PollWaiter:
    """Done once `check()` is true; `check` sends one `command` per call, counted in `sent`."""

    def __init__(self, command: str, check: Callable[[], bool]) -> None:
        self.command, self.check, self.sent = command, check, Counter[str]()

    def done(self) -> bool:
        self.sent[self.command] += 1
        return self.check()


class KeysWaiter:
    """Done once every key exists: one EXISTS per chunk of the keys not seen yet, in order."""

    def __init__(self, r: Redis, keys: Sequence[str | bytes]) -> None:
        self.r, self.pending, self.sent = r, list(keys), Counter[str]()

    def done(self) -> bool:
        while self.pending:
            chunk = self.pending[:EXISTS_CHUNK]
            self.sent["exists"] += 1
            if self.r.exists(*chunk) < len(chunk):
                return False
            del self.pending[:EXISTS_CHUNK]
        return True


Waiter = PollWaiter | KeysWaiter


def wait_all(waiter: Waiter, poll_s: float, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not waiter.done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"results not all readable after {timeout_s:.0f} s")
        time.sleep(poll_s)


def poll_until(read: Callable[[], Any], poll_s: float, timeout_s: float = RESULT_TIMEOUT_S) -> Any:
    """read() every poll_s until it returns something other than None."""
    deadline = time.monotonic() + timeout_s
    while (value := read()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no result after {timeout_s} s")
        time.sleep(poll_s)
    return value


async def apoll_until(read: Callable[[], Coroutine[Any, Any, Any]], poll_s: float,
                      timeout_s: float = RESULT_TIMEOUT_S) -> Any:  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while (value := await read()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no result after {timeout_s} s")
        await asyncio.sleep(poll_s)
    return value


# --- processes -----------------------------------------------------------------------------------


def worker_env(url: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(BENCH), str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "BENCH_REDIS_URL": url}


def stop_groups(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM each process group (a CLI and the worker processes it forked), SIGKILL what is left."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # children a CLI left behind, or a leader still up
        p.wait()


def fresh_import(name: str) -> ModuleType:
    """The app module imported anew: fresh clients (and, for the asyncio ones, none bound to an
    event loop of an earlier trial)."""
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# --- the systems ---------------------------------------------------------------------------------


class System:
    """One system's workers and its client. `trial` makes queue names and namespaces unique."""

    name: ClassVar[str]
    module: ClassVar[str]  # what must be importable for the system to run
    slots: ClassVar[int]  # jobs one worker process runs at a time, at the settings used here

    def __init__(self, r: Redis, url: str, trial: str, poll_s: float) -> None:
        self.r, self.url, self.trial, self.poll_s = r, url, trial, poll_s

    def start(self, workers: int) -> None:
        raise NotImplementedError

    def leaders(self) -> list[int]:
        """The session leaders of every process this system runs (workers, dispatcher)."""
        raise NotImplementedError

    def submit(self, i: int) -> Any:
        raise NotImplementedError

    def result(self, handle: Any) -> Any:
        """The job's return value, once it is readable by this client (blocks)."""
        raise NotImplementedError

    def submit_all(self, n: int) -> list[Any]:
        return [self.submit(i) for i in range(n)]

    def waiter(self, handles: list[Any]) -> Waiter:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class ProcessSystem(System):
    """Workers started as CLI commands, each counting itself in under READY_KEY."""

    def __init__(self, r: Redis, url: str, trial: str, poll_s: float) -> None:
        super().__init__(r, url, trial, poll_s)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.connected = False
        self._logs = tempfile.TemporaryDirectory(prefix=f"bench-{self.name}-")

    def commands(self, workers: int) -> list[list[str]]:
        """The command lines to run for `workers` worker processes."""
        raise NotImplementedError

    def connect(self) -> None:
        """Set up the client side (after the workers are ready)."""

    def start(self, workers: int) -> None:
        os.environ["BENCH_REDIS_URL"] = self.url  # for the app module the client imports
        for i, cmd in enumerate(self.commands(workers)):
            with open(Path(self._logs.name, f"{i}.log"), "wb") as log:
                self.procs.append(subprocess.Popen(cmd, env=worker_env(self.url), cwd=ROOT, stdout=log,
                                                   stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
        self._wait_ready(workers)
        self.connect()
        self.connected = True

    def _wait_ready(self, workers: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while int(self.r.get(READY_KEY) or 0) < workers:
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                logs = "".join(p.read_text(errors="replace")[-3000:] for p in Path(self._logs.name).glob("*.log"))
                raise RuntimeError(f"{self.name} workers did not start:\n{logs}")
            time.sleep(0.02)

    def leaders(self) -> list[int]:
        return [p.pid for p in self.procs]

    def disconnect(self) -> None:
        """Close the client side."""

    def stop(self) -> None:
        try:
            if self.connected:
                self.disconnect()
        finally:
            stop_groups(self.procs)
            self._logs.cleanup()


class AsyncioSystem(ProcessSystem):
    """A system whose client is asyncio: one event loop per trial, run from this thread."""

    def __init__(self, r: Redis, url: str, trial: str, poll_s: float) -> None:
        super().__init__(r, url, trial, poll_s)
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def submit_all(self, n: int) -> list[Any]:
        """One awaited enqueue per job, in turn (a gather of thousands would open as many connections)."""

        async def each() -> list[Any]:
            return [await self.asubmit(i) for i in range(n)]

        return list(self.run(each()))

    def submit(self, i: int) -> Any:
        return self.run(self.asubmit(i))

    async def asubmit(self, i: int) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.loop.close()


class Gpufleet(System):
    name, module, slots = "gpufleet", "gpufleet", 1
    FUNC = "gpufleet.worker.tasks:echo"

    def __init__(self, r: Redis, url: str, trial: str, poll_s: float) -> None:
        super().__init__(r, url, trial, poll_s)
        self.keys, self.fleet = Keys(f"peers{trial}"), LocalFleet(url, f"peers{trial}")

    def start(self, workers: int) -> None:
        self.fleet.start_dispatcher()
        nodes = [SimNode(f"node-{i}") for i in range(workers)]
        for node in nodes:
            self.fleet.start_worker(node)
        self.fleet.wait_for_nodes(self.r, [node.node_id for node in nodes])
        while not self.r.exists(self.keys.dispatcher_lease):
            time.sleep(0.02)
        self.submitter = Submitter(self.r, Settings(redis_url=self.url, namespace=self.keys.namespace))

    def leaders(self) -> list[int]:
        return [p.pid for p in self.fleet.procs.values()]

    def submit(self, i: int) -> str:
        return self.submitter.submit([JobSpec(self.FUNC, i)]).batch_id

    def result(self, handle: str) -> Any:
        """Polls the batch's counters (one HGETALL) every poll_s, then reads its one record."""
        poll_until(lambda: True if read_progress(self.r, self.keys, handle).done else None, self.poll_s)
        record = next(iter_results(self.r, self.keys, handle))
        if record["status"] != "finished":
            raise RuntimeError(f"gpufleet job {record['job_id']} ended {record['status']}: {record.get('error')}")
        return record["result"]

    def submit_all(self, n: int) -> list[Any]:
        return [self.submitter.submit([JobSpec(self.FUNC, i) for i in range(n)]).batch_id]

    def waiter(self, handles: list[Any]) -> Waiter:
        return PollWaiter("hgetall", lambda: read_progress(self.r, self.keys, handles[0]).done)

    def stop(self) -> None:
        self.fleet.stop()


class Rq(ProcessSystem):
    name, module, slots = "rq", "rq", 1

    def commands(self, workers: int) -> list[list[str]]:
        return [[sys.executable, "-m", "peer_apps.rq_worker", f"peers{self.trial}"]] * workers

    def connect(self) -> None:
        self.queue = Queue(f"peers{self.trial}", connection=self.r, serializer=JSONSerializer)

    def submit(self, i: int) -> Any:
        return self.queue.enqueue(gpufleet_echo, i)

    def result(self, handle: Any) -> Any:
        """Blocks on the job's Results stream (XREAD BLOCK): job.latest_result(timeout=...)."""
        latest = handle.latest_result(timeout=RESULT_TIMEOUT_S)
        if latest is None:
            raise TimeoutError(f"no rq result after {RESULT_TIMEOUT_S} s")
        return latest.return_value

    def submit_all(self, n: int) -> list[Any]:
        return list(self.queue.enqueue_many([Queue.prepare_data(gpufleet_echo, args=(i,)) for i in range(n)]))

    def waiter(self, handles: list[Any]) -> Waiter:
        key, n = self.queue.finished_job_registry.key, len(handles)
        return PollWaiter("zcard", lambda: self.r.zcard(key) >= n)


class Celery(ProcessSystem):
    name, module, slots = "celery", "celery", 1

    def commands(self, workers: int) -> list[list[str]]:
        return [[sys.executable, "-m", "celery", "-A", "peer_apps.celery_app", "worker", "--pool", "solo",
                 "--concurrency", "1", "-n", f"w{i}.{self.trial}@%h", "--loglevel", "WARNING",
                 "--without-gossip", "--without-mingle", "--without-heartbeat"]
                for i in range(workers)]  # fmt: skip

    def connect(self) -> None:
        self.mod = fresh_import("peer_apps.celery_app")

    def submit(self, i: int) -> Any:
        return self.mod.echo.apply_async((i,))

    def result(self, handle: Any) -> Any:
        """Blocks in AsyncResult.get(): the Redis backend's pub/sub on the task's key."""
        return handle.get(timeout=RESULT_TIMEOUT_S)

    def submit_all(self, n: int) -> list[Any]:
        with self.mod.app.connection_for_write() as conn, conn.Producer() as producer:
            return [self.mod.echo.apply_async((i,), producer=producer) for i in range(n)]

    def waiter(self, handles: list[Any]) -> Waiter:
        return KeysWaiter(self.r, [self.mod.app.backend.get_key_for_task(h.id) for h in handles])

    def disconnect(self) -> None:
        self.mod.app.backend.result_consumer.stop()  # its pub/sub connection, subscribed to every task
        self.mod.app.close()


class Huey(ProcessSystem):
    name, module, slots = "huey", "huey", 1

    def commands(self, workers: int) -> list[list[str]]:
        return [[sys.executable, "-m", "huey.bin.huey_consumer", "peer_apps.huey_app.huey"]] * workers

    def connect(self) -> None:
        self.mod = fresh_import("peer_apps.huey_app")

    def submit(self, i: int) -> Any:
        return self.mod.echo(i)

    def result(self, handle: Any) -> Any:
        """Polls result.get() (HGET + HDEL) every poll_s: get(blocking=True) would sleep 50 ms
        first, then 15% longer each try, and so measure its backoff rather than huey."""
        return poll_until(handle.get, self.poll_s)

    def waiter(self, handles: list[Any]) -> Waiter:
        key, n = self.mod.huey.storage.result_key, len(handles)
        return PollWaiter("hlen", lambda: self.r.hlen(key) >= n)


class Dramatiq(ProcessSystem):
    name, module, slots = "dramatiq", "dramatiq", 8

    def commands(self, workers: int) -> list[list[str]]:
        return [[sys.executable, "-m", "dramatiq", "peer_apps.dramatiq_app", "--processes", str(workers)]]

    def connect(self) -> None:
        self.mod = fresh_import("peer_apps.dramatiq_app")

    def submit(self, i: int) -> Any:
        return self.mod.echo.send(i)

    def result(self, handle: Any) -> Any:
        """Blocks on the result's list (BRPOPLPUSH): message.get_result(block=True)."""
        return handle.get_result(backend=self.mod.backend, block=True, timeout=RESULT_TIMEOUT_S * 1000)

    def waiter(self, handles: list[Any]) -> Waiter:
        return KeysWaiter(self.r, [self.mod.backend.build_message_key(m) for m in handles])


class Saq(AsyncioSystem):
    name, module, slots = "saq", "saq", 10

    def commands(self, workers: int) -> list[list[str]]:
        return [[sys.executable, "-m", "saq", "peer_apps.saq_app.settings", "--workers", str(workers)]]

    def connect(self) -> None:
        self.queue = fresh_import("peer_apps.saq_app").queue
        self.run(self.queue.connect())

    async def asubmit(self, i: int) -> Any:
        return await self.queue.enqueue("echo", value=i)

    def result(self, handle: Any) -> Any:
        """Polls queue.job(key) (one GET) every poll_s: job.refresh(until_complete=...) reads the
        job, then subscribes, and misses a result published in between (a 10 s stall)."""

        async def finished() -> Any:
            job = await self.queue.job(handle.key)
            return job if job is not None and job.completed else None

        return self.run(apoll_until(finished, self.poll_s)).result

    def waiter(self, handles: list[Any]) -> Waiter:
        key = self.queue.namespace("incomplete")  # a job leaves it in the transaction that stores its result
        return PollWaiter("zcard", lambda: self.r.zcard(key) == 0)

    def disconnect(self) -> None:
        self.run(self.queue.disconnect())


class Taskiq(AsyncioSystem):
    name, module, slots = "taskiq", "taskiq_redis", 100

    def commands(self, workers: int) -> list[list[str]]:
        return [[sys.executable, "-m", "taskiq", "worker", "peer_apps.taskiq_app:broker", "--workers", str(workers)]]

    def connect(self) -> None:
        self.mod = fresh_import("peer_apps.taskiq_app")
        self.run(self.mod.broker.startup())

    async def asubmit(self, i: int) -> Any:
        return await self.mod.echo.kiq(i)

    def result(self, handle: Any) -> Any:
        """Polls in task.wait_result(check_interval=poll_s): one EXISTS per check."""
        return self.run(handle.wait_result(check_interval=self.poll_s, timeout=RESULT_TIMEOUT_S)).return_value

    def waiter(self, handles: list[Any]) -> Waiter:
        return KeysWaiter(self.r, [h.task_id for h in handles])

    def disconnect(self) -> None:
        self.run(self.mod.broker.shutdown())


class Arq(AsyncioSystem):
    name, module, slots = "arq", "arq", 10

    def commands(self, workers: int) -> list[list[str]]:
        return [[sys.executable, "-m", "arq", "peer_apps.arq_app.WorkerSettings"]] * workers

    def connect(self) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        self.pool = self.run(create_pool(RedisSettings.from_dsn(self.url)))

    async def asubmit(self, i: int) -> Any:
        return await self.pool.enqueue_job("echo", i)

    def result(self, handle: Any) -> Any:
        """Polls job.result_info() (one GET) every poll_s: job.result() GETs the result, then
        ZSCOREs the queue (not in one transaction) and raises ResultNotFound when the job
        finished in between."""
        return self.run(apoll_until(handle.result_info, self.poll_s)).result

    def waiter(self, handles: list[Any]) -> Waiter:
        from arq.constants import default_queue_name

        return PollWaiter("zcard", lambda: self.r.zcard(default_queue_name) == 0)  # left when its result is set

    def disconnect(self) -> None:
        self.run(self.pool.aclose())


SYSTEMS: dict[str, type[System]] = {s.name: s for s in (Gpufleet, Rq, Celery, Huey, Dramatiq, Saq, Taskiq, Arq)}


def available(names: Sequence[str]) -> list[str]:
    """The systems among `names` whose library imports, saying in one line which are skipped."""
    found = []
    for name in names:
        if importable(SYSTEMS[name].module):
            found.append(name)
        else:
            why = f"{SYSTEMS[name].module} is not importable"
            print(f"{name} skipped: {why} (pip install -e '.[peers]')", file=sys.stderr)
    return found
