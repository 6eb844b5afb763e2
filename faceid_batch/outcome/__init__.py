"""After the call: the answer, its attempts and best frame written (``persist``), and the
completion callback (``notify``, signed by ``webhooks``)."""
