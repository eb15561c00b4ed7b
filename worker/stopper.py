"""The node's stopper: stops the runs an operator asked to stop on this node (cancel --running).

A thread of the node process (beside the heartbeat), so it works whatever a slot's job does. It
waits on the node's stop wake-up list and reads the node's stop requests (keys.stop_requests).
For each run of this incarnation's slots still in the node queue's started registry:

- it sends rq's `stop-execution` command to the slot's rq worker (its pubsub channel), again
  every RESEND_S while the run goes on: the slot raises JobStopped inside the call
  (worker/call_stop.py) and records the job canceled, its process and models kept;
- once the run has outlived the stop grace (Settings.stop_grace_s; a call that never returns to
  Python, or holds the GIL), it kills that slot process. The node's supervisor hands back what
  the slot held (the job asked to stop ends canceled, health.requeue_node) and starts a new one.

A request whose run is over (ended, handed back) is dropped from the set. A run of an earlier
incarnation is not this process's: the new incarnation's recovery ended it already.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Collection

from redis import Redis
from rq.command import send_command

from gpufleet.dispatcher.fleet.node_claim import worker_pid
from gpufleet.dispatcher.store.connection import REDIS_DOWN
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.scripts import as_raw, read_id

from .supervisor import MAX_RESTART_BACKOFF_S, RESTART_BACKOFF_S

log = logging.getLogger(__name__)

RESEND_S = 0.5  # while a run asked to stop goes on, its slot is told again this often
# With nothing to stop, the wake-up list is waited on this long at a time: under the client's
# socket timeout (redis-py 8's default: 5 s), which would end a longer BLPOP as an error.
IDLE_WAIT_S = 2.0


class Stopper(threading.Thread):
    """Stops this node's runs that are asked to stop, softly first, then by restarting their slot."""

    def __init__(self, r: Redis, keys: Keys, node_id: str, incarnation: str, *, grace_s: float,
                 slot_pids: Callable[[], Collection[int]], clock: Callable[[], float] = time.monotonic,
                 kill: Callable[[int, int], None] = os.kill) -> None:  # fmt: skip
        super().__init__(name=f"stopper-{node_id}", daemon=True)
        self._r, self._keys, self._node_id, self._incarnation = r, keys, node_id, incarnation
        self._grace_s, self._slot_pids, self._clock, self._kill = grace_s, slot_pids, clock, kill
        self._seen: dict[str, float] = {}  # run -> when this stopper first saw it asked
        self._killed: set[int] = set()  # slot processes killed for a run that did not stop
        self._stop_event = threading.Event()

    def run(self) -> None:
        down, backoff_s = False, RESTART_BACKOFF_S
        wakeup = self._keys.stop_wakeup(self._node_id)
        while not self._stop_event.is_set():
            try:
                pending = self.step()
                if down:
                    log.info("stopper reconnected node=%s", self._node_id)
                    down, backoff_s = False, RESTART_BACKOFF_S
                self._r.blpop([wakeup], timeout=RESEND_S if pending else IDLE_WAIT_S)
            except REDIS_DOWN as e:
                if not down:
                    log.error("redis unreachable, stop requests wait node=%s error=%s", self._node_id, e)
                    down = True
                self._stop_event.wait(backoff_s)
                backoff_s = min(MAX_RESTART_BACKOFF_S, backoff_s * 2)

    def step(self) -> int:
        """Act once on the node's stop requests; how many runs asked to stop are still running here."""
        requests = sorted(read_id(m) for m in self._r.smembers(self._keys.stop_requests(self._node_id)))
        started = Keys.rq_started(self._keys.node_queue(self._node_id))
        with self._r.pipeline(transaction=False) as p:
            for member in requests:
                p.zscore(started, as_raw(member))
                p.hget(as_raw(Keys.rq_job(member.rpartition(":")[0])), "worker_name")  # the run's, while it runs
            replies = p.execute()
        over = [m for m, score in zip(requests, replies[::2]) if score is None]
        if over:
            self._r.srem(self._keys.stop_requests(self._node_id), *(as_raw(m) for m in over))
        now = self._clock()
        running = 0
        for member, score, raw_worker in zip(requests, replies[::2], replies[1::2]):
            worker = raw_worker.decode() if raw_worker else ""
            pid = worker_pid(worker, self._node_id, self._incarnation)
            if score is None or pid is None:
                continue  # over, or a run of an earlier process of this node (its recovery ends it)
            running += 1
            job_id, _, execution_id = member.rpartition(":")
            first = self._seen.setdefault(member, now)
            if pid in self._killed:
                continue  # its slot is being restarted: the supervisor's hand-back ends the job
            if now - first >= self._grace_s and pid in self._slot_pids():
                log.warning("job did not stop within the grace, its slot process restarts node=%s job=%s pid=%d "
                            "grace_s=%g", self._node_id, job_id, pid, self._grace_s)  # fmt: skip
                self._killed.add(pid)
                self._kill(pid, signal.SIGKILL)
                continue
            if first == now:
                log.info("stopping job on request node=%s job=%s", self._node_id, job_id)
            send_command(self._r, worker, "stop-execution", job_id=job_id, execution_id=execution_id)
        self._seen = {m: t for m, t in self._seen.items() if m in requests}
        self._killed &= set(self._slot_pids())  # a killed slot's successor has another pid
        return running

    def stop(self) -> None:
        self._stop_event.set()
