"""Settings, resolved once: dataclass defaults, then GPUFLEET_<FIELD> env vars, then CLI flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import SettingsError
from .store.keys import DEFAULT_TENANT, namespace_problem, tenant_problem

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# status, top and metrics stop showing a node dead this long (GPUFLEET_FORGET_DEAD_AFTER_S)
FORGET_DEAD_AFTER_S = 3600.0


@dataclass(frozen=True)
class Settings:
    """Everything tunable about one fleet; passed down, never read from the environment twice."""

    redis_url: str = DEFAULT_REDIS_URL
    namespace: str = "gpufleet"
    tenant: str = DEFAULT_TENANT  # the tenant a submit's batch belongs to unless it names one
    heartbeat_interval_s: float = 1.0
    heartbeat_ttl_s: float = 5.0  # liveness key TTL: a few heartbeat periods
    snapshot_interval_s: float = 0.15  # how often the dispatcher re-reads node heartbeats
    dispatch_batch: int = 1000  # job ids read from an ingress per routing round (at most the free room)
    prefetch: int = -1  # jobs a node holds beyond its slots (late binding); -1: what dispatch latency needs
    max_node_queue: int = -1  # -1: capacity + prefetch; 0: unbounded; N: at most N per node
    policy: str = "speed-thresholds"  # routing.policies.DEFAULT_POLICY (a test keeps them equal)
    low_share: float = 0.05  # share of routing rounds that serve the low ingress first
    alpha: float = 0.6  # load-aware: weight of GPU utilization
    beta: float = 0.3  # load-aware: weight of GPU memory utilization
    gamma: float = 0.1  # load-aware: floor, so an idle node's weight stays finite
    kv: float = 0.5  # load-aware: weight of a forwarder's server's KV-cache use (0 elsewhere)
    submit_chunk: int = 1000  # jobs per pipelined round trip when submitting
    result_ttl_s: int = 7 * 24 * 3600  # how long rq keeps results (and finished/failed jobs)
    node_loss_retries: int = 2  # a job whose node died runs again up to max(this, its retries) times
    retry_base_s: float = 1.0  # first retry backoff; doubles per attempt, with jitter
    retry_cap_s: float = 60.0  # longest retry backoff
    lease_ttl_s: float = 3.0  # a standby dispatcher takes over within this long
    outlier_failure_rate: float = 0.5  # eject a node when this share of its recent jobs failed...
    outlier_min_jobs: int = 10  # ...out of at least this many...
    outlier_window_s: float = 60.0  # ...ended within this window
    eject_cooldown_s: float = 30.0  # how long an ejected node gets no jobs
    max_nodes: int = 0  # autoscaler: most nodes to ask for; 0 = autoscaler off
    min_nodes: int = 0  # autoscaler: fewest nodes to ask for
    target_drain_s: float = 60.0  # autoscaler: drain the waiting jobs within this long
    scale_up_cooldown_s: float = 15.0  # autoscaler: since the last change, before going up
    scale_down_cooldown_s: float = 300.0  # autoscaler: since the last change, before going down
    scale_cmd: str = ""  # autoscaler: 'CMD {n}' run (no shell) when the desired count changes
    history_bucket_s: float = 10.0  # the web dashboard's charts: one bucket per this many seconds (4 hours kept)
    forget_dead_after_s: float = FORGET_DEAD_AFTER_S  # hide a node dead this long since its last beat; 0: never
    events_max: int = 100_000  # event stream entries kept (about: XADD MAXLEN ~), oldest dropped first
    stop_grace_s: float = 10.0  # a job asked to stop (cancel --running) still running this long: its slot restarts
    oom_cooldown_s: float = 10.0  # a node whose job ran out of CUDA memory takes no new job for this long

    def __post_init__(self) -> None:
        if (why := namespace_problem(self.namespace) or tenant_problem(self.tenant)) is not None:
            raise SettingsError(why)
        if self.heartbeat_interval_s <= 0 or self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise SettingsError(
                "heartbeat_ttl_s must exceed heartbeat_interval_s (> 0), or a live node looks dead "
                f"(got interval={self.heartbeat_interval_s}, ttl={self.heartbeat_ttl_s})"
            )
        for name in ("snapshot_interval_s", "history_bucket_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0")
        for name in ("dispatch_batch", "submit_chunk", "events_max"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1")
        if not 0 <= self.low_share < 1:
            raise SettingsError(f"low_share must be in [0, 1) (got {self.low_share})")
        if self.forget_dead_after_s < 0:
            raise SettingsError(f"forget_dead_after_s must be >= 0 (0: never hide a dead node; "
                                f"got {self.forget_dead_after_s})")  # fmt: skip
        for name in ("stop_grace_s", "oom_cooldown_s"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.prefetch < -1 or self.max_node_queue < -1:
            raise SettingsError("prefetch and max_node_queue must be >= -1 (-1: derived)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Defaults, overridden by GPUFLEET_<FIELD> (e.g. GPUFLEET_REDIS_URL)."""
        overrides: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"GPUFLEET_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            try:
                overrides[f.name] = type(f.default)(raw)  # type: ignore[misc]  # every field has a default
            except ValueError:
                raise SettingsError(f"GPUFLEET_{f.name.upper()}={raw!r} is not a valid "
                                    f"{type(f.default).__name__}") from None  # fmt: skip
        return cls(**overrides)

    def with_overrides(self, **values: Any) -> Settings:
        """These settings with every non-None value replaced (flags the user gave)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})
