"""`gpufleet web`: the fleet, its batches and their jobs in a browser (Flask; see app.py)."""
