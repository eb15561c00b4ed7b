"""gpufleet's errors: things a user can fix, shown as a message with no traceback.

    GpufleetError
    ├── RedisUnavailable     the Redis URL does not answer
    ├── JobFileError         a line of a job file is not a valid job
    ├── SettingsError        a setting or flag has a value gpufleet cannot use
    ├── NotFound             a batch, job or node that does not exist
    ├── NodeIdInUse          a live worker process already runs this node id
    ├── NodeTakenOver        another worker process took this node id over
    ├── BatchTimeout         Batch.wait's timeout passed first (also a TimeoutError)
    └── JobFailed            Client.map met a job that ended without a result
"""

from __future__ import annotations

from typing import Any


class GpufleetError(Exception):
    """Raised for every error the user can fix; the CLI shows its message and exits 1."""


class RedisUnavailable(GpufleetError):
    """Raised when Redis at the given URL does not answer."""

    def __init__(self, masked_url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach Redis at {masked_url}: {reason}\n"
            "Start one (`redis-server`, or `docker compose up -d redis`), point "
            "--redis-url / GPUFLEET_REDIS_URL at yours, or run `gpufleet local` to start "
            "an embedded one."
        )
        self.masked_url = masked_url


class JobFileError(GpufleetError):
    """Raised when a job file line is malformed or names something invalid."""

    def __init__(self, source: str, line_no: int, field: str | None, message: str) -> None:
        where = (f"{source}:{line_no}" if line_no else source) + (f": field '{field}'" if field else "")
        super().__init__(f"{where}: {message}; nothing was enqueued")
        self.line_no = line_no
        self.field = field


class SettingsError(GpufleetError):
    """Raised when a setting, env var or flag has an unusable value."""


class NotFound(GpufleetError):
    """Raised when a batch, job or node named by the user does not exist."""


class NodeIdInUse(GpufleetError):
    """Raised when a worker starts under a node id that a live process already runs."""

    def __init__(self, node_id: str, holder: str, pid: str, host: str) -> None:
        super().__init__(
            f"node id {node_id!r} is run by a live worker (pid {pid} on host {host}, incarnation {holder}): "
            "stop that worker first, or give this one another --node-id"
        )
        self.node_id = node_id


class NodeTakenOver(GpufleetError):
    """Raised when another worker process took this node id over while this one ran it."""

    def __init__(self, node_id: str) -> None:
        super().__init__(f"node id {node_id!r} was taken over by another worker process; this one stopped "
                         "(were two workers started under one --node-id?)")  # fmt: skip
        self.node_id = node_id


class BatchTimeout(GpufleetError, TimeoutError):
    """Raised when Batch.wait's timeout passes before every job of the batch ended."""

    def __init__(self, batch_id: str, timeout_s: float, *, size: int, finished: int, failed: int,
                 canceled: int) -> None:  # fmt: skip
        super().__init__(
            f"batch {batch_id!r} not done after {timeout_s:g} s: {finished + failed + canceled} of {size} jobs "
            f"ended (finished={finished} failed={failed} canceled={canceled}); its jobs keep running: wait "
            "again, or cancel it"
        )
        self.batch_id = batch_id


class JobFailed(GpufleetError):
    """Raised by Client.map for a job that ended without a result: failed, canceled or expired."""

    def __init__(self, batch_id: str, index: int, record: dict[str, Any]) -> None:
        node = f" on node {record['node']}" if record.get("node") else ""
        super().__init__(f"job {index} of batch {batch_id!r} {record['status']}{node}: "
                         f"{record.get('error') or 'no result'}")  # fmt: skip
        self.batch_id = batch_id
        self.index = index  # its position in the inputs, from 0
        self.record = record  # its `results` record
