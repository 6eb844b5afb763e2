"""The HTTP admin service: JSON queries and a review page behind a bearer token."""

from faceid_batch.admin.app import AdminConfigError, create_app

__all__ = ["AdminConfigError", "create_app"]
