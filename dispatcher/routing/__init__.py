"""Routing: where a job goes. Pure code, no Redis: the same objects run in the dispatcher,
the tests and the simulator.

models.py holds the two records everything passes around (JobSpec, NodeState); policies.py
the eight policies (filter, score, pick); affinity.py rendezvous hashing with bounded loads;
router.py places a batch of jobs over a snapshot, counting each placement as load.
"""
