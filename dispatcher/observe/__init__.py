"""Watching the fleet: Prometheus metrics (metrics.py) and the stable `status --json`
record (status.py)."""
