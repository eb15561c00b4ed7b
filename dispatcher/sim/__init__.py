"""The simulator: a discrete-event model of a fleet (simulator.py: configuration and
results; sim_fleet.py: the event loop) that runs routing/ unchanged."""
