"""The dispatcher lease: one active dispatcher per fleet, the others stand by.

The holder renews the lease every third of its TTL; a standby takes it once it expires, so a
dead dispatcher is replaced within one TTL. Moves are idempotent (a job moves only if it is
still in the ingress), so two dispatchers overlapping for a moment route no job twice.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import Callable

from redis import Redis

from ..store.keys import Keys
from ..store.scripts import Scripts

log = logging.getLogger(__name__)


class Lease:
    """Acquire, renew and release this process's claim to be the active dispatcher."""

    def __init__(self, r: Redis, keys: Keys, scripts: Scripts, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._r, self._keys, self._scripts = r, keys, scripts
        self._ttl_ms = int(ttl_s * 1000)
        self._clock = clock
        self.token = f"{socket.gethostname()}:{secrets.token_hex(4)}"
        self.held = False
        self._checked_at = float("-inf")
        self._announced_standby = False

    def check(self) -> bool:
        """True while this process holds the lease; acquires or renews it every TTL/3."""
        if self._clock() - self._checked_at < self._ttl_ms / 3000:
            return self.held
        self._checked_at = self._clock()
        was_held = self.held
        if self.held:
            self.held = self._scripts.renew_lease(self.token, self._ttl_ms)
        if not self.held:
            self.held = bool(self._r.set(self._keys.dispatcher_lease, self.token, nx=True, px=self._ttl_ms))
        if self.held and not was_held:
            log.info("dispatcher active token=%s", self.token)
        elif not self.held and not self._announced_standby:
            log.info("dispatcher standing by: another dispatcher holds the lease token=%s", self.token)
            self._announced_standby = True
        elif was_held and not self.held:
            log.warning("dispatcher lease lost, standing by token=%s", self.token)
        return self.held

    def release(self) -> None:
        if self.held:
            self._scripts.release_lease(self.token)
            log.info("dispatcher lease released token=%s", self.token)
            self.held = False
