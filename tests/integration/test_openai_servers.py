"""The real servers the forwarder talks to answer the OpenAI protocol, and this is exactly how.

No mock of a server: infinity-emb (embeddings) and `transformers serve` (chat, completions) run
as subprocesses from the venvs deploy/servers/install.sh builds (tests/openai_servers.py). Skipped
locally without them; CI installs them and must run these.

The bad-request cases pin down what each server answers when it refuses a request, because
the forwarder's "one bad request that the server refuses" test relies on it. Recorded with
infinity-emb 0.0.78 and transformers 5.24.0:

- neither answers an unknown model with an OpenAI `{"error": {...}}` body: infinity serves it
  anyway (200, one model loaded), transformers serve says 400 `{"detail": "Server is pinned..."}`;
- infinity's own refusals are OpenAI-style (`dimensions` out of range: 400 `{"error": {"message",
  "type": null, "param": null, "code": 400}}`); schema errors are FastAPI's 422 `{"detail": [...]}`;
- an unknown route is FastAPI's 404 `{"detail": "Not Found"}` on both;
- transformers serve answers a chat request without `messages` with a 500 in plain text, though the
  fault is the client's: a forwarder that retries 5xx would retry it in vain.
"""

from __future__ import annotations

import json
import math
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the fixtures come as a plugin (tests/openai_servers.py says why)
    from tests.openai_servers import OpenAIServer

pytest_plugins = ["tests.openai_servers"]
pytestmark = pytest.mark.integration

MAX_TOKENS = 8


def chat_body(server: OpenAIServer, content: str = "hello", **extra: object) -> dict[str, object]:
    return {"model": server.model, "messages": [{"role": "user", "content": content}], "max_tokens": MAX_TOKENS,
            **extra}  # fmt: skip


# --- embeddings: infinity-emb, all-MiniLM-L6-v2 ------------------------------------------------


def test_the_embeddings_server_lists_its_one_model(embeddings_server: OpenAIServer) -> None:
    status, body = embeddings_server.get("/models")
    assert status == 200 and body["object"] == "list"
    models = [(m["id"], m["object"], m["capabilities"]) for m in body["data"]]
    assert models == [("all-MiniLM-L6-v2", "model", ["embed"])]


def test_each_input_gets_an_embedding_of_384_unit_length_floats(embeddings_server: OpenAIServer) -> None:
    texts = ["A GPU fleet routes inference jobs.", "The cat sat on the mat."]
    status, body = embeddings_server.post("/embeddings", {"model": embeddings_server.model, "input": texts})
    assert status == 200, body
    assert (body["object"], body["model"]) == ("list", embeddings_server.model)
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1)]
    for d in body["data"]:
        vector = d["embedding"]
        assert len(vector) == 384 and all(isinstance(x, float) for x in vector)
        assert math.isclose(math.hypot(*vector), 1.0, abs_tol=1e-3)  # infinity normalises by default
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_the_embeddings_server_refuses_an_impossible_dimension_with_an_openai_error(
    embeddings_server: OpenAIServer,
) -> None:
    status, body = embeddings_server.post("/embeddings",
                        {"model": embeddings_server.model, "input": ["x"], "dimensions": 1000})  # fmt: skip
    assert status == 400, body
    assert set(body) == {"error"} and body["error"]["code"] == 400
    assert (body["error"]["type"], body["error"]["param"]) == (None, None)
    assert "matryoshka_dim=1000 is not in a valid range. Select between 1 and 384." in body["error"]["message"]


def test_a_malformed_embeddings_request_is_fastapis_422(embeddings_server: OpenAIServer) -> None:
    status, body = embeddings_server.post("/embeddings", {"model": embeddings_server.model})
    assert status == 422, body
    assert [(e["type"], e["loc"]) for e in body["detail"]] == [("missing", ["body", "text", "input"])]


def test_a_chat_request_to_the_embeddings_server_is_a_404(embeddings_server: OpenAIServer) -> None:
    chat = {"model": embeddings_server.model, "messages": [{"role": "user", "content": "hi"}]}
    status, body = embeddings_server.post("/chat/completions", chat)
    assert (status, body) == (404, {"detail": "Not Found"})


def test_infinity_serves_an_unknown_model_name_with_its_one_model(embeddings_server: OpenAIServer) -> None:
    """Not a refusal: with one model loaded, infinity ignores `model` (a forwarder cannot rely on a 4xx)."""
    status, body = embeddings_server.post("/embeddings", {"model": "no-such-model", "input": ["x"]})
    assert status == 200 and body["model"] == embeddings_server.model and len(body["data"][0]["embedding"]) == 384


# --- chat and completions: transformers serve, the tiny random Llama -------------------------------


def test_the_chat_server_lists_the_model_path_it_was_started_with(chat_server: OpenAIServer) -> None:
    status, body = chat_server.get("/models")
    assert status == 200 and body["object"] == "list"
    assert [(m["id"], m["object"], m["status"]) for m in body["data"]] == [(chat_server.model, "model",
                                                                            {"value": "loaded"})]  # fmt: skip
    assert chat_server.model.endswith("/tiny-llama")


def test_a_chat_completion_stops_at_max_tokens(chat_server: OpenAIServer) -> None:
    status, body = chat_server.post("/chat/completions", chat_body(chat_server))
    assert status == 200, body
    assert (body["object"], body["model"]) == ("chat.completion", chat_server.model)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("length", "stop")
    usage = body["usage"]
    assert 0 < usage["completion_tokens"] <= MAX_TOKENS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_completion_stops_at_max_tokens(chat_server: OpenAIServer) -> None:
    status, body = chat_server.post("/completions",
                        {"model": chat_server.model, "prompt": "hello world", "max_tokens": MAX_TOKENS})  # fmt: skip
    assert status == 200, body
    assert (body["object"], body["model"]) == ("text_completion", chat_server.model)
    (choice,) = body["choices"]
    assert isinstance(choice["text"], str) and choice["finish_reason"] in ("length", "stop")
    assert 0 < body["usage"]["completion_tokens"] <= MAX_TOKENS


def test_the_chat_server_refuses_an_unknown_model_with_a_400(chat_server: OpenAIServer) -> None:
    """The answer is FastAPI's `detail`, not OpenAI's `error` object."""
    for route in ("chat/completions", "completions"):
        body = chat_body(chat_server, model="tiny-llama") if route == "chat/completions" else \
            {"model": "tiny-llama", "prompt": "hello", "max_tokens": MAX_TOKENS}  # fmt: skip
        status, answer = chat_server.post(f"/{route}", body)
        pinned = f"Server is pinned to '{chat_server.model}'; requested 'tiny-llama'."
        assert (status, answer) == (400, {"detail": pinned})


def test_the_chat_server_refuses_an_unexpected_field_with_a_422(chat_server: OpenAIServer) -> None:
    status, body = chat_server.post("/chat/completions", chat_body(chat_server, bogus=1))
    assert (status, body) == (422, {"detail": "Unexpected fields in the request: {'bogus'}"})


def test_a_chat_request_without_messages_is_a_plain_text_500(chat_server: OpenAIServer) -> None:
    """The client's fault, answered as the server's: a retry would fail the same way."""
    status, body = chat_server.post("/chat/completions", {"model": chat_server.model, "max_tokens": 8})
    assert (status, body) == (500, "Internal Server Error")


def test_an_embeddings_request_to_the_chat_server_is_a_404(chat_server: OpenAIServer) -> None:
    status, body = chat_server.post("/embeddings", {"model": chat_server.model, "input": ["x"]})
    assert (status, body) == (404, {"detail": "Not Found"})


def test_a_streamed_chat_ends_with_usage_and_no_done_line(chat_server: OpenAIServer) -> None:
    """Server-sent events; the last chunk has finish_reason and usage; no `data: [DONE]` follows."""
    req = urllib.request.Request(f"{chat_server.base_url}/chat/completions", method="POST",
                                 data=json.dumps(chat_body(chat_server, stream=True)).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        lines = [line for line in resp.read().decode().splitlines() if line]
    assert all(line.startswith("data: ") for line in lines) and "data: [DONE]" not in lines
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert chunks[-1]["usage"]["completion_tokens"] == len(chunks) - 2  # one chunk per token between


def test_many_chat_requests_in_flight_all_complete(chat_server: OpenAIServer) -> None:
    """32 at once, as the forwarder sends them: continuous batching takes them all."""
    def send(i: int) -> tuple[int, Any]:
        return chat_server.post("/chat/completions", chat_body(chat_server, f"request {i}"))

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(send, range(32)))
    assert [status for status, _ in answers] == [200] * 32
    assert {body["model"] for _, body in answers} == {chat_server.model}
