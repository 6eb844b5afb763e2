"""Models and Alembic migrations agree, on SQLite and (when configured) PostgreSQL."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from faceid_batch.db import normalise_url
from faceid_batch.migrate import current, upgrade
from faceid_batch.models import Base


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_head_matches_models(tmp_path, backend, pg_url_fresh):
    url = f"sqlite:///{tmp_path}/m.db" if backend == "sqlite" else pg_url_fresh
    if url is None:
        pytest.skip("TEST_POSTGRES_URL not set")
    upgrade(url)
    assert current(url) is not None
    engine = create_engine(normalise_url(url))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert diff == []
    assert {"jobs", "attempts", "results", "best_frames"} <= tables
