"""The database as the queue of record: every change of a job's state (``schedule``), the
worker leases that hold jobs (``leases``), the feeder that keeps Redis a few seconds deep
(``feeder``), paid answers waiting to be written (``answers``) and the backstop sweep
(``recovery``)."""
