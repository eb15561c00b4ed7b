"""A small local OpenAI-shaped HTTP server for the forwarder's error paths (429, 5xx, slow
answers, a server that goes away), which the real servers in tests/openai_servers.py cannot be
made to produce on demand. Test code only: the standard library's ThreadingHTTPServer.

A request's body says how to answer: {"model": ..., "answer": "ok" | "429-once" | "500" |
"400" | "slow" | "hang", "id": any} ("hang": no answer until the client goes away, which it
counts in `abandoned`). It counts the requests in flight (the most seen at once) and serves
/v1/models and a Prometheus /metrics with vLLM's names.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "fake-model"


class FakeOpenAI:
    """The server, on a free loopback port, in a thread; `url` is its /v1 base."""

    def __init__(self, *, answer_s: float = 0.05, slow_s: float = 5.0) -> None:
        self.answer_s, self.slow_s = answer_s, slow_s
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0
        self.seen: Counter[str] = Counter()  # requests per "id", every attempt counted
        self.abandoned: Counter[str] = Counter()  # "hang" requests per "id" whose client closed the connection
        self.down = False  # answer 503 to everything (a server restarting)
        self.waiting, self.kv_cache_usage = 3, 0.42  # what /metrics reports
        handler = type("Handler", (_Handler,), {"fake": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", f"req-{time.monotonic_ns()}")
        self.end_headers()
        self.wfile.write(data)

    def _client_gone_within(self, seconds: float) -> bool:
        """Whether the client closes its connection within `seconds` (the request was read whole,
        so the socket turns readable only at its end)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.connection], [], [], min(left, 0.05))[0]:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
        return False

    def do_GET(self) -> None:
        fake = self.fake
        if fake.down:
            return self._send(503, {"error": {"message": "restarting", "type": "server_error"}})
        if self.path == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        if self.path == "/metrics":
            text = (f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"{MODEL}\"}} "
                    f"{fake.waiting}\n# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc"
                    f"{{model_name=\"{MODEL}\"}} {fake.kv_cache_usage}\n")  # fmt: skip
            return self._send(200, text, "text/plain; version=0.0.4")
        self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        fake = self.fake
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        key = str(body.get("id"))
        with fake.lock:
            fake.seen[key] += 1
            attempt = fake.seen[key]
            fake.in_flight += 1
            fake.most_in_flight = max(fake.most_in_flight, fake.in_flight)
        try:
            answer = body.get("answer", "ok")
            if answer == "hang" and self._client_gone_within(fake.slow_s):
                with fake.lock:
                    fake.abandoned[key] += 1
                return None
            time.sleep(fake.slow_s if answer == "slow" else fake.answer_s)
            if fake.down:
                return self._send(503, {"error": {"message": "restarting", "type": "server_error"}})
            if answer == "400":
                return self._send(400, {"error": {"message": "bad request: no such parameter 'x'",
                                                  "type": "invalid_request_error", "code": "invalid_parameter"}})
            if answer == "500" or (answer == "429-once" and attempt == 1):
                status = 500 if answer == "500" else 429
                return self._send(status, {"error": {"message": f"try again ({status})", "type": "server_error"}})
            self._send(200, {"id": f"chatcmpl-{key}-{attempt}", "object": "chat.completion", "model": MODEL,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": f"echo {key}"},
                                          "finish_reason": "stop"}]})  # fmt: skip
        finally:
            with fake.lock:
                fake.in_flight -= 1
