"""The store: everything about Redis itself, below every other part of the core.

keys.py names every key (and gpufleet's fields in rq's job HASH); connection.py opens URLs
(redis://, rediss://, unix://, redis+sentinel://) and says what "Redis is down" means;
scripts.py gives each Lua script in lua/ one typed method; job.py is the rq job with its
gpufleet fields, which the client, the fleet and the worker all use; redis_server.py runs a
private redis-server (the embedded default, tests) and a Sentinel group.
"""
