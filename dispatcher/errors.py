"""gpufleet's errors: things a user can fix, shown as a message with no traceback.

    GpufleetError
    ├── RedisUnavailable     the Redis URL does not answer
    ├── JobFileError         a line of a job file is not a valid job
    ├── SettingsError        a setting or flag has a value gpufleet cannot use
    └── NotFound             a batch, job or node that does not exist
"""

from __future__ import annotations


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
