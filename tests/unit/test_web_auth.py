"""The dashboard's pieces that need no server: who may act (auth.py) and the shared read."""

from __future__ import annotations

import pytest

flask = pytest.importorskip("flask")

from gpufleet.dispatcher.observe.web import auth  # noqa: E402
from gpufleet.dispatcher.observe.web.data import Shared  # noqa: E402

TOKEN = "t0ken"


def may_act(headers: dict[str, str], session: dict[str, object], token: str | None) -> tuple[bool, int, str]:
    app = flask.Flask(__name__)
    with app.test_request_context("/api/nodes/a/drain", method="POST", headers=headers):
        return auth.may_act(flask.request, session, token)


def test_without_a_token_nothing_may_act() -> None:
    ok, status, why = may_act({"Authorization": f"Bearer {TOKEN}"}, {"auth": True, "csrf": "x"}, None)
    assert (ok, status) == (False, 403) and "read-only" in why


def test_the_bearer_token_acts_and_a_wrong_one_does_not() -> None:
    assert may_act({"Authorization": f"Bearer {TOKEN}"}, {}, TOKEN)[0]
    assert may_act({"Authorization": "Bearer nope"}, {}, TOKEN)[:2] == (False, 401)
    assert may_act({"Authorization": TOKEN}, {}, TOKEN)[:2] == (False, 401)  # not a Bearer header


def test_a_login_acts_only_with_its_csrf_token() -> None:
    session: dict[str, object] = {}
    assert not auth.log_in(session, TOKEN, "wrong") and not session
    assert auth.log_in(session, TOKEN, TOKEN) and session["auth"] is True
    csrf = auth.csrf_token(session)
    assert csrf and csrf != TOKEN
    assert may_act({}, session, TOKEN)[:2] == (False, 403)
    assert may_act({auth.CSRF_HEADER: "forged"}, session, TOKEN)[:2] == (False, 403)
    assert may_act({auth.CSRF_HEADER: csrf}, session, TOKEN)[0]
    assert auth.csrf_token({}) == ""  # logged out: no CSRF token in the page


def test_a_shared_read_is_made_once_per_interval() -> None:
    now = [0.0]
    reads: list[int] = []
    shared = Shared(lambda: reads.append(1) or len(reads), ttl_s=2.0, clock=lambda: now[0])
    assert [shared.get() for _ in range(3)] == [1, 1, 1]
    now[0] = 2.0
    assert shared.get() == 2 and shared.reads == 2
