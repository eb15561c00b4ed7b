"""gpufleet's core, in subpackages that read as the data flow:

    client/   the Python Client; submit, job files, results          (the user's process)
    store/    keys, connections, Lua scripts, the rq job             (Redis, below everything)
    routing/  job and node records, policies, the router             (pure: no Redis)
    fleet/    node snapshot, node claims, health, lease, autoscale   (the nodes' state)
    observe/  metrics and the status record
    sim/      the simulator, running routing/ unchanged
    loop.py   snapshot -> router -> move script: the one dispatch loop

errors.py and settings.py are shared by all. routing imports no other part, store only
routing's two records (JobSpec, NodeState); client, fleet and observe build on those two
(the Client's cancel is fleet's control.cancel); loop.py imports the rest. Nothing here
imports gpufleet.worker or gpufleet.cli.
"""
