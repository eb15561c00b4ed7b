"""The inference server a forwarder node sends to, as the heartbeat reports it.

Every interval a thread asks the server for its models (`GET /v1/models`: the node advertises
them, so model affinity routes a batch's requests to the servers that serve its model) and
reads its Prometheus metrics where it exports them (`GET /metrics`): the requests waiting in
its own queue and its KV-cache use (vLLM, SGLang and TGI name them differently; SERVER_METRICS
lists the names read). A server that does not answer, or answers 5xx, makes the node
`unhealthy`: the dispatcher routes nothing there and hands its queued jobs back, and the node
recovers by itself once the server answers again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
# Prometheus metric families (names as the parser gives them) that count requests waiting in
# the server's own queue, and that give its KV-cache use (0..1), per server.
WAITING_METRICS = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size")
KV_CACHE_METRICS = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")


@dataclass(frozen=True)
class OpenAIServer:
    """Where a forwarder node sends its requests, and how."""

    base_url: str  # as given to --openai-url, e.g. http://127.0.0.1:8000/v1
    api_key: str | None = None  # sent as a bearer token (--api-key-env names the variable)
    request_timeout_s: float = 600.0  # a request's timeout (its job's own timeout, when shorter, wins)

    @property
    def root(self) -> str:
        """The server's root: requests name their path with /v1, as OpenAI batch lines do."""
        url = self.base_url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True)
class ServerState:
    """What the server said last."""

    healthy: bool = False
    problem: str = "not asked yet"
    models: tuple[str, ...] = ()
    waiting: int = 0  # requests in its own queue (0 when it exports no such metric)
    kv_cache_usage: float = 0.0  # 0..1 (0 when it exports no such metric)


def read_server(http: httpx.Client, server: OpenAIServer) -> ServerState:
    """Ask the server once: its models, then its metrics (optional)."""
    try:
        response = http.get(f"{server.root}/v1/models", headers=server.headers(), timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError as e:
        return ServerState(problem=f"openai server {server.base_url} does not answer: {type(e).__name__}: {e}")
    if response.status_code >= 500:
        return ServerState(problem=f"openai server {server.base_url} answers {response.status_code}")
    try:
        models = tuple(str(m["id"]) for m in response.json().get("data", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        models = ()
    waiting, kv = _metrics(http, server)
    return ServerState(healthy=True, problem="", models=models, waiting=waiting, kv_cache_usage=kv)


def _metrics(http: httpx.Client, server: OpenAIServer) -> tuple[int, float]:
    try:
        response = http.get(f"{server.root}/metrics", timeout=PROBE_TIMEOUT_S)
        families = list(text_string_to_metric_families(response.text)) if response.is_success else []
    except (httpx.HTTPError, ValueError):
        return 0, 0.0
    waiting = sum(s.value for f in families if f.name in WAITING_METRICS for s in f.samples)
    usage = [s.value for f in families if f.name in KV_CACHE_METRICS for s in f.samples]
    return int(waiting), min(1.0, max(usage, default=0.0))


@dataclass
class ServerWatch:
    """Asks the server every `interval_s` in a thread of its own; `state` is the latest answer."""

    server: OpenAIServer
    interval_s: float = 1.0
    state: ServerState = field(default_factory=ServerState)
    _stop: threading.Event = field(default_factory=threading.Event)
    _said_healthy: bool | None = None  # what the log said last: one line per change
    # one client for every look: a new one each second cost ~8% of a core (its SSL context)
    _http: httpx.Client = field(default_factory=httpx.Client)

    def start(self) -> None:
        self.look()
        threading.Thread(target=self._run, name="openai-server-watch", daemon=True).start()

    def look(self) -> ServerState:
        state = read_server(self._http, self.server)
        if state.healthy != self._said_healthy:
            self._said_healthy = state.healthy
            if state.healthy:
                log.info("openai server answers server=%s models=%s", self.server.base_url, ",".join(state.models))
            else:
                log.warning("openai server unhealthy, no new jobs here %s", state.problem)
        self.state = state
        return state

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.look()
        self._http.close()
