"""The owner's "Needs attention" card (review R4, dec 7b).

1. Its audit-log lookups use an index on ``audit_log (action, at)`` (migration 0017), not a walk of the whole log
   by time: the plan names the index on SQLite and PostgreSQL, and the downgrade removes it.
2. "Scheduled training failed" goes once a training succeeds, whoever started it: the dashboard's Retrain now and
   ``dangol-cloud train`` record their success (``training-run``) as the schedule does (``training-scheduled``).

Real app factory, SQLite and PostgreSQL, real Ta-Feng purchases, real trainings.
"""

from __future__ import annotations

from datetime import timedelta

from alembic import command
from sqlalchemy import inspect, select, text

from dangol_cloud.app import create_app
from dangol_cloud.background import RUN_ACTIONS, record_run
from dangol_cloud.db import _alembic_config, migrate
from dangol_cloud.models import AuditEntry, ModelVersion, utcnow
from dangol_cloud.settings import Settings
from dangol_cloud.web.home import _last

from .conftest import OWNER_EMAIL, add_owner
from .test_cloud_web import csrf_of, sign_in

FAILED = "MqttError: MQTT broker x:1883 unreachable"


def _settings(db, tmp_path) -> Settings:
    return Settings(database_url=db.url, cloud_home=tmp_path / "home", secret_key="k", listen=False,
                    _env_file=None)


def _import(db, path) -> None:
    from dangol_cloud.importers import parse_purchases
    from dangol_cloud.ingest import import_rows

    with db.transaction() as s:
        import_rows(s, parse_purchases(path, "ta-feng"), source="ta-feng", key_prefix="ta-feng")


def _audits(db, action: str) -> list[AuditEntry]:
    with db.sessions() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


def _warning(page: str, key: str) -> str | None:
    marker = f'data-background-warning="{key}"'
    return page.split(marker)[1].split("</div>")[0] if marker in page else None


# --- 1. the index --------------------------------------------------------------------------------------------------
def _plan(db, action: str) -> str:
    """The database's plan for :func:`~dangol_cloud.web.home._last`'s query, as text."""
    with db.sessions() as s:
        query = select(AuditEntry).where(AuditEntry.action == action) \
            .order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(1)
        sql = str(query.compile(s.get_bind(), compile_kwargs={"literal_binds": True}))
        if db.engine.dialect.name == "sqlite":
            return " ".join(str(r[-1]) for r in s.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
        s.execute(text("SET LOCAL enable_seqscan = off"))  # a small table: ask which index the planner picks
        return " ".join(r[0] for r in s.execute(text(f"EXPLAIN {sql}")))


def test_the_home_page_lookups_use_the_action_index(db):
    """Each lookup of the card reads the newest entry of one action through ``ix_audit_log_action_at`` (before:
    a backward walk of ``ix_audit_log_at`` over every entry, ~0.8 s each at a million rows)."""
    base = utcnow() - timedelta(days=30)
    with db.transaction() as s:
        s.execute(AuditEntry.__table__.insert(), [
            {"at": base + timedelta(minutes=i), "actor": "owner@x", "action": "consent-recorded", "detail": ""}
            for i in range(2000)] + [
            {"at": base + timedelta(minutes=5), "actor": "schedule", "action": "training-failed", "detail": FAILED},
            {"at": base + timedelta(minutes=9), "actor": "schedule", "action": "training-failed", "detail": "newer"}])
        if db.engine.dialect.name == "postgresql":
            s.execute(text("ANALYZE audit_log"))
    for action in RUN_ACTIONS:
        plan = _plan(db, action)
        assert "ix_audit_log_action_at" in plan, plan
    with db.sessions() as s:
        assert _last(s, "training-failed").detail == "newer"
        assert _last(s, "training-run") is None


def test_the_migration_adds_the_index_and_its_downgrade_removes_it(db):
    def indexes() -> set[str]:
        return {i["name"] for i in inspect(db.engine).get_indexes("audit_log")}

    assert "ix_audit_log_action_at" in indexes()
    command.downgrade(_alembic_config(db.engine.url.render_as_string(hide_password=False)), "0016")
    assert "ix_audit_log_action_at" not in indexes() and "ix_audit_log_at" in indexes()
    migrate(db.engine, "head")
    assert "ix_audit_log_action_at" in indexes()


# --- 2. a training by hand clears the scheduled training's failure --------------------------------------------------
def test_retrain_now_records_its_success_and_clears_the_warning(db, tmp_path, ta_feng_slice):
    """The last scheduled training failed; the owner presses Retrain now and it succeeds (no broker: nothing to
    send). The success is on the audit log under the owner's e-mail with the model, and the warning is gone."""
    add_owner(db)
    _import(db, ta_feng_slice)
    assert record_run(db, "training-failed", "schedule", FAILED)
    app = create_app(_settings(db, tmp_path), db=db, TESTING=True)
    client = app.test_client()
    sign_in(client)
    page = client.get("/").get_data(as_text=True)
    warning = _warning(page, "training")
    assert warning is not None and "Last success: never" in warning and "MqttError" in warning
    r = client.post("/train", data={"csrf_token": csrf_of(page)})
    assert r.status_code == 302
    job = app.extensions["dangol_training"]
    job.join(120)
    assert job.ok is True, job.message
    runs = _audits(db, "training-run")
    with db.sessions() as s:
        version = s.scalar(select(ModelVersion.version))
    assert len(runs) == 1 and runs[0].actor == OWNER_EMAIL
    assert f"model {version}" in runs[0].detail and "Retrain now" in runs[0].detail
    assert _warning(client.get("/").get_data(as_text=True), "training") is None


def test_dangol_cloud_train_records_its_success_and_clears_the_warning(db, tmp_path, ta_feng_slice, monkeypatch):
    from dangol_cloud.cli import main as cli

    add_owner(db)
    _import(db, ta_feng_slice)
    assert record_run(db, "training-failed", "schedule", FAILED)
    monkeypatch.delenv("DANGOL_MQTT_URL", raising=False)
    monkeypatch.setenv("DANGOL_DATABASE_URL", db.url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    assert cli(["train"]) == 0
    runs = _audits(db, "training-run")
    assert len(runs) == 1 and runs[0].actor == "cli" and "dangol-cloud train" in runs[0].detail
    app = create_app(_settings(db, tmp_path), db=db, TESTING=True)
    with app.test_request_context("/"), db.sessions() as s:
        from dangol_cloud.web.home import background_warnings

        assert "training" not in [w["key"] for w in background_warnings(s)]


def test_a_scheduled_failure_after_a_manual_success_still_warns(db, tmp_path):
    """Ordering is by time, not by kind: a failure newer than the last success (by hand) is shown, naming that
    success; a newer success of either kind clears it."""
    from dangol_cloud.web.home import background_warnings

    add_owner(db)
    now = utcnow()
    with db.transaction() as s:
        s.add(AuditEntry(actor=OWNER_EMAIL, action="training-run", detail="model a; Retrain now",
                         at=now - timedelta(hours=3)))
        s.add(AuditEntry(actor="schedule", action="training-scheduled", detail="model 0",
                         at=now - timedelta(hours=5)))
        s.add(AuditEntry(actor="schedule", action="training-failed", detail=FAILED, at=now - timedelta(hours=2)))
    app = create_app(_settings(db, tmp_path), db=db, TESTING=True)
    with app.test_request_context("/"), db.sessions() as s:
        (w,) = [w for w in background_warnings(s) if w["key"] == "training"]
        assert w["ok_at"] == now - timedelta(hours=3) and w["error"] == FAILED
        assert "Retrain now" in w["text"] and "dangol-cloud train" in w["text"]  # the card says what clears it
    with db.transaction() as s:
        s.add(AuditEntry(actor="schedule", action="training-scheduled", detail="model b", at=now - timedelta(hours=1)))
    with app.test_request_context("/"), db.sessions() as s:
        assert "training" not in [w["key"] for w in background_warnings(s)]
