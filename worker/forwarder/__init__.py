"""Forwarding OpenAI requests to the inference server on this host (`gpufleet worker --openai-url`).

Most GPU hosts already run an OpenAI-compatible server (vLLM, SGLang, TGI, Ollama, llama.cpp,
Infinity). A forwarder node takes the jobs of an OpenAI batch file from its node queue, keeps
up to `--concurrency` of their requests in flight against that server (which batches them
continuously), and records each response as its job's result: loop.py. server.py watches the
server for the heartbeat (its models, its health, its own queue and KV-cache figures) and
exchange.py sends one request and says what came of it.

Forwarded jobs are jobs like any other: taken and started in one step, fenced, handed back
when the node dies, retried within their retry budget.
"""

from __future__ import annotations

from typing import Any, NoReturn


def forward(request: dict[str, Any]) -> NoReturn:
    """The function an OpenAI batch job names (dispatcher/client/openai_batch.FORWARD_FUNC).

    A forwarder worker sends the request itself and never calls this; routing sends such jobs
    to forwarder nodes only, so a plain worker meets one only if it was pushed there by hand."""
    raise RuntimeError("an OpenAI batch request runs on a worker started with --openai-url, not this one")
