"""Pure parsing: heartbeat HASH -> NodeState, env -> Settings, Redis URL masking."""

from __future__ import annotations

import pytest
from redis.connection import SSLConnection

from gpufleet.dispatcher.errors import SettingsError
from gpufleet.dispatcher.loop import priority_order
from gpufleet.dispatcher.routing.models import NodeState
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.connection import connect, mask_url


def test_from_hash_reads_every_field() -> None:
    h = {"ts": "100.0", "capacity": "4", "running": "2", "completed": "9", "failed": "1", "gpu_util": "0.5",
         "mem_util": "0.25", "gpu_count": "2", "gpu_name": "H200", "gpu_mem_total_gib": "80",
         "gpu_mem_free_gib": "60", "service_time_s": "0.2", "speed": "2", "weight": "3", "models": "a,b",
         "probe": "nvml", "labels": '{"zone": "x"}'}  # fmt: skip
    n = NodeState.from_hash("n1", h, alive=True, queued=5, now_s=101.5, draining=True)
    assert (n.capacity, n.running, n.queued, n.load, n.completed, n.failed) == (4, 2, 5, 7, 9, 1)
    assert (n.gpu_util, n.mem_util, n.gpu_count, n.gpu_name) == (0.5, 0.25, 2, "H200")
    assert (n.gpu_mem_total_gib, n.gpu_mem_free_gib, n.service_time_s, n.speed, n.weight) == (80, 60, 0.2, 2, 3)
    assert n.models == ("a", "b") and n.draining and n.heartbeat_age_s == 1.5 and n.labels == {"zone": "x"}


def test_from_hash_survives_missing_and_garbled_fields() -> None:
    n = NodeState.from_hash("n1", {"capacity": "lots", "gpu_util": "7", "labels": "{not json"}, alive=False,
                            queued=0, now_s=5.0)  # fmt: skip
    assert n.capacity == 1 and n.gpu_util == 1.0 and n.labels == {} and not n.alive
    assert n.gpu_mem_free_gib == float("inf")  # no GPU reported: never filtered on memory


def test_extra_load_counts_as_queued() -> None:
    assert NodeState("a", queued=1, running=1).with_extra_load(3).load == 5


def test_settings_from_env_overrides_defaults() -> None:
    s = Settings.from_env({"GPUFLEET_REDIS_URL": "redis://h:1/2", "GPUFLEET_PREFETCH": "5",
                           "GPUFLEET_HEARTBEAT_TTL_S": "9.5", "UNRELATED": "x"})  # fmt: skip
    assert (s.redis_url, s.prefetch, s.heartbeat_ttl_s) == ("redis://h:1/2", 5, 9.5)
    assert Settings.from_env({}) == Settings()


def test_settings_refuse_unusable_values() -> None:
    with pytest.raises(SettingsError, match="GPUFLEET_PREFETCH"):
        Settings.from_env({"GPUFLEET_PREFETCH": "many"})
    with pytest.raises(SettingsError, match="heartbeat_ttl_s must exceed"):
        Settings(heartbeat_interval_s=2, heartbeat_ttl_s=1)


def test_flags_override_only_what_was_given() -> None:
    s = Settings(prefetch=3).with_overrides(prefetch=None, policy="load-aware")
    assert (s.prefetch, s.policy) == (3, "load-aware")


@pytest.mark.parametrize(
    "url, masked",
    [
        ("redis://:s3cret@host:6380/1", "redis://:***@host:6380/1"),
        ("rediss://user:pw@h/0", "rediss://user:***@h/0"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ],
)
def test_mask_url_hides_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_low_priority_is_served_first_in_its_share_of_rounds() -> None:
    orders = [priority_order(n, 0.05) for n in range(1, 101)]
    assert orders.count(("low", "high", "normal")) == 5
    assert orders.count(("high", "normal", "low")) == 95
    assert {priority_order(n, 0.0) for n in range(1, 50)} == {("high", "normal", "low")}


def test_a_rediss_url_gives_a_tls_connection() -> None:
    r = connect("rediss://:pw@redis.example:6380/0", check=False)
    assert r.connection_pool.connection_class is SSLConnection
    assert r.connection_pool.connection_kwargs["password"] == "pw"
