"""The `ohx` command line: every command through click's CliRunner on a SQLite store in tmp_path
holding real data (simulated people synced with sync_partition, the real Apple Health export and
Fitabase rows from ../shared/data), and the installed `ohx` entry point in real subprocesses.

Nothing is stubbed: the connect link is followed on a real receiver, doctor asks a real HTTP
server for its CapabilityStatement, `ohx dev` meets a socket bound by the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner, Result

from ohx_dagster.cli import cli, common, dev, queries
from ohx_dagster.config.receiver import WebhookSecrets
from ohx_dagster.core import times
from ohx_dagster.core.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.core.times import to_us
from ohx_dagster.privacy import staff
from ohx_dagster.providers.base import Windowed
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.receiver.app import create_app
from ohx_dagster.receiver.connect import ConnectConfig, connectable
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage import migrate
from ohx_dagster.storage.schema import oauth_tokens, webhook_subscriptions
from ohx_dagster.storage.store import NEEDS_REAUTHORIZATION, RecordStore
from ohx_dagster.sync.fetch import sync_partition

REPO = Path(__file__).resolve().parents[2]
OHX = Path(sys.executable).parent / "ohx"
# The sync ran at NOW; `ohx status` looks at it 90 minutes later.
NOW = datetime.now(UTC).replace(minute=20, second=0, microsecond=0) - timedelta(hours=1)
LATER = NOW + timedelta(minutes=90)
PEOPLE = ["sim-001", "sim-002", "sim-003"]
EPOCH_MICROSECONDS = re.compile(r"(?<![\d.])\d{13,}(?![\d.])")  # 2026 is 1.8e15 us
PUBLIC = "https://ohx.example.org"


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """OHX_HOME in tmp_path (not created), and no other OHX_* or Dagster setting of the
    machine's environment (the FHIR package folder stays: doctor looks it up)."""
    for name in list(os.environ):
        if (name.startswith("OHX_") and name != "OHX_FHIR_PACKAGES") or name == "DAGSTER_HOME":
            monkeypatch.delenv(name)
    folder = tmp_path / "home"
    monkeypatch.setenv("OHX_HOME", str(folder))
    monkeypatch.setenv("COLUMNS", "200")
    return folder


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store file with three simulated people synced for yesterday and today up to NOW, made
    once per module (tests get a copy)."""
    path = tmp_path_factory.mktemp("synced") / "ohx.db"
    record_store = RecordStore(f"sqlite:///{path}", migrate_schema=True)
    source = Windowed(SimulatedSource(3, clock=lambda: NOW), SUPPORTED_TYPES["simulated"])
    sync_partition(source, record_store, [NOW.date() - timedelta(days=1), NOW.date()], now=NOW)
    record_store.dispose()  # the last connection closing checkpoints the WAL into the file
    return path


@pytest.fixture
def store(home: Path, synced: Path) -> Iterator[RecordStore]:
    """The store `ohx` opens by default: the synced people, one refusal, one failure, one
    person needing reauthorization, and a Fitabase person without data."""
    home.mkdir()
    shutil.copyfile(synced, home / "ohx.db")
    record_store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    sim_002 = record_store.user("simulated", "sim-002")
    assert sim_002 is not None
    record_store.record_errors(
        "simulated", "sim-002", {"spo2": "HTTP 403: spo2 not permitted"}, refused=True,
        config=sim_002,
    )  # fmt: skip
    record_store.record_errors("simulated", "sim-001", {"ecg": "ProviderError: read timed out"})
    record_store.set_state("simulated", "sim-003", NEEDS_REAUTHORIZATION, "invalid_grant")
    record_store.add_users([HealthSyncConfig(user_id="1503960366", provider="fitabase")])
    yield record_store
    record_store.dispose()


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch) -> datetime:
    """`ohx status` reads the clock through common.now: fixed, so expectations are exact."""
    monkeypatch.setattr(common, "now", lambda: LATER)
    return LATER


def ohx(*args: str, **env: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env or None, catch_exceptions=True)


def one_error_line(result: Result) -> str:
    """The error of a failed command: one line on stderr, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ohx: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def no_epoch_microseconds(text: str) -> None:
    assert not EPOCH_MICROSECONDS.search(text), EPOCH_MICROSECONDS.search(text)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- --help and errors -----------------------------------------------------------------------------

COMMANDS = [
    [],
    ["status"],
    ["users"],
    ["users", "list"],
    ["users", "show"],
    ["users", "disconnect"],
    ["users", "delete"],
    ["connect"],
    ["import"],
    ["import", "apple-health"],
    ["import", "fitabase"],
    ["doctor"],
    ["db"],
    ["db", "upgrade"],
    ["db", "current"],
    ["fhir", "fetch-packages"],
    ["dev"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "ohx")
def test_help_prints_and_does_nothing_else(home: Path, command: list[str]) -> None:
    result = ohx(*command, "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
    assert not home.exists()  # no store, no Dagster home, no output folder


def test_an_error_is_one_line_and_debug_shows_the_traceback(home: Path) -> None:
    line = one_error_line(ohx("status"))
    assert f"no record store at {home / 'ohx.db'}" in line and "ohx db upgrade" in line
    assert not home.exists()
    debug = ohx("--debug", "status")
    assert isinstance(debug.exception, common.NoDatabase)


def test_a_bad_database_url_is_one_line_naming_the_variable(home: Path) -> None:
    line = one_error_line(ohx("status", OHX_DATABASE_URL="mysql://db.example.org/ohx"))
    assert "OHX_DATABASE_URL" in line and "sqlite:///" in line
    unreachable = "postgresql://ohx:s3cret@127.0.0.1:1/ohx"
    line = one_error_line(ohx("users", "list", OHX_DATABASE_URL=unreachable))
    assert "OHX_DATABASE_URL" in line and "127.0.0.1" in line and "s3cret" not in line


def test_durations_for_people_and_machines() -> None:
    assert [times.words(timedelta(seconds=s)) for s in (0, 59, 60, 3599, 5400, 7200, 200_000)] == [
        "0 s", "59 s", "1 min", "59 min", "1 h 30 min", "2 h", "2 d 7 h",
    ]  # fmt: skip
    assert times.iso_duration(timedelta(0)) == "PT0S"
    assert times.iso_duration(timedelta(days=3, minutes=5, seconds=1)) == "P3DT5M1S"
    assert times.iso_duration(timedelta(hours=1, minutes=30)) == "PT1H30M"


# -- ohx status ------------------------------------------------------------------------------------


def test_status_json_per_person_and_type(store: RecordStore, later: datetime) -> None:
    result = ohx("status", "--json")
    assert result.exit_code == 0, result.output
    no_epoch_microseconds(result.stdout)
    data = json.loads(result.stdout)
    start = later.replace(minute=0) - timedelta(hours=23)
    assert data["as_of"] == times.iso(later)
    assert data["records_since"] == times.iso(start)
    rows = {(r["provider"], r["user_id"], r["data_type"]): r for r in data["statuses"]}
    # Records of the 24 h window, counted independently from the samples themselves.
    held = store.read_records("simulated", DateRange(start, start + timedelta(hours=24)))
    expected = held.groupby(["user_id", "data_type"]).size().to_dict()
    for user in PEOPLE:
        for kind in SUPPORTED_TYPES["simulated"]:
            row = rows["simulated", user, kind.value]
            assert row["covered_until"] == times.iso(NOW)
            assert row["lag"] == "PT1H30M"
            assert row["records_24h"] == expected.get((user, kind.value), 0)
    assert sum(r["records_24h"] for r in data["statuses"]) == len(held) > 0
    assert rows["simulated", "sim-001", "heart_rate"]["state"] == "active"
    failed = rows["simulated", "sim-001", "ecg"]
    assert failed["last_error"] == "ProviderError: read timed out"
    assert datetime.fromisoformat(failed["last_error_at"]) > NOW - timedelta(hours=1)
    refused = rows["simulated", "sim-002", "spo2"]
    assert (refused["state"], refused["state_reason"]) == (
        "refused",
        "HTTP 403: spo2 not permitted",
    )
    assert rows["simulated", "sim-002", "steps"]["state"] == "active"
    assert {r["state"] for k, r in rows.items() if k[1] == "sim-003"} == {"needs reauthorization"}
    fitabase = {k[2]: r for k, r in rows.items() if k[0] == "fitabase"}
    assert {t for t, r in fitabase.items() if r["state"] == "active"} == {
        t.value for t in SUPPORTED_TYPES["fitabase"]
    }
    assert {r["state"] for t, r in fitabase.items() if r["state"] != "active"} == {"not supported"}
    assert all(r["covered_until"] is None and r["lag"] is None for r in fitabase.values())


def test_status_table_in_words(store: RecordStore, later: datetime) -> None:
    """--all: the rows per person and type, in words."""
    result = ohx("status", "--all")
    assert result.exit_code == 0, result.output
    text = result.stdout
    no_epoch_microseconds(text)
    for phrase in (
        "refused: HTTP 403: spo2 not permitted",
        "needs reauthorization",
        "not supported",
        "1 h 30 min",
        times.iso(NOW),
        "ProviderError: read timed out",
        "never",
    ):
        assert phrase in text, phrase


def summary_rows(lines: list[str]) -> dict[tuple[str, str], str]:
    return {tuple(line.split()[:2]): line for line in lines if line.startswith(("sim", "fit"))}


def test_status_summarises_per_provider_and_type_worst_first(
    store: RecordStore, later: datetime
) -> None:
    result = ohx("status")
    assert result.exit_code == 0, result.output
    no_epoch_microseconds(result.stdout)
    lines = result.stdout.splitlines()
    assert lines[0] == f"Sync status at {times.iso(LATER)}; records since " + times.iso(
        LATER.replace(minute=0) - timedelta(hours=23)
    )
    assert " ".join(lines[1].split()) == "provider type people max lag records last error"
    rows = summary_rows(lines)
    simulated = {t.value for t in SUPPORTED_TYPES["simulated"]}
    fitabase = {t.value for t in SUPPORTED_TYPES["fitabase"]}
    # One line per provider and supported type; the unsupported ones are one line at the end.
    assert set(rows) == {("simulated", t) for t in simulated} | {("fitabase", t) for t in fitabase}
    assert len(lines) == 2 + len(rows) + 2, lines  # title, header, rows, unsupported, hint
    unsupported = [t.value for t in HealthDataType if t.value not in fitabase]
    assert lines[-2] == f"not supported by fitabase: {', '.join(unsupported)}"
    assert "--person" in lines[-1] and "--all" in lines[-1] and "--json" in lines[-1]
    # The three people's states per type, counted, worst first.
    spo2 = rows["simulated", "spo2"]
    assert "1 needs reauthorization, 1 refused (HTTP 403: spo2 not permitted), 1 active" in spo2
    ecg = rows["simulated", "ecg"]
    assert "1 needs reauthorization, 1 failing, 1 active" in ecg
    assert "ProviderError: read timed out" in ecg and "1 h 30 min" in ecg
    assert "1 needs reauthorization, 2 active" in rows["simulated", "heart_rate"]
    # Every simulated type has someone to reauthorize (worse than the fitabase person's active).
    assert list(rows)[-len(fitabase) :] == [key for key in rows if key[0] == "fitabase"]
    assert rows["fitabase", "steps"].split()[2:] == ["1", "active", "0"]  # no lag: nothing yet
    # The counts and records add up to the rows per person (--json).
    data = json.loads(ohx("status", "--json").stdout)
    per_type = {(s["provider"], s["data_type"]): s for s in data["summary"]}
    assert [k for k, s in per_type.items() if s["worst"] != "not supported"] == list(rows)
    for (provider, kind), summary in per_type.items():
        members = [
            r for r in data["statuses"] if (r["provider"], r["data_type"]) == (provider, kind)
        ]
        assert sum(summary["people"].values()) == len(members)
        assert summary["records_24h"] == sum(r["records_24h"] for r in members)
        if (provider, kind) in rows:
            assert f"{summary['records_24h']:,}" in rows[provider, kind]
    assert per_type["simulated", "heart_rate"]["max_lag"] == "PT1H30M"
    assert per_type["simulated", "ecg"]["people"] == {
        "needs reauthorization": 1, "failing": 1, "active": 1,
    }  # fmt: skip


def test_status_summary_behind_comes_first(
    store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two days without a sync: the active people are "behind" (OHX_MAX_SYNC_LAG), and their
    types come first; the export's people keep no lag."""
    monkeypatch.setattr(common, "now", lambda: LATER + timedelta(days=2))
    rows = summary_rows(ohx("status", OHX_MAX_SYNC_LAG="simulated=6h").stdout.splitlines())
    assert next(iter(rows))[0] == "simulated"
    assert "2 behind, 1 needs reauthorization" in rows["simulated", "heart_rate"], rows
    assert "1 behind, 1 needs reauthorization, 1 refused" in rows["simulated", "spo2"], rows
    assert "1 active" in rows["fitabase", "heart_rate"]


def test_status_fits_a_terminal_whatever_the_people(
    store: RecordStore, later: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """500 more people: the summary has as many lines as before, each within the terminal's
    80 columns; --all has a line per person and type."""
    monkeypatch.setenv("COLUMNS", "80")
    before = ohx("status").stdout.splitlines()
    store.add_users([HealthSyncConfig(user_id=f"p{n:03}", provider="fitabase") for n in range(500)])
    after = ohx("status").stdout.splitlines()
    # A line per provider and type, a title, a header and a few lines of notes: not per person.
    assert len(after) == len(before) <= len(summary_rows(after)) + 6, after
    assert all(len(line) <= 80 for line in after), after
    assert "501 active" in summary_rows(after)["fitabase", "heart_rate"]
    every = ohx("status", "--all", "--provider", "fitabase").stdout.splitlines()
    assert len(every) > 501 * len(SUPPORTED_TYPES["fitabase"])


def test_status_of_one_person(store: RecordStore, later: datetime) -> None:
    result = ohx("status", "--person", "sim-002")
    assert result.exit_code == 0, result.output
    assert "refused: HTTP 403: spo2 not permitted" in result.stdout
    assert "sim-002" in result.stdout and "sim-001" not in result.stdout
    data = json.loads(ohx("status", "--person", "sim-002", "--json").stdout)
    assert {r["user_id"] for r in data["statuses"]} == {"sim-002"}
    assert len(data["statuses"]) == len(SUPPORTED_TYPES["simulated"])
    unknown = ohx("status", "--person", "nobody")
    assert unknown.exit_code == 2 and unknown.stdout == ""
    assert unknown.stderr.count("\n") == 1 and "--person" in unknown.stderr
    assert "'nobody'" in unknown.stderr and "ohx users list" in unknown.stderr


def test_status_of_one_provider(store: RecordStore, later: datetime) -> None:
    data = json.loads(ohx("status", "--provider", "fitabase", "--json").stdout)
    assert {r["provider"] for r in data["statuses"]} == {"fitabase"}
    wrong = ohx("status", "--provider", "fitbit")
    assert wrong.exit_code == 2 and "--provider" in wrong.stderr


def test_the_24h_counts_range_over_the_time_indexes(store: RecordStore) -> None:
    """Reading efficiently: SQLite answers both counts from the (provider, time) indexes, so
    their cost follows the last day's rows, not the history."""
    with store.read() as conn:
        for query, index in (
            (queries.series_count_query("simulated", 0, 1), "ix_series_chunks_provider_hour_us"),
            (queries.measurement_count_query("simulated", 0, 1), "ix_measurements_provider_ts_us"),
        ):
            sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
            plan = " ".join(r[3] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
            assert f"USING INDEX {index}" in plan, plan


# -- ohx users -------------------------------------------------------------------------------------


def test_users_list(store: RecordStore) -> None:
    data = json.loads(ohx("users", "list", "--json").stdout)
    people = {(p["provider"], p["user_id"]): p for p in data["people"]}
    assert set(people) == {("simulated", u) for u in PEOPLE} | {("fitabase", "1503960366")}
    assert people["simulated", "sim-003"]["state"] == "needs reauthorization"
    assert people["simulated", "sim-003"]["state_reason"] == "invalid_grant"
    assert people["simulated", "sim-001"]["timezone"] == "Europe/Amsterdam"
    only = json.loads(ohx("users", "list", "--provider", "fitabase", "--json").stdout)
    assert [p["user_id"] for p in only["people"]] == ["1503960366"]
    table = ohx("users", "list").stdout
    assert "sim-002" in table and "needs reauthorization: invalid_grant" in table
    no_epoch_microseconds(table)


def test_users_show_one_person_in_iso(store: RecordStore) -> None:
    now_us = to_us(NOW)
    with store.write() as conn:
        conn.execute(
            oauth_tokens.insert().values(
                provider="simulated", user_id="sim-002", ciphertext="gAAAA-SECRET-CIPHERTEXT",
                scope="heartrate", expires_at_us=now_us + 3_600_000_000, updated_at_us=now_us,
            )
        )  # fmt: skip
        conn.execute(
            webhook_subscriptions.insert(),
            [
                {"provider": "simulated", "user_id": "sim-002", "target": "appli=4",
                 "status": "active", "expires_at_us": None, "updated_at_us": now_us,
                 "detail": ""},
                {"provider": "simulated", "user_id": "", "target": "update:sleep",
                 "status": "active", "expires_at_us": now_us + 86_400_000_000,
                 "updated_at_us": now_us, "detail": "subscription 7"},
            ],
        )  # fmt: skip
    result = ohx("users", "show", "simulated", "sim-002", "--json")
    assert result.exit_code == 0, result.output
    no_epoch_microseconds(result.stdout)
    assert "SECRET" not in result.stdout
    detail = json.loads(result.stdout)
    assert detail["config"]["timezone"] == "America/New_York"
    stored = store.coverage("simulated", ["sim-002"])
    assert detail["coverage"]["heart_rate"] == [
        [times.iso(s), times.iso(e)] for s, e in stored["sim-002", "heart_rate"]
    ]
    assert detail["coverage"]["heart_rate"][-1][1] == times.iso(NOW)
    assert detail["refusals"] == [
        {"data_type": "spo2", "reason": "HTTP 403: spo2 not permitted",
         "since": detail["refusals"][0]["since"], "applies": True}
    ]  # fmt: skip
    assert detail["oauth_tokens"] == {
        "scope": "heartrate",
        "access_token_expires": times.iso(NOW + timedelta(hours=1)),
        "updated": times.iso(NOW),
    }
    targets = {(s["target"], s["scope"], s["expires"]) for s in detail["subscriptions"]}
    assert targets == {
        ("appli=4", "person", None),
        ("update:sleep", "app-wide", times.iso(NOW + timedelta(days=1))),
    }
    table = ohx("users", "show", "simulated", "sim-002")
    assert table.exit_code == 0, table.output
    assert "America/New_York" in table.stdout and "update:sleep" in table.stdout
    no_epoch_microseconds(table.stdout)
    line = one_error_line(ohx("users", "show", "simulated", "sim-404"))
    assert "sim-404" in line and "ohx users list" in line


def test_disconnect_keeps_the_data(store: RecordStore, later: datetime) -> None:
    records = store.count_records("simulated")
    result = ohx("users", "disconnect", "simulated", "sim-001", "--reason", "left the study")
    assert result.exit_code == 0, result.output
    assert "kept" in result.stdout
    person = store.person("simulated", "sim-001")
    assert person is not None and not person.connected
    assert (person.state, person.state_reason) == ("disconnected", "left the study")
    assert store.count_records("simulated") == records
    assert "sim-001" not in [c.user_id for c in store.active_users("simulated")]
    again = ohx("users", "disconnect", "simulated", "sim-001")
    assert again.exit_code == 0 and "already disconnected" in again.stdout
    rows = json.loads(ohx("status", "--json").stdout)["statuses"]
    assert {r["state"] for r in rows if r["user_id"] == "sim-001"} == {"disconnected"}


def test_delete_needs_yes_and_erases(store: RecordStore, monkeypatch: pytest.MonkeyPatch) -> None:
    refused = ohx("users", "delete", "simulated", "sim-002")
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    assert store.person("simulated", "sim-002") is not None
    # Erasure absent from the installation: one line, nothing deleted.
    monkeypatch.setitem(sys.modules, "ohx_dagster.privacy.erasure", None)
    line = one_error_line(ohx("users", "delete", "simulated", "sim-002", "--yes"))
    assert "ohx_dagster.privacy.erasure" in line and "nothing was deleted" in line
    assert store.person("simulated", "sim-002") is not None
    monkeypatch.delitem(sys.modules, "ohx_dagster.privacy.erasure")
    erased = ohx("users", "delete", "simulated", "sim-002", "--yes")
    assert erased.exit_code == 0, (erased.output, erased.exception)
    assert "simulated sim-002 erased" in erased.stdout
    from ohx_dagster.privacy.erasure import remaining_rows

    assert store.person("simulated", "sim-002") is None
    assert remaining_rows(store, "simulated", "sim-002") == {}
    assert store.person("simulated", "sim-001") is not None
    line = one_error_line(ohx("users", "delete", "simulated", "sim-002", "--yes"))
    assert "sim-002" in line


# -- ohx connect -----------------------------------------------------------------------------------


def test_connect_prints_the_receivers_link(
    store: RecordStore, monkeypatch: pytest.MonkeyPatch, token_key: str
) -> None:
    line = one_error_line(ohx("connect", "oura", "--patient", "pat-1"))
    assert "OHX_OAUTH_REDIRECT_BASE" in line
    env = {
        "OHX_OAUTH_REDIRECT_BASE": PUBLIC,
        "OHX_OURA_CLIENT_ID": "oura-client",
        "OHX_OURA_CLIENT_SECRET": "oura-client-secret",
        "OHX_OURA_AUTHORIZE_URL": "https://cloud.ouraring.example/oauth/authorize",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert "--with-token" not in ohx("connect", "--help").output  # no token in a link any more
    token = staff.add(store, "nurse.a", actor="test")
    monkeypatch.setenv("OHX_STAFF_TOKEN", token)
    args = [
        *("connect", "oura", "--patient", "pat-1", "--timezone", "Europe/Amsterdam"),
        *("--frequency", "realtime", "--aggregation", "daily", "--lookback-days", "90"),
    ]
    plain = ohx(*args)
    assert plain.exit_code == 0, plain.output
    link = next(w for w in plain.stdout.split() if w.startswith(f"{PUBLIC}/connect/"))
    assert token not in plain.stdout
    assert '-H "Authorization: Bearer $OHX_STAFF_TOKEN"' in plain.stdout
    assert parse_qs(urlsplit(link).query) == {
        "patient": ["pat-1"], "timezone": ["Europe/Amsterdam"], "frequency": ["realtime"],
        "aggregation": ["daily"], "lookback_days": ["90"],
    }  # fmt: skip
    # The link starts the flow on a real receiver configured like production, with the staff
    # member's token in the header the printed curl sends.
    config = ConnectConfig(connectable(env))
    with (
        serve_in_thread(create_app(store, WebhookSecrets(), connect=config)) as url,
        httpx.Client(timeout=10) as http,
    ):
        started = http.get(link.replace(PUBLIC, url), headers={"Authorization": f"Bearer {token}"})
        assert started.status_code == 302, started.text
        location = started.headers["location"]
        assert location.startswith(env["OHX_OURA_AUTHORIZE_URL"])
        assert parse_qs(urlsplit(location).query)["client_id"] == ["oura-client"]
        assert http.get(link.replace(PUBLIC, url)).status_code == 401


def test_connect_names_a_bad_argument(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OHX_OAUTH_REDIRECT_BASE", PUBLIC)
    assert "patient=" in one_error_line(ohx("connect", "oura", "--patient", "no spaces"))
    zone = one_error_line(ohx("connect", "oura", "--patient", "p1", "--timezone", "Mars/Base"))
    assert "timezone='Mars/Base'" in zone
    unknown = ohx("connect", "fitbit", "--patient", "p1")
    assert unknown.exit_code == 2 and "oura" in unknown.stderr
    lookback = ohx("connect", "oura", "--patient", "p1", "--lookback-days", "0")
    assert lookback.exit_code == 2 and "--lookback-days" in lookback.stderr
    assert not home.exists()


# -- ohx import ------------------------------------------------------------------------------------


def test_import_apple_health(home: Path, shared_data: Path, tmp_path: Path) -> None:
    export = shared_data / "apple-health" / "export.xml"
    result = ohx("import", "apple-health", str(export), "--verbose")
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.stdout
    for phrase in (
        "person apple-health",
        "Zone: Asia/Jerusalem",
        "2017-01-22 .. 2017-11-06",
        # apple_health is not in OHX_SOURCES: no Dagster run would publish it; the import did.
        "FHIR: 210 days (2017-01-22 .. 2017-11-06) published by this import to "
        f"{home / 'fhir'}/<day>/apple_health/",
        "'apple_health' is not in the running Dagster's OHX_SOURCES (simulated)",
    ):
        assert phrase in out, phrase
    assert "republish_sensor" not in out
    # Retention counts back from the export's newest record: none of its days expires.
    assert "Retention" not in out and "daily_retention" not in out
    # --verbose: the records and the skipped elements as tables, kind by kind.
    for pattern in (
        r"heart_rate\s+│\s+2,177\s",
        r"steps\s+│\s+3,980\s",
        r"weight\s+│\s+40\s",
        r"blood_glucose\s+│\s+35\s",
        r"sleep\s+│\s+87\s",
        r"total\s+│\s+6,380\s",
        r"SleepAnalysis \(ends as it starts\)\s+│\s+2 │ a sleep record that ends as it starts",
        r"HKQuantityTypeIdentifierDistanceWalkingRunning\s+│\s+3,556 │ not a data type this",
        r"workout\s+│\s+61\s",
    ):
        assert re.search(pattern, out), pattern
    assert "│ ExportDate " not in out and "│ Me " not in out  # the export's own metadata
    store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    everything = DateRange(datetime(2017, 1, 1, tzinfo=UTC), datetime(2018, 1, 1, tzinfo=UTC))
    assert len(store.read_records("apple_health", everything)) == 6380
    assert store.unpublished_days("apple_health") == {}  # every day published by the import
    assert (home / "fhir" / "2017-11-06" / "apple_health" / "manifest.json").is_file()
    # The same file again changes nothing; without --verbose, the summary in a few lines.
    again = ohx("import", "apple-health", str(export))
    assert again.exit_code == 0, again.output
    assert "0 days changed" in again.stdout and "Nothing changed" in again.stdout
    assert (
        "Records: 6,380 (blood_glucose 35 of which 2 implausible (kept), heart_rate 2,177, "
        "sleep 87, steps 3,980, weight 40, workout 61)." in again.stdout
    )
    assert "this product does not sync: --verbose lists them and why." in again.stdout
    assert "│" not in again.stdout and len(again.stdout.splitlines()) <= 8
    # The zip the Health app shares, for another person in another zone.
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(export, "apple_health_export/export.xml")
    other = ohx("import", "apple-health", str(archive), "--user", "bob", "--timezone", "UTC")
    assert other.exit_code == 0, other.output
    person = store.person("apple_health", "bob")
    assert person is not None and person.config.timezone == "UTC"
    assert len(store.read_records("apple_health", everything, user_ids=["bob"])) == 6380
    store.dispose()


def test_import_apple_health_refuses_what_is_not_an_export(home: Path, tmp_path: Path) -> None:
    text = tmp_path / "export.xml"
    text.write_text("not xml at all")
    assert "not an Apple Health export.xml" in one_error_line(
        ohx("import", "apple-health", str(text))
    )
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("IMG_0001.txt", "hello")
    assert "export.xml" in one_error_line(ohx("import", "apple-health", str(archive)))
    missing = ohx("import", "apple-health", str(tmp_path / "nowhere.zip"))
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


@pytest.fixture
def fitabase_subset(fitabase_dir: Path, tmp_path: Path) -> Path:
    """Real Fitabase rows of two people (the export's heart-rate person and a person with
    weight logs), the other files of the export cut to them too: fast, and still the real
    layout and values."""
    people = {"2022484408", "1503960366"}
    folder = tmp_path / "fitabase"
    folder.mkdir()
    for path in fitabase_dir.glob("*.csv"):
        table = pd.read_csv(path, dtype={"Id": str})
        table[table["Id"].isin(people)].to_csv(folder / path.name, index=False)
    return folder


def test_import_fitabase(
    home: Path, fitabase_subset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Dagster's settings here name the source, but its partitions start in 2025: no run would
    # publish the 2016 days, so the import does, and says why.
    monkeypatch.setenv("OHX_SOURCES", "simulated,fitabase")
    monkeypatch.setenv("OHX_FITABASE_DIR", str(fitabase_subset))
    monkeypatch.setenv("OHX_FITABASE_TZ", "UTC")
    result = ohx("import", "fitabase", str(fitabase_subset), "--timezone", "America/Chicago", "-v")
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.stdout
    read = {
        name: pd.read_csv(fitabase_subset / name)
        for name in ("heartrate_seconds_merged.csv", "hourlySteps_merged.csv",
                     "weightLogInfo_merged.csv", "dailyActivity_merged.csv")
    }  # fmt: skip
    for kind, name in (
        ("heart_rate", "heartrate_seconds_merged.csv"),
        ("steps", "hourlySteps_merged.csv"),
        ("weight", "weightLogInfo_merged.csv"),
    ):
        assert re.search(rf"{kind}\s+│\s+{len(read[name]):,}\s", out), kind
    assert re.search(
        rf"dailyActivity_merged.csv\s+│\s+{len(read['dailyActivity_merged.csv']):,} │ "
        "daily totals: its TotalSteps repeats",
        out,
    )
    assert "hourlyCalories_merged.csv" in out and "2 people" in out
    store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    assert store.unpublished_days("fitabase") == {}
    days = sorted(p.name for p in (home / "fhir").iterdir())
    assert f"FHIR: {len(days)} days ({days[0]} .. {days[-1]}) published by this import" in out
    assert "outside the running Dagster's partitions (OHX_PARTITIONS_START=2025-01-01" in out
    assert "republish_sensor" not in out
    person = store.person("fitabase", "2022484408")
    assert person is not None and person.config.timezone == "America/Chicago"
    expected = sum(len(read[n]) for n in list(read)[:3])
    assert store.count_records("fitabase") == expected
    store.dispose()


def test_import_fitabase_refuses_a_folder_without_an_export(home: Path, tmp_path: Path) -> None:
    empty = tmp_path / "downloads"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    line = one_error_line(ohx("import", "fitabase", str(empty), "--timezone", "UTC"))
    assert str(empty) in line and "heartrate_seconds_merged.csv" in line
    assert not home.exists()
    no_zone = ohx("import", "fitabase", str(empty))
    assert no_zone.exit_code == 2 and "--timezone" in no_zone.stderr


# -- ohx doctor, db, fhir --------------------------------------------------------------------------


@pytest.fixture
def fhir_metadata() -> Iterator[str]:
    """A real HTTP server answering GET /fhir/metadata with an R5 CapabilityStatement."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/fhir/metadata"
            body = json.dumps(
                {"resourceType": "CapabilityStatement", "fhirVersion": "5.0.0",
                 "software": {"name": "test server"}}
            ).encode()  # fmt: skip
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    server.shutdown()
    server.server_close()


def test_doctor_all_ok(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fhir_metadata: str
) -> None:
    assert ohx("db", "upgrade").exit_code == 0
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copyfile(REPO / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("OHX_FHIR_SERVER_URL", fhir_metadata)
    result = ohx("doctor")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    status = {line.split(":")[0][5:]: line[:4].strip() for line in lines}
    assert status == {
        "configuration": "OK", "database": "OK", "dagster instance": "OK",
        "FHIR packages": "OK", "export data": "SKIP", "provider OAuth": "SKIP", "token key": "SKIP",
        "webhook secrets": "OK", "connect routes": "SKIP", "FHIR server": "OK",
        "FHIR output": "OK",
    }, lines  # fmt: skip
    assert "FHIR 5.0.0 (test server)" in result.stdout
    assert f"FHIR output: {home / 'fhir'} does not exist yet; {home} lets it be" in result.stdout
    (home / "fhir").mkdir()
    again = ohx("doctor")
    assert f"OK   FHIR output: {home / 'fhir'} is writable" in again.stdout
    assert not list((home / "fhir").iterdir())  # the probe is gone


def test_doctor_fails_with_fixes(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OHX_SOURCES", "simulated,oura")
    monkeypatch.setenv("OHX_FHIR_PACKAGES", str(tmp_path / "no-packages"))
    monkeypatch.setenv("OHX_FHIR_SERVER_URL", f"http://127.0.0.1:{free_port()}/fhir")
    monkeypatch.setenv("OHX_WITHINGS_CALLBACK_TOKEN", "short")
    result = ohx("doctor")
    assert result.exit_code == 1, result.output
    lines = {line.split(":")[0][5:]: line for line in result.stdout.strip().splitlines()}
    expected = {
        "configuration": "OHX_OURA_CLIENT_ID",
        "database": "ohx db upgrade",
        "dagster instance": "DAGSTER_HOME",
        "FHIR packages": "ohx fhir fetch-packages",
        "oura OAuth": "OHX_OURA_CLIENT_SECRET",
        "token key": "OHX_TOKEN_KEY",
        "webhook secrets": "OHX_WITHINGS_CALLBACK_TOKEN",
        "FHIR server": "OHX_FHIR_SERVER_URL",
    }
    for name, named in expected.items():
        assert lines[name].startswith("FAIL") and "-> fix: " in lines[name], lines[name]
        assert named in lines[name], (name, lines[name])
    assert lines["FHIR output"].startswith("OK")
    assert not (home / "ohx.db").exists()  # doctor creates no database


def test_doctor_reports_a_database_behind_the_code(home: Path) -> None:
    home.mkdir()
    (home / "ohx.db").touch()  # an empty database: no schema revision
    result = ohx("doctor")
    line = next(x for x in result.stdout.splitlines() if x.startswith("FAIL database"))
    assert f"none (empty), this release needs {migrate.head()}" in line
    assert "run `ohx db upgrade`" in line


def test_db_upgrade_and_current(home: Path) -> None:
    assert "ohx db upgrade" in one_error_line(ohx("db", "current"))
    head = migrate.head()
    first = ohx("db", "upgrade")
    assert first.exit_code == 0, first.output
    assert first.stdout.strip().endswith(f"schema revision none (empty) -> {head}")
    assert f"already at schema revision {head}" in ohx("db", "upgrade").stdout
    assert ohx("db", "current").stdout.strip().endswith(f"schema revision {head} (head)")


def test_fhir_fetch_packages(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ohx_dagster.fhir.validation.packages import SPECS

    dest = tmp_path / "packages"
    for spec in SPECS:
        name, version = spec.rsplit("@", 1)
        (dest / f"{name}-{version}").mkdir(parents=True)
        (dest / f"{name}-{version}" / ".complete").touch()
    kept = ohx("fhir", "fetch-packages", "--dest", str(dest))
    assert kept.exit_code == 0 and f"3 of 3 packages were already in {dest}" in kept.stdout
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    monkeypatch.setenv("PATH", str(empty_path))  # no npm
    line = one_error_line(ohx("fhir", "fetch-packages", "--dest", str(tmp_path / "new")))
    assert "npm is needed" in line


# -- ohx dev and the seed --------------------------------------------------------------------------


def test_dev_stops_at_a_taken_port(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("OHX_UI_PORT", str(free_port()))
        line = one_error_line(ohx("dev", OHX_WEBHOOK_PORT=str(port)))
        assert f"port {port} (OHX_WEBHOOK_PORT, the webhook receiver) is taken" in line
        line = one_error_line(ohx("dev", OHX_UI_PORT=str(port)))
        assert f"port {port} (OHX_UI_PORT, the Dagster UI) is taken" in line
    assert "OHX_UI_PORT='web'" in one_error_line(ohx("dev", OHX_UI_PORT="web"))
    same = one_error_line(ohx("dev", OHX_UI_PORT="4000", OHX_WEBHOOK_PORT="4000"))
    assert "different ports" in same
    assert not home.exists()


def test_dev_ships_the_checkouts_instance_files() -> None:
    """An installed wheel has no deploy/ or workspace.yaml: `ohx dev` writes its copies."""
    assert yaml.safe_load(dev.DAGSTER_YAML) == yaml.safe_load(
        (REPO / "deploy" / "dagster.yaml").read_text()
    )
    assert yaml.safe_load(dev.WORKSPACE_YAML) == yaml.safe_load(
        (REPO / "workspace.yaml").read_text()
    )


def test_seed_help_does_not_seed(home: Path) -> None:
    env = {**os.environ, "OHX_HOME": str(home)}
    helped = subprocess.run(
        [sys.executable, "-m", "ohx_dagster.cli.seed", "--help"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert helped.returncode == 0 and helped.stdout.startswith(
        "usage: python -m ohx_dagster.cli.seed"
    )
    assert not home.exists()
    from ohx_dagster.cli.seed import seed
    from ohx_dagster.config.settings import Settings

    assert seed(Settings.from_env()).startswith("simulated users: 3 newly connected")
    assert seed(Settings.from_env()).startswith("simulated users: 0 newly connected")


# -- the installed entry point ---------------------------------------------------------------------


def run_ohx(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    assert OHX.is_file(), f"{OHX} is missing: run scripts/bootstrap (pip install -e .)"
    return subprocess.run(
        [str(OHX), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_installed_ohx(store: RecordStore, home: Path, tmp_path: Path) -> None:
    env = dict(os.environ)
    helped = run_ohx("--help", env=env)
    assert helped.returncode == 0 and "status" in helped.stdout and "doctor" in helped.stdout
    status = run_ohx("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    no_epoch_microseconds(status.stdout)
    rows = json.loads(status.stdout)["statuses"]
    assert {r["user_id"] for r in rows} == {*PEOPLE, "1503960366"}
    assert all(r["covered_until"] in (None, times.iso(NOW)) for r in rows), (
        "ISO times to the second"
    )
    bad = run_ohx("status", env={**env, "OHX_DATABASE_URL": "postgresql://ohx@127.0.0.1:1/ohx"})
    assert bad.returncode == 1 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert bad.stderr.startswith("ohx: error: database postgresql://ohx@127.0.0.1:1/ohx")
    assert "OHX_DATABASE_URL" in bad.stderr


def test_installed_ohx_dev_fails_fast_on_a_taken_port(home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "OHX_WEBHOOK_PORT": str(port), "OHX_UI_PORT": str(free_port())}
        started = time.monotonic()
        done = run_ohx("dev", env=env, timeout=30)
        elapsed = time.monotonic() - started
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"ohx: error: port {port} (OHX_WEBHOOK_PORT, the webhook receiver) is taken on "
        "127.0.0.1: stop what listens there, or set OHX_WEBHOOK_PORT to a free port"
    ]
    assert elapsed < 10 and not home.exists()
