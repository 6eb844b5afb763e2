"""``python -m faceid_batch.cli`` is the ``faceid-batch`` command."""

from faceid_batch.cli.main import _main

_main()
