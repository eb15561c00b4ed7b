"""Real OpenAI-compatible servers, one per test session, for the tests of issue 14's forwarder.

- `embeddings_server`: infinity-emb serving all-MiniLM-L6-v2 (/v1/embeddings);
- `chat_server`: `transformers serve` with continuous batching on a tiny random Llama
  (/v1/chat/completions, /v1/completions): gibberish text, real protocol and batching.

Each runs deploy/servers/<server>.sh on a free loopback port, from the venvs that
deploy/servers/install.sh builds under $GPUFLEET_SERVER_VENVS (default
~/.cache/gpufleet-ci/servers; .ci/run installs them). No venv: the tests skip locally and fail
in CI (tests/conftest.py's `started_or_skipped`). A test module takes the fixtures with
`pytest_plugins = ["tests.openai_servers"]`, so that every module shares the same two servers,
and imports names from here only under TYPE_CHECKING: a module imported before pytest loads it
as a plugin is not assert-rewritten, and pytest warns (`server.get`/`server.post` need no import).

What they answer was recorded in tests/integration/test_openai_servers.py. The HTTP helpers
here are the standard library's, so that what the tests check about the servers does not go
through httpx, the client the forwarder under test uses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gpufleet.dispatcher.errors import GpufleetError
from gpufleet.dispatcher.store.redis_server import free_port
from tests.conftest import started_or_skipped

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ROOT / "deploy" / "servers"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def server_venvs(env: Mapping[str, str] = os.environ) -> Path:
    """Where install.sh put the server venvs and the tiny model."""
    return Path(env.get("GPUFLEET_SERVER_VENVS") or Path.home() / ".cache" / "gpufleet-ci" / "servers")


def request(method: str, url: str, body: Any = None, timeout_s: float = 30.0) -> tuple[int, Any]:
    """(status, decoded JSON body, or the text when it is not JSON); 4xx and 5xx are answers, not errors."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


@dataclass
class OpenAIServer:
    """One server process (its own session, so a Ctrl-C reaches pytest first); `base_url` once
    started. `script` is a deploy/servers/*.sh that takes the port and execs the server."""

    script: str
    model: str
    needs: tuple[Path, ...]  # what install.sh leaves behind; missing -> GpufleetError (skip or fail)
    port: int = field(default_factory=free_port)
    log_path: str = ""  # the server's stdout and stderr, removed by stop()
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def get(self, path: str, timeout_s: float = 30.0) -> tuple[int, Any]:
        """GET base_url + path ("/models"): (status, JSON body or text)."""
        return request("GET", self.base_url + path, timeout_s=timeout_s)

    def post(self, path: str, body: Any, timeout_s: float = 30.0) -> tuple[int, Any]:
        """POST a JSON body to base_url + path ("/chat/completions"): (status, JSON body or text)."""
        return request("POST", self.base_url + path, body, timeout_s)

    def log_tail(self, chars: int = 3000) -> str:
        return Path(self.log_path).read_text(errors="replace")[-chars:] if self.log_path else ""

    def start(self, timeout_s: float = 90.0) -> OpenAIServer:
        """Start, then wait until /v1/models lists `model` (the first answer takes a few seconds).
        GpufleetError when install.sh has not run (skip locally, fail in CI)."""
        missing = [str(p) for p in self.needs if not p.exists()]
        if missing:
            raise GpufleetError(f"{', '.join(missing)} missing: run deploy/servers/install.sh")
        log_fd, self.log_path = tempfile.mkstemp(prefix=f"gpufleet-{Path(self.script).stem}-", suffix=".log")
        try:
            self._proc = subprocess.Popen([str(SERVERS / self.script), str(self.port)], stdin=subprocess.DEVNULL,
                                          stdout=log_fd, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        finally:
            os.close(log_fd)  # the server holds its own copy
        deadline = time.monotonic() + timeout_s
        while self.model not in self.models():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                # installed but not answering is a failure everywhere, not a skip
                raise RuntimeError(f"{self.script} did not answer on port {self.port}:\n{tail}")
            time.sleep(0.2)
        return self

    def models(self) -> list[str]:
        """The ids /v1/models lists; [] while the server does not answer yet."""
        try:
            status, body = self.get("/models", timeout_s=2.0)
        except OSError:
            return []
        return [m["id"] for m in body.get("data", [])] if status == 200 and isinstance(body, dict) else []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 10 s."""
        if self._proc and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._proc = None
        if self.log_path:
            Path(self.log_path).unlink(missing_ok=True)
            self.log_path = ""


def infinity_emb(venvs: Path | None = None) -> OpenAIServer:
    venvs = venvs or server_venvs()
    return OpenAIServer("infinity-emb.sh", EMBEDDING_MODEL, needs=(venvs / "venv-inf" / "bin" / "infinity_emb",))


def transformers_serve(venvs: Path | None = None) -> OpenAIServer:
    """transformers serve's model id is exactly the model path it was started with."""
    venvs = venvs or server_venvs()
    model = venvs / "tiny-llama"
    return OpenAIServer("transformers-serve.sh", str(model),
                        needs=(venvs / "venv-tf" / "bin" / "transformers", model / "config.json"))  # fmt: skip


@pytest.fixture(scope="session")
def embeddings_server() -> Iterator[OpenAIServer]:
    """infinity-emb on a free port, all-MiniLM-L6-v2: 384 floats per input."""
    server = started_or_skipped(infinity_emb().start, "infinity-emb (deploy/servers/install.sh)")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chat_server() -> Iterator[OpenAIServer]:
    """transformers serve on a free port, the tiny random Llama, continuous batching."""
    server = started_or_skipped(transformers_serve().start, "transformers serve (deploy/servers/install.sh)")
    yield server
    server.stop()
