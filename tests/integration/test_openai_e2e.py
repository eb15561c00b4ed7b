"""Issue 14 end to end, against real servers: an OpenAI batch file in, OpenAI output and error
files out, through forwarder nodes in front of `transformers serve` (chat, completions) and
infinity-emb (embeddings), with a forwarder killed -9 mid-batch and a submit interrupted and
resumed. The CLI runs as a user runs it (subprocesses); no mock of any server.

Three forwarders: two in front of the chat server (so the one killed has a peer to hand its
requests to) and one in front of the embeddings server (a forwarder takes only requests for
the models its server lists).
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from rq.utils import as_text

from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import submit_file
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import GPUFLEET, LocalFleet, SimNode

from .support import gpufleet, kill_tree, local_fleet, tracebacks, wait_until

if TYPE_CHECKING:  # the fixtures come as a plugin (tests/openai_servers.py says why)
    from tests.openai_servers import OpenAIServer

pytest_plugins = ["tests.openai_servers"]
pytestmark = pytest.mark.integration

NS = "oa-e2e"
KEYS = Keys(NS)
LINES = 200
REFUSED = "r-137"  # an embeddings request with an impossible `dimensions`: infinity answers 400
FIRST_CHUNK = 50  # what the interrupted submit got in before it stopped


class Interrupted(Exception):
    """Stands for a Ctrl-C (or a crash) of `gpufleet submit` after its first round trip."""


def batch_line(i: int, chat_model: str, embedding_model: str) -> dict[str, Any]:
    """Line i of the file: chat, completions and embeddings in turn; REFUSED is refused."""
    custom_id = f"r-{i}"
    kind = i % 3
    if custom_id == REFUSED or kind == 2:
        body: dict[str, Any] = {"model": embedding_model, "input": [f"sentence {i}", f"another {i}"]}
        if custom_id == REFUSED:
            body["dimensions"] = 100_000
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}
    if kind == 0:
        body = {"model": chat_model, "messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 24}
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    body = {"model": chat_model, "prompt": f"the quick brown fox {i}", "max_tokens": 24}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body}


@pytest.fixture
def fleet(redis_server: RedisServer, tmp_path: Path) -> Iterator[LocalFleet]:
    (tmp_path / "logs").mkdir()
    with local_fleet(redis_server.url, NS, log_dir=str(tmp_path / "logs")) as f:
        f.start_dispatcher(name="d0")
        yield f


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_openai_batch_file_through_forwarders_survives_a_kill_and_an_interrupted_submit(
    fleet: LocalFleet, chat_server: OpenAIServer, embeddings_server: OpenAIServer, tmp_path: Path
) -> None:
    r = redis.Redis.from_url(fleet.redis_url)
    for node_id, server in (("chat-a", chat_server), ("chat-b", chat_server), ("emb", embeddings_server)):
        fleet.start_worker(SimNode(node_id), "--openai-url", server.base_url, "--concurrency", "8")
    fleet.wait_for_nodes(r, ["chat-a", "chat-b", "emb"])
    lines = [batch_line(i, chat_server.model, embeddings_server.model) for i in range(LINES)]
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    # A submit that stops after its first round trip: 50 of the 200 requests are in the batch.
    def stop_after_first_chunk(total: int) -> Any:
        def progress(n: int) -> None:
            raise Interrupted

        return progress

    settings = Settings(redis_url=fleet.redis_url, namespace=NS, submit_chunk=FIRST_CHUNK)
    with pytest.raises(Interrupted):
        submit_file(r, settings, str(path), batch_id="nightly", progress_factory=stop_after_first_chunk)
    assert r.llen(KEYS.batch_jobs("nightly")) == FIRST_CHUNK

    # Resumed from the CLI: only the 150 lines the batch lacks are enqueued.
    resumed = gpufleet(fleet.redis_url, NS, "submit", str(path), "--batch", "nightly", "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    receipt = json.loads(resumed.stdout)
    assert receipt["jobs"] == LINES - FIRST_CHUNK and receipt["resumed"]["enqueued"] == LINES - FIRST_CHUNK
    seen = receipt["resumed"]
    assert seen["finished"] + seen["in_flight"] + seen["requeued_failed"] == FIRST_CHUNK
    assert r.llen(KEYS.batch_jobs("nightly")) == LINES and read_progress(r, KEYS, "nightly").size == LINES

    # The output is followed to disk while one chat forwarder is killed with requests in flight.
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    cli = [*GPUFLEET, "--redis-url", fleet.redis_url, "--namespace", NS]
    follow = subprocess.Popen([*cli, "results", "nightly", "--format", "openai", "-o", str(out), "--errors", str(err),
                               "--follow"], stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_until(lambda: r.zcard(Keys.rq_started(KEYS.node_queue("chat-a"))) > 0, 60, "chat-a to have requests in flight")
    chat_a = fleet.procs.pop("chat-a").pid
    kill_tree(chat_a, signal.SIGSTOP)  # frozen first, so what it holds is read exactly (members: job:execution)
    in_flight = {as_text(j).split(":")[0] for j in r.zrange(Keys.rq_started(KEYS.node_queue("chat-a")), 0, -1)}
    kill_tree(chat_a)
    assert follow.wait(timeout=180) == 0, follow.stderr.read() if follow.stderr else ""

    answered, refused = read_jsonl(out), read_jsonl(err)
    assert [line["custom_id"] for line in refused] == [REFUSED]
    [bad] = refused
    assert bad["response"]["status_code"] == 400 and "not in a valid range" in bad["error"]["message"]
    ids = Counter(line["custom_id"] for line in answered)
    assert len(answered) == LINES - 1 and set(ids) == {f"r-{i}" for i in range(LINES)} - {REFUSED}
    by_id = {line["custom_id"]: line for line in answered}
    for source in lines:
        if source["custom_id"] == REFUSED:
            continue
        line = by_id[source["custom_id"]]
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"]
        body = response["body"]
        if source["url"] == "/v1/chat/completions":
            assert body["object"] == "chat.completion" and isinstance(body["choices"][0]["message"]["content"], str)
        elif source["url"] == "/v1/completions":
            assert body["object"] == "text_completion" and isinstance(body["choices"][0]["text"], str)
        else:
            assert [len(d["embedding"]) for d in body["data"]] == [384, 384]

    records = list(iter_results(r, KEYS, "nightly"))
    rerun = [rec for rec in records if rec["job_id"] in in_flight]
    assert rerun and {(rec["node"], rec["attempts"]) for rec in rerun} == {("chat-b", 2)}
    assert all(rec["attempts"] == 1 for rec in records if rec["job_id"] not in in_flight)
    assert {rec["node"] for rec in records if int(rec["id"][2:]) % 3 == 2} == {"emb"}  # embeddings: its one server
    assert tracebacks(fleet.log_dir or "") == {}

    # Resuming a finished batch enqueues nothing but the refused request, which is refused again.
    again = gpufleet(fleet.redis_url, NS, "submit", str(path), "--batch", "nightly", "--resume", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["resumed"] == {"enqueued": 0, "requeued_failed": 1, "requeued_canceled": 0,
                                                   "finished": LINES - 1, "in_flight": 0, "gone": 0,
                                                   "skipped": 0}  # fmt: skip
