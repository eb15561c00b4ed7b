"""The worker's allow-list: only a function defined in an allowed module runs, and a refused
name's module is never imported (anyone who can write to Redis can write a job HASH)."""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from gpufleet.dispatcher.store.job import allowed_function, job_class
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.worker.batching import batch_spec

TASKS = ("gpufleet.worker.tasks",)
PKG = ("gfa_pkg",)

FILES = {
    "gfa_pkg/__init__.py": "",
    "gfa_pkg/tasks.py": (
        "import functools\n"
        "from os import system\n"
        "from gfa_helpers import helper\n"
        "def run(x):\n    return x\n"
        "def _logged(f):\n"
        "    @functools.wraps(f)\n"
        "    def wrapper(*args):\n        return f(*args)\n"
        "    return wrapper\n"
        "@_logged\n"
        "def wrapped(x):\n    return x\n"
    ),
    "gfa_pkg/sub/__init__.py": "",
    "gfa_pkg/sub/models.py": "def infer(x):\n    return x\n",
    "gfa_helpers.py": "def helper(x):\n    return x\n",
    "gfa_outside.py": "def run(x):\n    return x\n",
    "gfa_pkg_evil.py": "def run(x):\n    return x\n",
}


@pytest.fixture(autouse=True)
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Importable throwaway modules; forgotten afterwards (sys.modules and the resolver's cache)."""
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    for name in [m for m in sys.modules if m.startswith("gfa_")]:
        del sys.modules[name]
    allowed_function.cache_clear()


@pytest.mark.parametrize(
    "func_name, allowed",
    [
        ("gpufleet.worker.tasks.echo", TASKS),
        ("gfa_pkg.tasks.run", PKG),
        ("gfa_pkg.tasks.wrapped", PKG),  # functools.wraps keeps __module__
        ("gfa_pkg.sub.models.infer", PKG),  # a submodule of an allowed package
    ],
)
def test_a_function_defined_in_an_allowed_module_is_resolved(func_name: str, allowed: tuple[str, ...]) -> None:
    func = allowed_function(func_name, allowed)
    assert func(7) == 7 and func.__name__ == func_name.rpartition(".")[2]


def test_a_batched_task_passes_and_keeps_its_batch_spec() -> None:
    func = allowed_function("gpufleet.worker.tasks.synthetic_batched", TASKS)
    assert batch_spec(func) is not None and batch_spec(func).max_size == 32  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "func_name, module",
    [
        ("gfa_outside.run", "gfa_outside"),
        ("gfa_pkg_evil.run", "gfa_pkg_evil"),  # shares a prefix with gfa_pkg, but is not under it
        ("gfa_outside.sub.run", "gfa_outside"),
        ("os.system", None),
        ("echo", None),  # no module at all: rq would look it up in builtins
    ],
)
def test_a_module_outside_the_allow_list_is_refused_before_it_is_imported(func_name: str, module: str | None) -> None:
    with pytest.raises(PermissionError, match=f"function '{func_name}' is not in an allowed module"):
        allowed_function(func_name, PKG)
    if module:
        assert module not in sys.modules


@pytest.mark.parametrize(
    "func_name, allowed, missing",
    [
        # rq's import_attribute reaches time.sleep
        ("gpufleet.worker.tasks.time.sleep", TASKS, "gpufleet.worker.tasks.time"),
        ("gpufleet.worker.tasks.echo.__call__", TASKS, "gpufleet.worker.tasks.echo"),
        ("gfa_pkg.tasks.system.__call__", PKG, "gfa_pkg.tasks.system"),
    ],
)
def test_an_attribute_path_after_the_module_is_refused(func_name: str, allowed: tuple[str, ...], missing: str) -> None:
    with pytest.raises(PermissionError, match=f"'{missing}' is not a module.*attribute path"):
        allowed_function(func_name, allowed)
    assert missing not in sys.modules


@pytest.mark.parametrize(
    "func_name, allowed, why",
    [
        ("gfa_pkg.tasks.helper", PKG, "defined in 'gfa_helpers'"),  # from gfa_helpers import helper
        ("gpufleet.worker.tasks.batched", TASKS, "defined in 'gpufleet.worker.batching'"),
        ("gfa_pkg.tasks.system", PKG, "not a function"),  # from os import system (a builtin)
        ("gpufleet.worker.tasks.time", TASKS, "it is a module, not a function"),
        ("gpufleet.worker.tasks.Any", TASKS, "not a function"),
    ],
)
def test_a_name_imported_into_an_allowed_module_is_refused(func_name: str, allowed: tuple[str, ...], why: str) -> None:
    with pytest.raises(PermissionError, match=f"function '{func_name}' is refused: .*{why}"):
        allowed_function(func_name, allowed)


def test_an_allowed_module_that_is_not_installed_fails_as_rq_would() -> None:
    with pytest.raises(ModuleNotFoundError, match="gfa_absent"):
        allowed_function("gfa_absent.run", ("gfa_absent",))


def test_a_worker_job_refuses_what_a_client_side_job_would_resolve() -> None:
    """Given a job HASH naming gpufleet.worker.tasks.time.sleep: rq's own resolution finds time.sleep;
    the worker's job class (allowed modules set) refuses it."""
    plain = job_class(Keys())
    job = plain.create("gpufleet.worker.tasks.time.sleep", args=[0], connection=Redis())
    assert job.func is time.sleep
    on_worker = job_class(Keys(), TASKS).create("gpufleet.worker.tasks.time.sleep", args=[0], connection=Redis())
    with pytest.raises(PermissionError, match="attribute path"):
        on_worker.func  # noqa: B018 (the property resolves the function: reading it is the test)
