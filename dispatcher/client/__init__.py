"""The submitting side: what a user's process runs.

api.py is the Python API (Client, Batch: submit, wait, status, results, map, cancel), on these:
submit.py enqueues validated jobs into the ingress queues (Submitter, submit_file);
jobfile.py reads and checks JSON Lines job files (and the same rules for the Python API);
results.py reads a batch back (per-job records, progress, status).
"""
