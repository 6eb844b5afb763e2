"""An erasure by key names one job: keys are unique per tenant, so the tenant is part of
the name (the default tenant when none is given)."""

from __future__ import annotations

import pytest

from faceid_batch import tenants
from faceid_batch.admin.purge import PurgeError, find_job
from faceid_batch.db import session_scope
from faceid_batch.models import DEFAULT_TENANT_ID, Job
from faceid_batch.settings import load_settings


def test_an_erasure_by_key_finds_the_job_of_its_tenant(database_url):
    settings = load_settings(database_url=database_url)
    thai = tenants.add(database_url, "thai", None)
    ids = {}
    with session_scope(database_url) as s:
        for tenant_id in (DEFAULT_TENANT_ID, thai.id):
            job = Job(idempotency_key="person-1", tenant_id=tenant_id, lane="onboarding",
                      state="completed", liveness_type="SILENT", photo_source="/p",
                      video_source="/v")
            s.add(job)
            s.flush()
            ids[tenant_id] = job.id
    assert find_job(settings, key="person-1") == ids[DEFAULT_TENANT_ID]
    assert find_job(settings, key="person-1", tenant_id=thai.id) == ids[thai.id]
    other = tenants.add(database_url, "other", None)
    with pytest.raises(PurgeError, match="no job with key"):
        find_job(settings, key="person-1", tenant_id=other.id)
