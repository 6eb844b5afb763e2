"""Intake: a job comes in. ``submit`` checks it and stores its row; ``api`` is the Python
submit / wait interface over it."""
