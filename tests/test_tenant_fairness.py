"""The onboarding lane shared by tenant (scheduling/onboarding.py, the feeder's side of it).

Against a real database, no Redis and no worker: which sign-ups are stored out (sent at
once) and which due, and how the feeder splits the room of the lane between tenants.
"""

from __future__ import annotations

from collections import Counter

import redis
from sqlalchemy import func, select, text, update

from faceid_batch import messages, tenants
from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, insert_job
from faceid_batch.models import DEFAULT_TENANT_ID, Attempt, Job, JobState
from faceid_batch.scheduling import onboarding, schedule
from faceid_batch.scheduling.feeder import Feeder
from faceid_batch.settings import load_settings
from faceid_batch.times import utcnow


def settings_for(url: str):  # type: ignore[no-untyped-def]
    # Nothing here reaches Redis: the feeder's lock is built, never taken.
    return load_settings(database_url=url, redis_url="redis://127.0.0.1:1/0")


def sign_up(settings, tenant: int, key: str, lane: str = "onboarding") -> int:  # type: ignore[no-untyped-def]
    job_id, created = insert_job(settings, JobSpec(key, "/p", "/v", "SILENT", lane=lane,
                                                   tenant_id=tenant))
    assert created
    return job_id


def out_and_due(url: str, tenant: int, lane: str = "onboarding") -> tuple[int, int]:
    with session_scope(url) as s:
        def n(*where):  # type: ignore[no-untyped-def]
            return s.scalar(select(func.count()).select_from(Job)
                            .where(Job.tenant_id == tenant, Job.lane == lane, *where))
        return n(Job.enqueued_at.is_not(None)), n(Job.due_at.is_not(None))


def answered_calls(url: str, latency_ms: int, n: int = 10) -> None:
    """Attempt rows of answered calls: what the bound learns the latency from."""
    job = sign_up(settings_for(url), DEFAULT_TENANT_ID, f"seed-{latency_ms}", "backfill")
    with session_scope(url) as s:
        s.add_all(Attempt(job_id=job, number=i + 1, latency_ms=latency_ms, code="Success",
                          kind="success", channel="api") for i in range(n))


class Parts:
    def __init__(self, settings) -> None:  # type: ignore[no-untyped-def]
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.breakers = ()


def feeder_for(settings) -> tuple[Feeder, list[int]]:  # type: ignore[no-untyped-def]
    sent: list[int] = []
    return Feeder(Parts(settings), send=lambda ids, lane, priority=None: sent.extend(ids)), sent  # type: ignore[arg-type]


def test_one_tenant_sends_every_sign_up_at_once_as_before(database_url):
    settings = settings_for(database_url)
    for i in range(60):  # beyond any bound: nothing is held back
        sign_up(settings, DEFAULT_TENANT_ID, f"d-{i}")
    assert not onboarding.shared(settings)
    assert out_and_due(database_url, DEFAULT_TENANT_ID) == (60, 0)


def test_the_bound_is_the_budget_over_a_calls_latency_and_the_slack(database_url):
    settings = settings_for(database_url)
    # No call made yet: the default latency (20/s x (0.5 + 0.25 s)).
    assert onboarding.bound(settings) == 15
    onboarding._latencies.clear()
    answered_calls(database_url, 550)
    assert onboarding.bound(settings) == 16  # 20/s x (0.55 + 0.25 s)
    faster = settings.model_copy(update={"faceid_rate_limit": 50})
    assert onboarding.bound(faster) == 40


def test_sign_ups_go_out_within_their_tenants_share_and_wait_due_beyond(database_url):
    settings = settings_for(database_url)
    answered_calls(database_url, 550)  # bound 16
    a = tenants.add(database_url, "tenant-a", None).id
    b = tenants.add(database_url, "tenant-b", None).id
    # A alone: the whole bound goes out at once, the rest waits due.
    for i in range(30):
        sign_up(settings, a, f"a-{i}")
    assert out_and_due(database_url, a) == (16, 14)
    # B comes: its share is half the bound (A is in flight), sent at once up to it,
    # although the lane is over its bound.
    for i in range(10):
        sign_up(settings, b, f"b-{i}")
    assert out_and_due(database_url, b) == (8, 2)
    # The default tenant is one more: a third of the bound.
    for i in range(7):
        sign_up(settings, DEFAULT_TENANT_ID, f"d-{i}")
    assert out_and_due(database_url, DEFAULT_TENANT_ID) == (6, 1)
    # Backfill is never sent at once.
    sign_up(settings, b, "b-backfill", "backfill")
    assert out_and_due(database_url, b, "backfill") == (0, 1)


def test_a_tenants_weight_sets_its_share_and_running_jobs_count(database_url):
    settings = settings_for(database_url)
    answered_calls(database_url, 550)  # bound 16
    heavy = tenants.add(database_url, "heavy", None, weight=3).id
    light = tenants.add(database_url, "light", None).id
    first = sign_up(settings, light, "l-0")
    # The light tenant's job is held by a worker (waiting for its slot): still in flight.
    with session_scope(database_url) as s:
        assert schedule.claim(s, first, "lease-1")
    for i in range(20):
        sign_up(settings, heavy, f"h-{i}")
    # 16 x 3/4 = 12 as its share; 3 more while the lane was under its bound (16) and
    # no one's sign-ups were due.
    assert out_and_due(database_url, heavy) == (15, 5)
    for i in range(1, 8):
        sign_up(settings, light, f"l-{i}")
    # 16 x 1/4 = 4 in flight, the running one among them.
    assert out_and_due(database_url, light) == (3, 4)
    with session_scope(database_url) as s:
        assert onboarding.in_flight(s) == {heavy: 15, light: 4}
        assert onboarding.due_tenants(s) == {heavy, light}


def test_the_feeder_fills_the_lane_to_its_bound_by_tenant_weight(database_url):
    settings = settings_for(database_url)
    answered_calls(database_url, 1750)  # bound 40
    a = tenants.add(database_url, "tenant-a", None).id
    b = tenants.add(database_url, "tenant-b", None).id
    c = tenants.add(database_url, "tenant-c", None, weight=2).id
    # Every sign-up stored due (as a backlog would be).
    with session_scope(database_url) as s:
        schedule.insert_jobs(s.connection(), [
            {"idempotency_key": f"{t}-{i}", "tenant_id": t, "lane": "onboarding",
             "liveness_type": "SILENT", "photo_source": "/p", "video_source": "/v",
             **schedule.waiting_columns(out=False)}
            for t, n in ((a, 100), (b, 20), (c, 100)) for i in range(n)])
    feeder, sent = feeder_for(settings)
    tenant_of = {}
    with session_scope(database_url) as s:
        tenant_of = dict(s.execute(select(Job.id, Job.tenant_id)).all())

    def feed(room: int = 40) -> Counter:
        before = len(sent)
        ids = feeder.pick_by_tenant(room)
        feeder._send("onboarding", ids)
        return Counter(tenant_of[i] for i in sent[before:])

    assert feed() == {a: 10, b: 10, c: 20}
    assert feed() == Counter()  # at its bound: nothing more
    # Workers answer 20 of them: 20 more go out, by weight again, oldest first.
    done = sent[:20]
    with session_scope(database_url) as s:
        s.execute(update(Job).where(Job.id.in_(done)).values(
            **schedule.completed_columns("Success", True)))
    assert feed() == {a: 5, b: 5, c: 10}
    # The lane's own depth caps a round too.
    with session_scope(database_url) as s:
        s.execute(update(Job).where(Job.id.in_(sent[20:40])).values(
            **schedule.completed_columns("Success", True)))
    assert sum(feed(room=8).values()) == 8
    # B runs dry: its picks go to the others.
    with session_scope(database_url) as s:
        s.execute(update(Job).where(Job.id.in_(sent)).values(
            **schedule.completed_columns("Success", True)))
    left_b = 20 - sum(1 for i in sent if tenant_of[i] == b)
    got = feed()
    assert 0 < left_b < 10 and got[b] == left_b and sum(got.values()) == 40
    # A key that ran dry gave its picks to the others: each job was sent once.
    assert len(sent) == len(set(sent))
    by_tenant = [i for i in sent if tenant_of[i] == a]
    assert by_tenant == sorted(by_tenant)  # within a tenant, in the order they became due
    with session_scope(database_url) as s:
        assert s.scalar(select(func.count()).select_from(Job).where(
            Job.state != JobState.COMPLETED.value, Job.enqueued_at.is_(None),
            Job.due_at.is_(None))) == 0


def test_due_tenants_and_sign_ups_in_flight_are_read_through_indexes(database_url):
    settings = settings_for(database_url)
    sign_up(settings, DEFAULT_TENANT_ID, "x")
    with session_scope(database_url) as s:
        dialect = s.get_bind().dialect.name
        if dialect == "postgresql":
            s.execute(text("SET LOCAL enable_seqscan = off"))
        explain = "EXPLAIN QUERY PLAN " if dialect == "sqlite" else "EXPLAIN "

        def plan(sql: str, **params) -> str:  # type: ignore[no-untyped-def]
            rows = s.execute(text(explain + sql), params).all()
            return "\n".join(" ".join(str(c) for c in r) for r in rows)

        # Each step of the loose index scan over the due tenants is one seek.
        step = plan("SELECT tenant_id FROM jobs WHERE lane = :lane AND due_at IS NOT NULL "
                    "AND tenant_id > 0 ORDER BY tenant_id LIMIT 1", lane="onboarding")
        assert "ix_jobs_due_tenant" in step, step
        # The feeder's pick of one tenant's due sign-ups (feeder._due_of_tenant).
        pick = plan("SELECT id FROM jobs WHERE lane = :lane AND tenant_id = 2 AND due_at <= "
                    ":now ORDER BY due_at, id LIMIT 10", lane="onboarding", now=utcnow())
        assert "ix_jobs_due_tenant" in pick and "TEMP B-TREE" not in pick, pick
        flying = plan(str(onboarding._IN_FLIGHT.compile(
            s.get_bind(), compile_kwargs={"literal_binds": True})))
        assert "ix_jobs_state" in flying and "ix_jobs_enqueued_at" in flying, flying


def test_a_refused_sign_up_checked_again_takes_its_share_too(database_url):
    settings = settings_for(database_url)
    answered_calls(database_url, 550)  # bound 16
    a = tenants.add(database_url, "tenant-a", None).id
    tenants.add(database_url, "tenant-b", None)
    for i in range(16):
        sign_up(settings, a, f"a-{i}")
    refusal = [{"code": "FailedOperation.SilentTooShort", "rule": "video_too_short",
                "detail": "video: 1.0 s", "action": "refuse"}]
    refused_id, created = insert_job(settings, JobSpec("again", "/p", "/v", "SILENT",
                                                       tenant_id=a, preflight=refusal))
    assert not created
    # Sent again without the fault: it is a sign-up of A's, over A's share: due.
    assert insert_job(settings, JobSpec("again", "/p", "/v", "SILENT",
                                        tenant_id=a)) == (refused_id, True)
    with session_scope(database_url) as s:
        row = s.get(Job, refused_id)
        assert row is not None and row.due_at is not None and row.enqueued_at is None


def test_a_tenant_with_few_sign_ups_in_flight_sends_at_the_first_step(database_url):
    """Sign-ups queued in Redis are taken by priority step before arrival (messages.py): a
    tenant under half its share sends at the first step, ahead of a burst of another's."""
    settings = settings_for(database_url)
    answered_calls(database_url, 550)  # bound 16
    a = tenants.add(database_url, "tenant-a", None).id
    b = tenants.add(database_url, "tenant-b", None).id
    for i in range(16):
        sign_up(settings, a, f"a-{i}")
    steps = []
    for i in range(9):
        with session_scope(database_url) as s:
            steps.append(onboarding.send_at_once(s, settings, b))
        sign_up(settings, b, f"b-{i}")
    # B's share is 8 of the bound (A is in flight): the first half at step 0, the rest of
    # its share at step 3, then due.
    assert steps == [messages.PRIORITY_FIRST] * 4 + [messages.PRIORITY_ONBOARDING] * 4 + [None]
    assert messages.PRIORITY_ONBOARDING < messages.PRIORITY_BACKFILL
