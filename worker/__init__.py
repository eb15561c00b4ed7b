"""gpufleet's worker side: runs on a GPU host, works its node queue, reports heartbeats."""
