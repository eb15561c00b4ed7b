"""ForwarderWorker: a node slot that keeps up to `concurrency` OpenAI requests in flight.

The jobs are the same rq jobs, taken, started and recorded through the same scripts as any
worker's (node_worker.NodeWorker): taken and started by token-checked takes (as many as
there are requests free, in one call), recorded by the fenced write, so a dead node's
requests are retried elsewhere and a late response is dropped. What differs is the middle:
instead of calling a function, each job's request goes to the server on an asyncio event
loop (httpx), and the responses are recorded as they come back,
several in one transaction when they come together.

Redis calls are made from the event loop's thread: each is a round trip of well under a
millisecond, and the loop waits for Redis only between requests' I/O. Waiting for work when
nothing is in flight happens in a thread (BLPOP on the node's wake-up list).

A request asked to stop (cancel --running, rq's stop-execution command from the node's stopper)
is abandoned: its task is canceled on the event loop, which closes its connection (servers such
as vLLM abort a request whose client went away), and its job ends canceled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
from typing import Any

import httpx
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.utils import now

from gpufleet.dispatcher.fleet.node_claim import stop_mark
from gpufleet.dispatcher.store.connection import REDIS_DOWN

from ..job_run import STOPPED, Outcome, record_outcomes, undecodable
from ..node_worker import NodeWorker
from .exchange import send
from .server import OpenAIServer

log = logging.getLogger(__name__)

IDLE_WAIT_S = 1.0  # with nothing in flight, the node's wake-up list is waited on this long at a time
REFILL_S = 0.05  # with requests in flight and room for more, the queue is looked at again after this
POOL_SIZE = 8  # request slots (and connections) per HTTP client


class ForwarderWorker(NodeWorker):
    """A slot that forwards its jobs' requests to one OpenAI-compatible server."""

    def __init__(self, *args: Any, server: OpenAIServer, concurrency: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server = server
        self.concurrency = concurrency
        self._loop: asyncio.AbstractEventLoop | None = None  # the forwarding loop, while it runs
        self._in_flight: dict[str, asyncio.Task[Outcome]] = {}  # execution id -> its request's task

    def work(self, burst: bool = False, logging_level: str = "WARNING", **_: Any) -> bool:
        """rq's start and goodbye around the forwarding loop; returns once stopped (or, with
        `burst`, once the node queue is empty and nothing is in flight)."""
        try:
            self.bootstrap(logging_level)
            self._install_signal_handlers()
            asyncio.run(self._forward(burst))
        except StopRequested:  # RedisLost or TakenOver: the flags they set say which to work_slot
            pass
        except REDIS_DOWN as e:
            self.redis_lost = e
        finally:
            self._loop = None
            self.teardown()
        return True

    def _may_take_next(self) -> bool:
        return False  # the loop takes as many as it has requests free, not one with each record

    def request_stop(self, signum: Any, frame: Any) -> None:
        """Drain the node, take nothing more and let the requests in flight end; a second
        signal is rq's cold stop. Never raises (rq's StopRequested would land inside the event
        loop at any point)."""
        self.stop_requested = self._stop_requested = True
        self._shutdown_requested_date = now()
        with self._outside_loop():
            self.connection.set(self.keys.drain_flag(self.node_id), stop_mark(self.taker.token), nx=True)
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)

    def request_stop_execution(self, execution_id: str) -> None:
        """rq's stop-execution command, in rq's command thread: abandon that run's request."""
        loop, task = self._loop, self._in_flight.get(execution_id)
        if loop is not None and task is not None:
            log.info("abandoning a request on request node=%s execution=%s", self.node_id, execution_id)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the request is over anyway
                loop.call_soon_threadsafe(task.cancel)

    async def _forward(self, burst: bool) -> None:
        self._loop = asyncio.get_running_loop()
        slots = list(range(self.concurrency))  # free request slots, for the node's busy-time counters
        running: dict[asyncio.Task[Outcome], tuple[Job, Execution, int, float]] = {}
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(client) for client in self._clients()]
            while True:
                room = 0 if self.stop_requested else self.concurrency - len(running)
                taken = 0
                if room:
                    for job, execution in self._take_and_start(room):
                        slot = slots.pop()
                        self.stats.job_started(slot)
                        timeout = min(float(job.timeout or "inf"), self.server.request_timeout_s)
                        task = asyncio.create_task(send(clients[slot // POOL_SIZE], job.args[0], timeout))
                        running[task] = (job, execution, slot, time.perf_counter())
                        self._in_flight[execution.id] = task
                        taken += 1
                if not running:
                    if self.stop_requested or burst:
                        return
                    self.heartbeat()  # rq's worker key (at most once a second)
                    await asyncio.to_thread(self.connection.blpop, [self.taker.wakeup], IDLE_WAIT_S)
                    continue
                wait = REFILL_S if (room - taken) > 0 else None
                done, _ = await asyncio.wait(running, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if done:
                    self._record([(task, *running.pop(task)) for task in done], slots)

    def _clients(self) -> list[httpx.AsyncClient]:
        """One client per POOL_SIZE request slots (slot s sends with client s // POOL_SIZE), each
        with that many connections, so a request never waits for a connection and each pool
        stays small: httpcore looks at every connection of its pool on each request and each
        response (a third of the forwarder's CPU at concurrency 32 with one pool of 32)."""
        limits = httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)
        return [httpx.AsyncClient(base_url=self.server.root, headers=self.server.headers(), limits=limits)
                for _ in range(math.ceil(self.concurrency / POOL_SIZE))]  # fmt: skip

    def _take_and_start(self, room: int) -> list[tuple[Job, Execution]]:
        """Up to `room` jobs taken and started; a job whose payload cannot be decoded fails for
        good at once (nothing of it is sent)."""
        ready, bad = [], []
        for job, execution in self.take_started(room):
            why = undecodable(job)
            if why is None and not (job.args and isinstance(job.args[0], dict) and "url" in job.args[0]):
                why = "not an OpenAI request: its input needs method, url and body (an OpenAI batch line's)"
            if why is None:
                ready.append((job, execution))
            else:
                bad.append((job, execution, Outcome(False, why, final=True)))
        if bad:
            record_outcomes(self, self.queues[0], *map(list, zip(*bad)))
        return ready

    def _record(self, done: list[tuple[asyncio.Task[Outcome], Job, Execution, int, float]], slots: list[int]) -> None:
        """The responses that came back, recorded together; their slots freed."""
        jobs, executions, outcomes = [], [], []
        for task, job, execution, slot, started in done:
            self._in_flight.pop(execution.id, None)
            outcome = STOPPED if task.cancelled() else task.result()
            if outcome.stopped:
                self.stats.jobs_stopped(slot)
            else:
                self.stats.job_ended(time.perf_counter() - started, outcome.ok, slot)
            slots.append(slot)
            jobs.append(job)
            executions.append(execution)
            outcomes.append(outcome)
        record_outcomes(self, self.queues[0], jobs, executions, outcomes)
