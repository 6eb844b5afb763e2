"""The ``faceid-batch`` command (``main``) and its command groups."""
