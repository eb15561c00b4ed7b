"""The simulator: a discrete-event model of a fleet that runs routing/ unchanged. config.py
holds a run's settings, workload.py its job stream, sim_fleet.py the event loops (loop_model.py
the one of the dispatcher loop as it runs), simulator.py the run and its summary (simulator ->
loop_model -> sim_fleet -> workload -> config: one way)."""
