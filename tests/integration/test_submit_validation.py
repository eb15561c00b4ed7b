"""The Python API against a real Redis: a spec the CLI would refuse is refused, and nothing of
the submission is written."""

from __future__ import annotations

import pytest
import redis

from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.errors import JobFileError
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings

ECHO = "gpufleet.worker.tasks:echo"


@pytest.mark.parametrize(
    "bad, field",
    [
        (JobSpec(ECHO, 1, priority="urgent"), "priority"),  # would wait in a queue no dispatcher reads
        (JobSpec(ECHO, {"score": float("nan")}), "input"),  # `results` would print "score": NaN
        (JobSpec(ECHO, 1, client_id="0"), "client_id"),  # the first spec already uses it
    ],
)
def test_one_bad_spec_leaves_nothing_enqueued(r: redis.Redis, settings: Settings, bad: JobSpec, field: str) -> None:
    specs = [JobSpec(ECHO, i, client_id=str(i)) for i in range(1500)]  # more than one submit chunk
    with pytest.raises(JobFileError, match=f"jobs:1501: field '{field}'"):
        Submitter(r, settings).submit([*specs, bad])
    assert r.dbsize() == 0
