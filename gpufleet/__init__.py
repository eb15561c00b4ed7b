"""gpufleet: route AI inference jobs over a fleet of GPU hosts, through Redis.

The import name of the whole distribution: gpufleet.dispatcher (the core), gpufleet.worker
(what runs on a GPU host) and gpufleet.cli (the `gpufleet` command) live in the repository's
dispatcher/, worker/ and cli/ folders, mapped here by pyproject.toml's package-dir.

The Python API is `Client` (see README "Python API"):

    from gpufleet import Client
    with Client() as client:                 # GPUFLEET_REDIS_URL, GPUFLEET_NAMESPACE
        batch = client.submit("mypkg.infer:run", inputs)
"""

from gpufleet.dispatcher.client.api import Batch, Client
from gpufleet.dispatcher.client.results import BatchProgress, iter_results, read_progress
from gpufleet.dispatcher.client.submit import SubmitReceipt, Submitter, submit_file
from gpufleet.dispatcher.errors import BatchTimeout, GpufleetError, JobFailed
from gpufleet.dispatcher.fleet.control import CancelReport
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings

__all__ = [
    "Batch",
    "BatchProgress",
    "BatchTimeout",
    "CancelReport",
    "Client",
    "GpufleetError",
    "JobFailed",
    "JobSpec",
    "Settings",
    "SubmitReceipt",
    "Submitter",
    "iter_results",
    "read_progress",
    "submit_file",
]
