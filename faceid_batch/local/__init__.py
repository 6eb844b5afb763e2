"""The demo and the local services it (and the tests) start: redis-server, the simulator,
a COS-compatible server, workers."""
