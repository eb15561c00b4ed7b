"""The key schema: one module builds every key, and namespaces keep fleets apart."""

from __future__ import annotations

import re
from pathlib import Path

from gpufleet.dispatcher.store.keys import Keys

ROOT = Path(__file__).resolve().parents[2]


def fleet_keys(k: Keys) -> list[str]:
    """One of each of a namespace's own keys (rq's fixed keys are shared on purpose)."""
    return [k.nodes, k.heartbeat("n"), k.alive("n"), k.held("n", "i.0"), k.held_lists("n"), k.node_wakeup("n"),
            k.node_queue("n"), k.ingress_queue("high"), k.batch_jobs("x"), k.batch_info("x"), k.batches,
            k.desired_nodes, k.drain_flag("n"), k.ejected("n"), k.retry_schedule("low"), k.dispatcher_lease,
            k.dispatch_wakeup]  # fmt: skip


def test_a_namespace_s_keys_are_distinct_and_carry_its_prefix() -> None:
    keys = fleet_keys(Keys("a"))
    assert len(set(keys)) == len(keys)
    assert all(key.startswith(("a:", "a.")) for key in keys)


def test_namespaces_do_not_share_keys() -> None:
    assert not set(fleet_keys(Keys("a"))) & set(fleet_keys(Keys("b")))


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
