"""The fleet: the nodes' state and what keeps it healthy.

snapshot.py reads every node in two round trips; node_claim.py decides which process runs a
node id (incarnations); health.py gives back what dead, draining or restarted nodes held and
returns due retries (retry.py: when); outliers.py ejects nodes failing too often; lease.py
keeps one dispatcher active; autoscale.py computes the desired node count; control.py holds
the operator's actions (drain, undrain, cancel, requeue).
"""
