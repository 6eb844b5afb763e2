"""The FaceID call: the shared rate limit, the account breaker, TC3 signing, the client,
and the code table that says what each answer means (``errors``) and costs (``billing``)."""
