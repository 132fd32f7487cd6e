"""Issue 19, on SQLite and PostgreSQL: an account belongs to one patient (connecting it for another
is refused, moving it is `ohx users relink`, audited and republished); an erased person stays out
of every way in until `ohx users readmit` (a Fitabase export and the simulated source re-offer
them on every run, the connect flow and webhooks too); `ohx audit` shows who did what, the
person only as their salted subject; one id rule at every entry point."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import hypothesis.strategies as st
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from depth import examples
from hypothesis import HealthCheck, given, settings

from ohx_dagster.cli import cli
from ohx_dagster.config.settings import audit_retention
from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.ids import check_patient_id, check_user_id
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.core.times import now_us
from ohx_dagster.fhir.common import is_withdrawn
from ohx_dagster.fhir.delivery.outbox import owner
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.privacy import audit
from ohx_dagster.privacy.erasure import erase_person, remaining_rows
from ohx_dagster.privacy.identity import Erased, LinkConflict, readmit
from ohx_dagster.privacy.retention import apply_retention
from ohx_dagster.privacy.subjects import erasure_salt, patient_subject, subject_hash
from ohx_dagster.providers.api.connect import sync_config
from ohx_dagster.providers.api.tokens import OAuthTokens, TokenStore, connect_user
from ohx_dagster.providers.base import Windowed
from ohx_dagster.providers.fitabase import FitabaseSource
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.publish.partitions import check_output, partition_dir, publish_partition
from ohx_dagster.storage.schema import audit_log, day_versions, measurements, series_chunks, users
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.inbox import Inbox
from ohx_dagster.sync.shards import Shard

DAY = date(2016, 4, 12)
EXPORT_NOW = datetime(2016, 5, 1, tzinfo=UTC)
ERASED, KEPT = "2022484408", "1503960366"
SIM_NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
SIM_DAY = SIM_NOW.date() - timedelta(days=3)


def salt() -> bytes:
    return erasure_salt()


def subject(provider: str, user_id: str) -> str:
    return subject_hash(provider, user_id, salt=salt())


@pytest.fixture
def export(fitabase_dir: Path, tmp_path: Path) -> Path:
    """The real Fitabase export cut to two people and one day (its layout and values)."""
    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("heartrate_seconds_merged.csv", "hourlySteps_merged.csv"):
        table = pd.read_csv(fitabase_dir / name, dtype={"Id": str})
        time = "Time" if "Time" in table else "ActivityHour"
        keep = table["Id"].isin({ERASED, KEPT}) & table[time].str.startswith("4/12/2016")
        table[keep].to_csv(folder / name, index=False)
    return folder


def sync_export(store: RecordStore, export: Path):
    source = Windowed(FitabaseSource([export], "UTC"), SUPPORTED_TYPES["fitabase"], timedelta(0))
    return sync_partition(source, store, [DAY], strategy="partition", now=EXPORT_NOW)


def simulated() -> Windowed:
    return Windowed(SimulatedSource(3, seed=7, clock=lambda: SIM_NOW), SUPPORTED_TYPES["simulated"])


def held(store: RecordStore, provider: str, user_id: str) -> dict[str, int]:
    """The person's users, series and measurement rows."""
    with store.read() as conn:
        return {
            t.name: conn.execute(
                sa.select(sa.func.count())
                .select_from(t)
                .where(t.c.provider == provider, t.c.user_id == user_id)
            ).scalar_one()
            for t in (users, series_chunks, measurements)
        }


def actions(store: RecordStore) -> list[tuple[str, str, str]]:
    return [(r.action, r.subject, r.outcome) for r in audit.read(store)]


# -- erasure that lasts --------------------------------------------------------------------------


def test_an_erased_export_person_stays_out_until_readmitted(
    store: RecordStore, export: Path, tmp_path: Path
) -> None:
    sync_export(store, export)
    assert held(store, "fitabase", ERASED)["series_chunks"] > 0
    kept_before = held(store, "fitabase", KEPT)
    assert kept_before["series_chunks"] > 0
    output = FhirOutput(str(tmp_path / "fhir"))
    erase_person(store, output, None, "fitabase", ERASED, requested_by="dpo@clinic")
    assert remaining_rows(store, "fitabase", ERASED) == {}
    for _ in range(2):  # the export still holds them: every run offers them again
        report = sync_export(store, export)
        assert report.erased_left_out == 1
        assert ERASED not in report.users_synced and ERASED not in str(report.users_skipped)
        assert held(store, "fitabase", ERASED) == {
            "users": 0,
            "series_chunks": 0,
            "measurements": 0,
        }
        assert remaining_rows(store, "fitabase", ERASED) == {}
    assert held(store, "fitabase", KEPT) == kept_before
    with store.write() as conn:
        lifted = readmit(
            conn, "fitabase", ERASED, actor="dpo@clinic", reason="consent renewed", salt=salt()
        )
    assert lifted == 1
    report = sync_export(store, export)
    assert report.erased_left_out == 0 and ERASED in report.users_synced
    assert held(store, "fitabase", ERASED)["series_chunks"] > 0
    assert [a for a in actions(store) if a[1] == subject("fitabase", ERASED)] == [
        ("erase", subject("fitabase", ERASED), "ok"),
        ("readmit", subject("fitabase", ERASED), "ok"),
    ]
    # The audit rows name them by subject only.
    with store.read() as conn:
        text = " ".join(str(v) for row in conn.execute(sa.select(audit_log)) for v in row)
    assert ERASED not in text


def test_dagster_runs_of_an_export_leave_an_erased_person_out_and_say_how_many(
    export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from ohx_dagster.config.settings import Settings
    from ohx_dagster.definitions import build_definitions

    for name in ("OHX_DATABASE_URL", "OHX_FHIR_DIR", "OHX_SOURCES"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "OHX_HOME": str(tmp_path / "home"),
        "OHX_SOURCES": "fitabase",
        "OHX_FITABASE_DIR": str(export),
        "OHX_FITABASE_TZ": "UTC",
        "OHX_PARTITIONS_START": "2016-03-01",
    }
    settings = Settings.from_env(env)
    job = build_definitions(settings).get_job_def("sync_partition")
    (tmp_path / "dagster").mkdir()
    store = RecordStore(settings.database_url)

    def run() -> dict:
        result = job.execute_in_process(instance=instance, partition_key=f"{DAY}|fitabase")
        assert result.success
        (raw,) = [
            e.materialization
            for e in result.get_asset_materialization_events()
            if e.materialization.asset_key.path[-1] == "raw_health_records"
        ]
        return {k: v.value for k, v in raw.metadata.items()}

    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        assert run()["erased_people_left_out"] == 0
        assert held(store, "fitabase", ERASED)["series_chunks"] > 0
        output = FhirOutput(settings.fhir_dir)
        erase_person(store, output, None, "fitabase", ERASED, requested_by="dpo")
        for _ in range(2):
            metadata = run()
            assert metadata["erased_people_left_out"] == 1
            assert ERASED not in json.dumps(metadata, default=str)
            assert held(store, "fitabase", ERASED) == {
                "users": 0,
                "series_chunks": 0,
                "measurements": 0,
            }
        assert remaining_rows(store, "fitabase", ERASED) == {}
    store.dispose()


def test_an_erased_simulated_person_stays_out_of_two_more_runs(
    store: RecordStore, tmp_path: Path
) -> None:
    sync_partition(simulated(), store, [SIM_DAY], now=SIM_NOW)
    assert held(store, "simulated", "sim-002")["series_chunks"] > 0
    erase_person(
        store, FhirOutput(str(tmp_path / "fhir")), None, "simulated", "sim-002", requested_by="dpo"
    )
    for _ in range(2):
        report = sync_partition(simulated(), store, [SIM_DAY], now=SIM_NOW)
        assert report.erased_left_out == 1
        assert held(store, "simulated", "sim-002") == {
            "users": 0,
            "series_chunks": 0,
            "measurements": 0,
        }
        assert sorted(report.users_synced) == ["sim-001", "sim-003"]


def test_an_erased_person_cannot_connect_or_notify_until_readmitted(
    store: RecordStore, token_key: str, tmp_path: Path
) -> None:
    config = HealthSyncConfig(user_id="oura-7", provider="oura", fhir_patient_id="pat-7")
    connect_user(store, "oura", "oura-7", OAuthTokens("a1", "r1"), config)
    erase_person(
        store, FhirOutput(str(tmp_path / "fhir")), None, "oura", "oura-7", requested_by="dpo"
    )
    with pytest.raises(Erased) as refused:
        connect_user(store, "oura", "oura-7", OAuthTokens("a2", "r2"), config)
    assert "oura-7" not in str(refused.value) and "pat-7" not in str(refused.value)
    assert "ohx users readmit" in str(refused.value)
    assert held(store, "oura", "oura-7")["users"] == 0
    assert TokenStore(store).load("oura", "oura-7") is None
    inbox = Inbox(store)
    event = NewEvent("oura", "evt-1", "oura-7", "heart_rate", SIM_NOW, {"user": "oura-7"})
    other = NewEvent("oura", "evt-2", "oura-8", "heart_rate", SIM_NOW, {"user": "oura-8"})
    assert inbox.add([event, other]) == 1  # theirs is acknowledged like a duplicate, not stored
    assert remaining_rows(store, "oura", "oura-7") == {}
    with store.write() as conn:
        readmit(conn, "oura", "oura-7", actor="staff", reason="rejoined", salt=salt())
    connect_user(store, "oura", "oura-7", OAuthTokens("a3", "r3"), config)
    assert inbox.add([NewEvent("oura", "evt-3", "oura-7", None, None, {})]) == 1
    mine = [a for a in actions(store) if a[1] == subject("oura", "oura-7")]
    assert [(a, o) for a, _, o in mine] == [
        ("connect", "ok"),
        ("erase", "ok"),
        ("connect", "refused"),
        ("readmit", "ok"),
        ("connect", "ok"),
    ]


# -- one account, one patient --------------------------------------------------------------------


def test_connecting_an_account_for_a_second_patient_is_refused_and_nothing_changes(
    store: RecordStore, token_key: str
) -> None:
    first = HealthSyncConfig(user_id="acc-1", provider="oura", fhir_patient_id="pat-A")
    connect_user(store, "oura", "acc-1", OAuthTokens("access-A", "refresh-A"), first)
    with store.read() as conn:
        before = conn.execute(sa.select(users)).all()
    second = HealthSyncConfig(user_id="acc-1", provider="oura", fhir_patient_id="pat-B")
    with pytest.raises(LinkConflict) as refused:
        connect_user(store, "oura", "acc-1", OAuthTokens("access-B", "refresh-B"), second)
    message = str(refused.value)
    for clear in ("acc-1", "pat-A", "pat-B"):
        assert clear not in message
    assert subject("oura", "acc-1")[:12] in message
    assert patient_subject("pat-A", salt=salt())[:12] in message
    assert patient_subject("pat-B", salt=salt())[:12] in message
    assert "ohx users relink" in message
    with store.read() as conn:
        assert conn.execute(sa.select(users)).all() == before
    assert store.user("oura", "acc-1").fhir_patient_id == "pat-A"
    assert TokenStore(store).load("oura", "acc-1").access_token == "access-A"
    # Reconnecting for the same patient is a reconnection: new tokens.
    connect_user(store, "oura", "acc-1", OAuthTokens("access-A2", "refresh-A2"), first)
    assert TokenStore(store).load("oura", "acc-1").access_token == "access-A2"
    assert [(a, o) for a, _, o in actions(store)] == [
        ("connect", "ok"),
        ("connect", "refused"),
        ("connect", "ok"),
    ]


def ohx(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def one_error_line(result: Result) -> str:
    """One line naming what was wrong (exit 1; 2 for a bad argument, click's usage error)."""
    assert result.exit_code in (1, 2), (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ohx: error: "), result.stderr
    return lines[0]


@pytest.fixture
def cli_store(store: RecordStore, store_url: str, tmp_path: Path, monkeypatch) -> RecordStore:
    """`ohx` pointed at the test's store (SQLite or PostgreSQL)."""
    monkeypatch.setenv("OHX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OHX_DATABASE_URL", store_url)
    monkeypatch.setenv("OHX_FHIR_DIR", str(tmp_path / "fhir"))
    monkeypatch.delenv("OHX_FHIR_SERVER_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    return store


def test_relink_moves_the_account_audited_and_republishes_its_history(
    cli_store: RecordStore, tmp_path: Path
) -> None:
    store = cli_store
    sync_partition(simulated(), store, [SIM_DAY], now=SIM_NOW)
    output = FhirOutput(str(tmp_path / "fhir"))

    directory = partition_dir(SIM_DAY, "simulated")

    def publish(*, force: bool = False) -> list[dict]:
        report = publish_partition(
            store, output, provider="simulated", key="simulated", shard=Shard("simulated"),
            day=SIM_DAY, scope=None, now=SIM_NOW, horizon=timedelta(hours=1), force=force,
        )  # fmt: skip
        assert not report.invalid_buckets
        return [
            r
            for entry in output.manifest(directory)["output"]
            for r in output.read_resources(f"{directory}/{entry['url'].rsplit('/', 1)[-1]}")
        ]

    def lines_by_owner() -> dict[str, set[bytes]]:
        """Every NDJSON line of the partition as written, by the person it is about."""
        found: dict[str, set[bytes]] = {}
        for entry in output.manifest(directory)["output"]:
            body = (tmp_path / "fhir" / directory / entry["url"].rsplit("/", 1)[-1]).read_bytes()
            for line in body.splitlines():
                found.setdefault(owner(json.loads(line))[1], set()).add(line)
        return found

    before = publish()
    neighbours_before = {u: lines for u, lines in lines_by_owner().items() if u != "sim-001"}
    assert neighbours_before
    old = store.user("simulated", "sim-001").fhir_patient_id
    assert any(r.get("subject", {}).get("reference") == f"Patient/{old}" for r in before)
    waiting = store.unpublished_days("simulated")  # neighbouring days the sync touched
    assert "sim-001" not in waiting.get(SIM_DAY, set())
    with store.read() as conn:
        their_days = set(
            conn.execute(
                sa.select(day_versions.c.day).where(day_versions.c.user_id == "sim-001")
            ).scalars()
        )
    assert SIM_DAY.isoformat() in their_days

    refused = one_error_line(
        ohx("users", "relink", "simulated", "sim-001", "--patient", "has space",
            "--reason", "wrong patient", "--actor", "nurse.a")
    )  # fmt: skip
    assert "--patient" in refused and "FHIR id" in refused
    unknown = one_error_line(
        ohx("users", "relink", "simulated", "sim-404", "--patient", "pat-new",
            "--reason", "wrong patient", "--actor", "nurse.a")
    )  # fmt: skip
    assert "sim-404" in unknown and "ohx users list" in unknown
    no_such = one_error_line(
        ohx("users", "relink", "fitbit", "sim-001", "--patient", "pat-new",
            "--reason", "wrong patient", "--actor", "nurse.a")
    )  # fmt: skip
    assert "PROVIDER" in no_such and "'fitbit'" in no_such

    moved = ohx(
        "users", "relink", "simulated", "sim-001", "--patient", "pat-new",
        "--reason", "wrong patient chosen at enrolment", "--actor", "nurse.a",
    )  # fmt: skip
    assert moved.exit_code == 0, (moved.output, moved.exception)
    assert "moved to patient pat-new" in moved.stdout and "republish" in moved.stdout
    assert store.user("simulated", "sim-001").fhir_patient_id == "pat-new"
    # Every stored day of theirs waits for the republish sensor; nobody else's changed.
    now_waiting = store.unpublished_days("simulated")
    assert {d.isoformat() for d, p in now_waiting.items() if "sim-001" in p} == their_days

    def others(days: dict) -> dict:
        return {d: p - {"sim-001"} for d, p in days.items() if p - {"sim-001"}}

    assert others(now_waiting) == others(waiting)
    (row,) = [r for r in audit.read(store) if r.action == "relink"]
    assert (row.actor, row.subject, row.outcome) == (
        "nurse.a",
        subject("simulated", "sim-001"),
        "ok",
    )
    assert "wrong patient chosen at enrolment" in row.detail
    assert old not in row.detail and "pat-new" not in row.detail and "sim-001" not in row.detail
    assert abs(row.at_us - now_us()) < 60e6
    assert store.user("simulated", "sim-001").link_generation == 1
    # What the republish sensor's refresh run does: their history is published again as new
    # resources under the new patient, and what was published before is entered-in-error.
    after = publish()
    configs = {p.config.user_id: p.config for p in store.people("simulated")}
    assert not check_output(after, configs, None)
    by_id = {(r["resourceType"], r["id"]): r for r in after}
    clinical = {"Observation", "DiagnosticReport"}
    theirs_before = [
        r for r in before if r["resourceType"] in clinical and owner(r) == ("simulated", "sim-001")
    ]
    assert {r["resourceType"] for r in theirs_before} == clinical  # series, aggregates and ECG
    # A replacement's identifier is the old one with the generation in its key ("|link-1").
    replacements = {
        r["identifier"][0]["value"].replace("|link-1", "", 1): r
        for r in after
        if r["resourceType"] in clinical
        and owner(r) == ("simulated", "sim-001")
        and r["status"] != "entered-in-error"
    }
    assert len(replacements) == len(theirs_before)

    def content(resource: dict) -> dict:
        ignored = {
            "id",
            "identifier",
            "subject",
            "status",
            "derivedFrom",
            "result",
            "device",
            "hasMember",
        }  # references to resources that are replaced too
        return {k: v for k, v in resource.items() if k not in ignored}

    for earlier in theirs_before:
        withdrawn = by_id[(earlier["resourceType"], earlier["id"])]
        assert withdrawn == {**earlier, "status": "entered-in-error"}  # its old subject
        assert withdrawn["subject"]["reference"] == f"Patient/{old}"
        new = replacements[earlier["identifier"][0]["value"]]
        assert "|link-1" in new["identifier"][0]["value"]
        assert new["id"] != earlier["id"]
        assert new["subject"]["reference"] == "Patient/pat-new"
        assert content(new) == content(earlier)  # the same values
        assert new["status"] == earlier["status"]
    # The Patient derived for them before stays while withdrawn resources reference it.
    assert ("Patient", old) in by_id
    assert not any(
        r["subject"]["reference"] == f"Patient/{old}"
        for r in after
        if "subject" in r and not is_withdrawn(r)
    )
    # Their Device's association with the former patient is withdrawn too; the new one names
    # the new patient. Their Provenance is a new resource.
    associations = [
        r for r in after if r["resourceType"] == "DeviceAssociation" and owner(r)[1] == "sim-001"
    ]
    withdrawn_links = [r for r in associations if is_withdrawn(r)]
    assert withdrawn_links and all(
        r["subject"]["reference"] == f"Patient/{old}"
        and r["status"]["coding"][0]["code"] == "entered-in-error"
        and (r["resourceType"], r["id"]) in {(b["resourceType"], b["id"]) for b in before}
        for r in withdrawn_links
    )
    assert [r["subject"]["reference"] for r in associations if not is_withdrawn(r)] == [
        "Patient/pat-new"
    ] * (len(associations) - len(withdrawn_links))
    provenances = [
        r for r in after if r["resourceType"] == "Provenance" and owner(r)[1] == "sim-001"
    ]
    assert [p["patient"]["reference"] for p in provenances] == ["Patient/pat-new"]
    assert not {p["id"] for p in provenances} & {p["id"] for p in before}
    # Nobody else's published line changed by a byte.
    assert {u: lines for u, lines in lines_by_owner().items() if u != "sim-001"} == (
        neighbours_before
    )
    # Publishing again (forced: their day is rendered anew) changes no file.
    files = output.manifest(directory)["output"]
    assert publish(force=True) == after and output.manifest(directory)["output"] == files
    # Again: nothing to move.
    again = ohx(
        "users", "relink", "simulated", "sim-001", "--patient", "pat-new",
        "--reason", "x", "--actor", "nurse.a",
    )  # fmt: skip
    assert again.exit_code == 0 and "nothing changed" in again.stdout
    assert len([r for r in audit.read(store) if r.action == "relink"]) == 1


# -- the audit log, end to end -------------------------------------------------------------------


def test_ohx_audit_shows_connect_import_erase_and_readmit(
    cli_store: RecordStore, export: Path, token_key: str
) -> None:
    store = cli_store
    config = HealthSyncConfig(user_id="acc-9", provider="oura", fhir_patient_id="pat-9")
    connect_user(store, "oura", "acc-9", OAuthTokens("a", "r"), config)
    imported = ohx("import", "fitabase", str(export), "--timezone", "UTC")
    assert imported.exit_code == 0, (imported.output, imported.exception)
    erased = ohx("users", "delete", "fitabase", ERASED, "--yes")
    assert erased.exit_code == 0, (erased.output, erased.exception)
    assert "the export itself" in erased.stdout and "ohx users readmit" in erased.stdout
    again = ohx("import", "fitabase", str(export), "--timezone", "UTC")
    assert again.exit_code == 0, (again.output, again.exception)
    assert "1 people of the file were erased" in again.stderr  # counted,
    assert ERASED not in again.output  # never named
    paused = ohx("users", "disconnect", "fitabase", KEPT, "--reason", "study paused")
    assert paused.exit_code == 0, (paused.output, paused.exception)
    assert held(store, "fitabase", ERASED) == {"users": 0, "series_chunks": 0, "measurements": 0}
    readmitted = ohx(
        "users", "readmit", "fitabase", ERASED, "--actor", "dpo", "--reason", "consent renewed"
    )
    assert readmitted.exit_code == 0, (readmitted.output, readmitted.exception)
    line = one_error_line(
        ohx("users", "readmit", "fitabase", ERASED, "--actor", "dpo", "--reason", "again")
    )
    assert "nothing to re-admit" in line

    shown = ohx("audit", "--json")
    assert shown.exit_code == 0, (shown.output, shown.exception)
    entries = json.loads(shown.stdout)["entries"]
    seen = [(e["action"], e["subject"], e["outcome"]) for e in entries]
    erased_subject, kept_subject = subject("fitabase", ERASED), subject("fitabase", KEPT)
    assert seen == [
        ("connect", subject("oura", "acc-9"), "ok"),
        ("import", kept_subject, "ok"),  # one row per person, by id
        ("import", erased_subject, "ok"),
        ("export", kept_subject, "ok"),  # the import published their day: their files
        ("export", erased_subject, "ok"),
        ("erase", erased_subject, "ok"),
        ("import", kept_subject, "ok"),  # the second import: they stayed out
        ("disconnect", kept_subject, "ok"),
        ("readmit", erased_subject, "ok"),
        ("readmit", erased_subject, "refused"),
    ]
    assert all(e["at"].endswith("Z") and e["actor"] for e in entries)
    exports = [e for e in entries if e["action"] == "export"]
    assert all(e["actor"].startswith("ohx import (") for e in exports)
    assert all(
        e["detail"].startswith("FHIR NDJSON ") and " resources" in e["detail"] for e in exports
    )
    for clear in (ERASED, KEPT, "acc-9", "pat-9"):
        assert clear not in shown.stdout
    table = ohx("audit")
    assert table.exit_code == 0 and "readmit" in table.stdout and "consent renewed" in table.stdout
    only = json.loads(ohx("audit", "--action", "erase", "--json").stdout)["entries"]
    assert [e["action"] for e in only] == ["erase"]
    assert len(json.loads(ohx("audit", "--since", "1h", "--json").stdout)["entries"]) == 10
    assert json.loads(ohx("audit", "--since", "2999-01-01", "--json").stdout)["entries"] == []
    assert "--since" in one_error_line(ohx("audit", "--since", "yesterday-ish"))
    assert "--action" in one_error_line(ohx("audit", "--action", "peek"))


def test_audit_rows_are_kept_for_the_retention_setting_and_never_changed(
    store: RecordStore,
) -> None:
    with store.write() as conn:
        conn.execute(
            audit_log.insert().values(
                at_us=now_us() - int(400 * 86400e6), actor="a", action="export", subject="",
                outcome="ok", detail="old",
            )
        )  # fmt: skip
    audit.record(store, actor="a", action="export", detail="new")
    # Append-only in the database itself.
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.write() as conn:
        conn.execute(audit_log.update().values(detail="rewritten"))
    assert sorted(r.detail for r in audit.read(store)) == ["new", "old"]
    report = apply_retention(store, datetime.now(UTC), audit_retention=timedelta(days=365))
    assert report.audit_rows_deleted == 1
    assert [r.detail for r in audit.read(store)] == ["new"]
    assert audit_retention({}) == timedelta(days=2190)
    assert audit_retention({"OHX_AUDIT_RETENTION": "30d"}) == timedelta(days=30)
    for bad in ("30", "0d", "1y", "-5d"):
        with pytest.raises(ValueError, match="OHX_AUDIT_RETENTION"):
            audit_retention({"OHX_AUDIT_RETENTION": bad})


# -- one id rule ---------------------------------------------------------------------------------


def accepted(check, *args, **kwargs) -> bool:
    try:
        check(*args, **kwargs)
    except ValidationError:
        return False
    return True


IDS = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(codec="utf-8"), min_size=120, max_size=140),
    st.text(st.characters(max_codepoint=0x7F), max_size=70),
    st.sampled_from(["", "x" * 128, "x" * 129, "a\x00b", "a\nb", "pat-1", "pat 1", "é"]),
)


@settings(
    max_examples=examples(80),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=IDS)
def test_every_entry_point_accepts_exactly_the_ids_the_rule_accepts(
    sqlite_store: RecordStore, token_key: str, tmp_path: Path, text: str
) -> None:
    export_dir = tmp_path
    user_ok = accepted(check_user_id, text)
    assert accepted(NewEvent, "oura", "evt", text, None, None) == user_ok  # webhooks
    config = HealthSyncConfig(user_id=text or "-", provider="oura")
    if text:
        assert (
            accepted(connect_user, sqlite_store, "oura", text, OAuthTokens("a", "r"), config)
            == user_ok
        )
    # Options first, then `--`: an id that begins with "-" is an id, not an option.
    for command in (["readmit", "--actor", "s", "--reason", "r"], ["delete", "--yes"]):
        result = CliRunner().invoke(cli, ["users", *command, "--", "oura", text])
        assert ("USER_ID=" in result.stderr) == (not user_ok), result.stderr
    if not user_ok:  # `ohx import apple-health --user` refuses it before reading the file
        dummy = export_dir / "export.xml"
        dummy.touch()
        refused = CliRunner().invoke(cli, ["import", "apple-health", str(dummy), f"--user={text}"])
        assert refused.exit_code == 2 and "--user" in refused.stderr, refused.stderr
    patient_ok = accepted(check_patient_id, text)
    assert accepted(sync_config, "oura", fhir_patient_id=text) == patient_ok  # /connect
    relinked = CliRunner().invoke(
        cli,
        ["users", "relink", "oura", "acc", f"--patient={text}", "--actor", "s", "--reason", "r"],
    )
    assert ("--patient=" in relinked.stderr) == (not patient_ok), relinked.stderr


@pytest.fixture(autouse=True)
def _cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`ohx` never looks at the machine's own store."""
    monkeypatch.setenv("OHX_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OHX_DATABASE_URL", raising=False)
    yield


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["audit"], "--since"),
        (["users", "relink"], "--patient"),
        (["users", "readmit"], "--actor"),
        (["users", "delete"], "--yes"),
    ],
)
def test_help_of_the_staff_commands_prints_and_touches_nothing(
    command: list[str], option: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert option in result.output
    assert not (tmp_path / "home").exists()  # no store, no salt file
