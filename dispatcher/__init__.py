"""gpufleet's core: key schema, job model, client API, node snapshot, policies, dispatch loop."""

from .client import SubmitReceipt, Submitter, submit_file
from .models import JobSpec, NodeState
from .results import iter_results, read_progress
from .settings import Settings

__all__ = [
    "JobSpec",
    "NodeState",
    "Settings",
    "SubmitReceipt",
    "Submitter",
    "iter_results",
    "read_progress",
    "submit_file",
]
