"""Many jobs at once: batches and their controls (``batches``), manifests (``manifest``)
and the backfill that stores them (``backfill``)."""
