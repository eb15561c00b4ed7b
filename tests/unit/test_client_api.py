"""The Python Client without a server: what it exports, how it refuses a Redis that is not
there or a setting it cannot use, how it reads its inputs, and its progress line."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

import gpufleet
from gpufleet import BatchTimeout, Client, GpufleetError
from gpufleet.dispatcher import errors
from gpufleet.dispatcher.client import api
from gpufleet.dispatcher.client.results import BatchProgress
from gpufleet.dispatcher.errors import RedisUnavailable, SettingsError
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.redis_server import free_port


def test_the_client_is_the_public_api_of_gpufleet() -> None:
    assert (gpufleet.Client, gpufleet.Batch) == (api.Client, api.Batch)
    assert (gpufleet.BatchTimeout, gpufleet.JobFailed) == (errors.BatchTimeout, errors.JobFailed)
    assert all(hasattr(gpufleet, name) for name in gpufleet.__all__)


def test_a_redis_that_is_not_there_is_a_clear_error_with_the_password_masked() -> None:
    with pytest.raises(RedisUnavailable) as info:
        Client(f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    assert "cannot reach Redis at redis://:***@127.0.0.1" in str(info.value) and "hunter2" not in str(info.value)


def test_arguments_override_the_settings_and_are_checked_before_connecting() -> None:
    """namespace 'rq' would collide with rq's own keys: refused before any connection is tried."""
    with pytest.raises(SettingsError, match="rq"):
        Client(f"redis://127.0.0.1:{free_port()}/0", namespace="rq")
    with pytest.raises(SettingsError):
        Client(settings=Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"), namespace="no spaces")


def test_a_collection_is_read_in_place_and_an_iterator_once_into_a_list() -> None:
    """A million inputs in a list are never copied (submit reads them twice: check, enqueue);
    a generator can be read only once, so it becomes one list."""
    inputs = list(range(10))
    assert api._collection(inputs) is inputs
    assert api._collection(range(3)) == range(3)

    def generated() -> Iterator[int]:
        yield from range(3)

    assert api._collection(generated()) == [0, 1, 2]


def test_integer_ids_are_text_and_anything_else_is_left_for_check_specs() -> None:
    assert [api._text_id(v) for v in (7, "q", None, True, 1.5)] == ["7", "q", None, True, 1.5]


def test_the_progress_line_shows_the_ended_share_and_the_counts() -> None:
    line = api.render_progress("b-1", BatchProgress(size=100, finished=38, failed=2, canceled=0), width=10)
    assert line == "b-1 [####------] 40/100 finished=38 failed=2 canceled=0"
    empty = api.render_progress("b-0", BatchProgress(0, 0, 0, 0), width=4)
    assert empty == "b-0 [####] 0/0 finished=0 failed=0 canceled=0"  # an empty batch is done


def test_off_a_terminal_the_progress_line_is_throttled_but_the_final_one_always_shows() -> None:
    out = io.StringIO()  # isatty() is False, like a log file
    line = api.ProgressLine("b-1", out)
    for done in range(5):  # five changes within a second
        line.show(BatchProgress(10, done, 0, 0))
    line.show(BatchProgress(10, 10, 0, 0))
    line.close()
    assert out.getvalue().splitlines() == [
        "b-1 [------------------------------] 0/10 finished=0 failed=0 canceled=0",
        "b-1 [##############################] 10/10 finished=10 failed=0 canceled=0",
    ]


def test_batch_timeout_is_a_timeout_error_naming_the_batch() -> None:
    err = BatchTimeout("b-x", 2.5, size=10, finished=3, failed=1, canceled=0)
    assert isinstance(err, TimeoutError) and isinstance(err, GpufleetError)
    assert str(err).startswith("batch 'b-x' not done after 2.5 s: 4 of 10 jobs ended (finished=3 failed=1 canceled=0)")
