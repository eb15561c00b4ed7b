"""gpufleet: route AI inference jobs over a fleet of GPU hosts, through Redis.

The import name of the whole distribution: gpufleet.dispatcher (the core), gpufleet.worker
(what runs on a GPU host) and gpufleet.cli (the `gpufleet` command) live in the repository's
dispatcher/, worker/ and cli/ folders, mapped here by pyproject.toml's package-dir.
"""

from gpufleet.dispatcher import JobSpec, Settings, SubmitReceipt, Submitter, iter_results, read_progress, submit_file

__all__ = ["JobSpec", "Settings", "SubmitReceipt", "Submitter", "iter_results", "read_progress", "submit_file"]
