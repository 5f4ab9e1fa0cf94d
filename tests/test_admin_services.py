"""The admin services called directly (no CLI, no broker): clusters, users, keys, site, audit,
reports. A refused action is audited as denied; a permitted one audits success; bad input
is refused with a message that says what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import col, select

from loudspeaker.auth import Actor, Role, authenticate, hash_token
from loudspeaker.config import Settings
from loudspeaker.exceptions import (
    ControllerNotRunning,
    InvalidRequest,
    LoudspeakerError,
    NotFoundError,
    PermissionDenied,
    ReportError,
)
from loudspeaker.models import AuditEntry, ClusterKey, ControlRequest, UserRecord
from loudspeaker.services import audit as audit_service
from loudspeaker.services import clusters, keys, reports, site, users
from loudspeaker.services.context import ServiceContext
from tests.conftest import SITE_FILE

ADMIN = Actor("an", Role.ADMIN.value)
TECH = Actor("tuan", Role.TECHNICIAN.value)
OFFICER = Actor("oanh", Role.OFFICER.value)


@pytest.fixture
def ctx(tmp_path: Path, sqlite_url: str) -> ServiceContext:
    """A context on a fresh database with the Luc Binh site loaded (no controller runs)."""
    c = ServiceContext(Settings(data_dir=tmp_path / "data", db_url=sqlite_url))
    site.load(c, ADMIN, SITE_FILE)
    return c


def _audit(ctx: ServiceContext, action: str) -> list[AuditEntry]:
    with ctx.session() as s:
        q = select(AuditEntry).where(AuditEntry.action == action).order_by(col(AuditEntry.seq))
        return list(s.exec(q).all())


def test_a_refused_control_action_is_audited_as_denied_and_nothing_is_queued(
    ctx: ServiceContext,
) -> None:
    with pytest.raises(PermissionDenied, match="lacks permission 'control'"):
        clusters.set_volume(ctx, OFFICER, "lb-01", 40)
    [row] = _audit(ctx, "cluster.volume")
    assert (row.actor, row.target, row.outcome) == ("oanh", "lb-01", "denied")
    assert json.loads(row.detail)["missing"] == "control"
    with ctx.session() as s:
        assert s.exec(select(ControlRequest)).all() == []


def test_diagnose_needs_the_diagnose_permission(ctx: ServiceContext) -> None:
    with pytest.raises(PermissionDenied, match="'diagnose'"):
        clusters.diagnose(ctx, OFFICER, "lb-01")
    assert [r.outcome for r in _audit(ctx, "cluster.diagnose")] == ["denied"]


def test_control_without_a_controller_is_refused_not_queued(ctx: ServiceContext) -> None:
    with pytest.raises(ControllerNotRunning, match="start `loudspeaker serve` first"):
        clusters.reboot(ctx, TECH, "lb-01")
    with ctx.session() as s:
        assert s.exec(select(ControlRequest)).all() == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: clusters.set_volume(c, TECH, "lb-01", 140), "from 0 to 100"),
        (lambda c: clusters.set_power(c, TECH, "lb-01", "maybe"), "say `on` or `off`"),
        (lambda c: clusters.diagnose(c, TECH, "lb-01", tone_s=30), "0.5 to 10 seconds"),
    ],
)
def test_bad_control_input_says_what_to_fix(
    ctx: ServiceContext, call: object, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        call(ctx)  # type: ignore[operator]


def test_unknown_cluster_is_not_found(ctx: ServiceContext) -> None:
    with pytest.raises(NotFoundError, match="no cluster 'lb-99' \\(see `loudspeaker clusters`\\)"):
        clusters.show_cluster(ctx, TECH, "lb-99")


def test_cluster_views_list_every_cluster_of_the_site(ctx: ServiceContext) -> None:
    rows = clusters.list_clusters(ctx, OFFICER)
    assert rows[0]["cluster"] == "lb-01"
    assert rows[0]["online"] is None  # never heard of
    detail = clusters.show_cluster(ctx, OFFICER, "lb-01")
    assert detail["name"] and detail["alarm_history"] == [] and detail["control"] == []
    assert clusters.alarms(ctx, OFFICER) == []


def test_adding_a_user_audits_success_and_writes_the_token_file(
    ctx: ServiceContext, tmp_path: Path
) -> None:
    token_file = tmp_path / "an.token"
    done = users.add(ctx, ADMIN, "an", "admin", token_file=token_file)
    assert done.token_file == token_file and (token_file.stat().st_mode & 0o777) == 0o600
    token = token_file.read_text().strip()
    with ctx.session() as s:
        user = s.get(UserRecord, "an")
        assert user is not None and user.token_sha256 == hash_token(token)
    [row] = _audit(ctx, "users.add")
    assert (row.actor, row.target, row.outcome) == ("an", "an", "ok")
    assert json.loads(row.detail) == {"role": "admin", "hamlet": None}


def test_a_refused_user_action_is_audited_as_denied(ctx: ServiceContext, tmp_path: Path) -> None:
    with pytest.raises(PermissionDenied, match="lacks permission 'users'"):
        users.add(ctx, TECH, "mallory", "admin", token_file=tmp_path / "m.token")
    assert not (tmp_path / "m.token").exists()
    [row] = _audit(ctx, "users.add")
    assert (row.actor, row.target, row.outcome) == ("tuan", "mallory", "denied")


@pytest.mark.parametrize(
    ("name", "role", "hamlet", "error", "message"),
    [
        ("Bad Name", "admin", None, InvalidRequest, "lowercase letters"),
        ("hoa", "boss", None, InvalidRequest, "use one of: officer, hamlet-head"),
        ("hoa", "hamlet-head", None, InvalidRequest, "needs --hamlet HAMLET_ID"),
        ("hoa", "hamlet-head", "nowhere", NotFoundError, "no hamlet 'nowhere'; known: "),
        ("hoa", "officer", "ban-cau", InvalidRequest, "--hamlet is only for hamlet heads"),
        ("hoa", "officer", None, InvalidRequest, "the first user must be an admin"),
    ],
)
def test_bad_user_input_says_what_to_fix(
    ctx: ServiceContext,
    tmp_path: Path,
    name: str,
    role: str,
    hamlet: str | None,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        users.add(ctx, ADMIN, name, role, hamlet, tmp_path / "t.token")
    assert _audit(ctx, "users.add") == []


def test_the_last_admin_stays_and_unknown_users_are_not_found(
    ctx: ServiceContext, tmp_path: Path
) -> None:
    users.add(ctx, ADMIN, "an", "admin", token_file=tmp_path / "an.token")
    with pytest.raises(InvalidRequest, match="cannot remove the last admin"):
        users.remove(ctx, ADMIN, "an")
    with pytest.raises(InvalidRequest, match="cannot demote the last admin"):
        users.set_role(ctx, ADMIN, "an", "officer")
    with pytest.raises(NotFoundError, match="see `loudspeaker users list`"):
        users.reset_token(ctx, ADMIN, "nobody", tmp_path / "x.token")


def test_a_reset_token_replaces_the_old_one(ctx: ServiceContext, tmp_path: Path) -> None:
    users.add(ctx, ADMIN, "an", "admin", token_file=tmp_path / "old.token")
    users.add(ctx, ADMIN, "tuan", "technician", token_file=tmp_path / "tuan.token")
    with pytest.raises(InvalidRequest, match="exists; choose another --token-file"):
        users.reset_token(ctx, ADMIN, "tuan", tmp_path / "old.token")
    done = users.reset_token(ctx, ADMIN, "tuan", tmp_path / "new.token")
    assert done.role == "technician"
    new = (tmp_path / "new.token").read_text().strip()
    with ctx.session() as s:
        user = s.get(UserRecord, "tuan")
        assert user is not None and user.token_sha256 == hash_token(new)
    assert [r.outcome for r in _audit(ctx, "users.reset-token")] == ["ok"]
    assert [u.name for u in users.list_users(ctx, ADMIN)] == ["an", "tuan"]


def test_issuing_a_key_writes_the_box_file_and_audits(ctx: ServiceContext, tmp_path: Path) -> None:
    done = keys.write_key_file(ctx, ADMIN, "lb-01", "issue", tmp_path / "lb-01.json")
    assert done.path.is_file() and len(done.kids) == 1
    assert [r.outcome for r in _audit(ctx, "keys.issue")] == ["ok"]
    assert [r.outcome for r in _audit(ctx, "keys.export")] == ["ok"]
    with pytest.raises(InvalidRequest, match="has no key waiting; `keys rotate lb-01` first"):
        keys.activate(ctx, ADMIN, "lb-01")
    keys.write_key_file(ctx, ADMIN, "lb-01", "rotate", tmp_path / "lb-01.json")
    activated = keys.activate(ctx, ADMIN, "lb-01")
    assert activated.controller_notified is False  # no controller runs: it signs on start
    assert sorted(k.state for k in keys.list_keys(ctx, ADMIN)) == ["active", "retired"]
    assert activated.kid in {k.kid for k in keys.list_keys(ctx, ADMIN) if k.state == "active"}


def test_a_refused_key_action_is_audited_and_writes_nothing(
    ctx: ServiceContext, tmp_path: Path
) -> None:
    with pytest.raises(PermissionDenied, match="lacks permission 'keys'"):
        keys.write_key_file(ctx, TECH, "lb-01", "issue", tmp_path / "k.json")
    assert not (tmp_path / "k.json").exists()
    [row] = _audit(ctx, "keys.issue")
    assert (row.actor, row.target, row.outcome) == ("tuan", "lb-01", "denied")
    with ctx.session() as s:
        assert s.exec(select(ClusterKey)).all() == []


def test_key_reset_needs_an_explicit_yes(ctx: ServiceContext) -> None:
    with pytest.raises(InvalidRequest, match="keys reset --all --yes"):
        keys.reset(ctx, ADMIN, confirmed=False)
    assert _audit(ctx, "keys.reset") == []
    done = keys.reset(ctx, ADMIN, confirmed=True)
    assert done.dropped == () and done.controller_notified is False
    assert [r.outcome for r in _audit(ctx, "keys.reset")] == ["ok"]


def test_site_load_is_audited_and_refused_to_others(ctx: ServiceContext) -> None:
    [row] = _audit(ctx, "site.load")  # the fixture's load
    assert row.outcome == "ok" and json.loads(row.detail)["clusters"] > 0
    with pytest.raises(PermissionDenied):
        site.load(ctx, OFFICER, SITE_FILE)
    assert [r.outcome for r in _audit(ctx, "site.load")] == ["ok", "denied"]
    view = site.show(ctx, OFFICER)
    assert view.site.site.id and view.online == {}


def test_audit_reading_and_verifying(ctx: ServiceContext) -> None:
    with pytest.raises(InvalidRequest, match="--head takes SEQ:HASH"):
        audit_service.verify(ctx, ADMIN, "12:short")
    result = audit_service.verify(ctx, ADMIN)
    assert result.ok and result.rows >= 1
    assert audit_service.entries(ctx, ADMIN, action="site.")[0].action == "site.load"
    with pytest.raises(PermissionDenied):
        audit_service.entries(ctx, TECH)
    assert [r.outcome for r in _audit(ctx, "audit.read")] == ["denied"]


def test_reports_refuse_a_bad_filter_or_output(ctx: ServiceContext, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no hamlet 'nowhere'"):
        reports.broadcast_log(ctx, OFFICER, reports.LogQuery(hamlet="nowhere"))
    assert reports.broadcast_log(ctx, OFFICER, reports.LogQuery()).entries == []
    with pytest.raises(ReportError, match=r"must end in \.xlsx or \.csv"):
        reports.monthly(ctx, OFFICER, "2026-01", tmp_path / "report.pdf")
    with pytest.raises(PermissionDenied):
        reports.monthly(ctx, TECH, "2026-01", tmp_path / "report.csv")
    done = reports.monthly(ctx, OFFICER, "2026-01", tmp_path / "report.csv")
    assert done.files == [tmp_path / "report.csv"] and done.files[0].is_file()


def test_the_first_admin_ends_bootstrap(ctx: ServiceContext, tmp_path: Path) -> None:
    with ctx.session() as s:
        assert authenticate(s).bootstrap
    bootstrap = Actor("local", "local-bootstrap", bootstrap=True)
    done = users.add(ctx, bootstrap, "an", "admin", token_file=tmp_path / "an.token")
    assert done.ended_bootstrap


def test_a_simulation_is_planned_and_checked_before_anything_starts(tmp_path: Path) -> None:
    from loudspeaker import simulation
    from loudspeaker.site import load_site_file

    plan, options = simulation.plan, simulation.SimulationOptions
    luc_binh = load_site_file(SITE_FILE)
    mqtt = [c.id for c in luc_binh.clusters if c.transport == "mqtt"]
    with pytest.raises(ControllerNotRunning, match="or give --broker"):
        plan(luc_binh, None, options())
    with pytest.raises(LoudspeakerError, match="generate and load a bigger one"):
        plan(luc_binh, None, options(clusters=len(mqtt) + 1, broker="mqtt://127.0.0.1:1"))
    with pytest.raises(LoudspeakerError, match="not both"):
        plan(luc_binh, None, options(broker="mqtt://127.0.0.1:1", broker_credentials_dir=tmp_path))
    with pytest.raises(LoudspeakerError, match=f"no key file for {mqtt[0]}, "):
        plan(luc_binh, None, options(broker="mqtt://127.0.0.1:1", keys_dir=tmp_path))
    sim = plan(luc_binh, None, options(clusters=2, broker="mqtt://127.0.0.1:1"))
    assert (sim.clusters, sim.processes, sim.keys_dir) == (mqtt[:2], 1, None)
    assert sim.endpoint is not None and sim.endpoint.url == "mqtt://127.0.0.1:1"


def test_unknown_conformance_checks_are_named() -> None:
    from loudspeaker.conformance import CHECKS, selected_checks

    assert selected_checks(None) is None
    assert selected_checks([CHECKS[0].key]) == {CHECKS[0].key}
    with pytest.raises(LoudspeakerError, match="no check nonsense; checks: "):
        selected_checks(["nonsense"])
