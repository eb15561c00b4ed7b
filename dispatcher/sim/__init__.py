"""The simulator: a discrete-event model of a fleet that runs routing/ unchanged. config.py
holds a run's settings, workload.py its job stream, sim_fleet.py the event loop, simulator.py
the run and its summary (simulator -> sim_fleet -> workload -> config: one way)."""
