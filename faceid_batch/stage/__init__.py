"""Media, before any call: what a file is (``media``), what the API would refuse for free
(``preflight``), and staging it in the COS bucket FaceID reads from (``storage``)."""
