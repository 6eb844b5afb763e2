"""The producer API: submit a verification over HTTP and read its status and outcome.

``faceid-batch api`` serves it (app.py). Uploads are streamed to disk while they are hashed
and checked (uploads.py), every error is an RFC 9457 problem detail (problems.py), and the
onboarding lane refuses work it could not answer in time (admission.py).
"""
