"""The key schema: one module builds every key, and namespaces keep fleets apart."""

from __future__ import annotations

import re
from pathlib import Path

from dispatcher.keys import Keys

ROOT = Path(__file__).resolve().parents[2]


def test_namespaces_do_not_share_keys() -> None:
    a, b = Keys("a"), Keys("b")
    assert {a.nodes, a.heartbeat("n"), a.alive("n"), a.node_queue("n"), a.ingress_queue("high"), a.batch_jobs("x")}
    assert not {a.nodes, a.heartbeat("n"), a.node_queue("n"), a.batch_info("x")} & {
        b.nodes, b.heartbeat("n"), b.node_queue("n"), b.batch_info("x")}  # fmt: skip


def test_queue_names_are_rq_names_and_their_lists_are_rq_keys() -> None:
    k = Keys()
    assert k.ingress_queue("normal") == "gpufleet.ingress.normal"
    assert Keys.rq_queue(k.node_queue("gpu-0")) == "rq:queue:gpufleet.node.gpu-0"
    assert Keys.rq_job("abc") == "rq:job:abc"


def test_no_module_but_keys_writes_a_key_string() -> None:
    """Key literals ('rq:job:', '{namespace}:node:' ...) appear in keys.py alone."""
    pattern = re.compile(r"""["'](rq:(queue|job|results|queues)|[^"']*\{self\.namespace\}[:.])""")
    offenders = [
        str(p.relative_to(ROOT))
        for d in ("dispatcher", "worker", "cli")
        for p in (ROOT / d).rglob("*.py")
        if p.name != "keys.py" and pattern.search(p.read_text())
    ]
    assert offenders == []
