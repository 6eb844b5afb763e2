"""Running it: structured logs with secrets masked, Prometheus metrics."""
