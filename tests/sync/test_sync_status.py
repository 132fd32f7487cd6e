"""Sync status as the UI shows it (assets/sync_status.py over ohx_dagster/sync/status.py), and the
errors a run gives for a partition or a run tag that does not exist.

Real parts: simulated people synced into a SQLite and a PostgreSQL store, the sync_status job run
in process on a Dagster instance, `ohx status --json` through click's runner on the same store.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from click.testing import CliRunner

from assets.metadata import hourly_plot
from assets.partitions import health_partitions, outside_partitions
from ohx_dagster.cli import cli
from ohx_dagster.config.settings import Settings, parse_per_source
from ohx_dagster.core.times import to_us
from ohx_dagster.definitions import build_definitions
from ohx_dagster.privacy.subjects import erasure_salt, short, subject_hash
from ohx_dagster.providers.base import Windowed
from ohx_dagster.providers.registry import KNOWN_SOURCES, SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.storage.schema import users
from ohx_dagster.storage.store import NEEDS_REAUTHORIZATION, RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.run_request import KNOWN_TAGS
from ohx_dagster.sync.status import (
    LagLimit,
    TypeStatus,
    is_behind,
    records_per_hour,
    table_rows,
    window_start,
    words,
)

NOW = datetime.now(UTC).replace(microsecond=0)
SYNCED = NOW - timedelta(minutes=40)  # the sync ran then: every type is 40 minutes behind
EPOCH_MICROSECONDS = re.compile(r"(?<![\d.])\d{13,}(?![\d.])")
# A markdown/HTML tag outside a code span: the UI's markdown drops it ("OHX_FHIR_DIR///").
BARE_TAG = re.compile(r"<[A-Za-z][^<>`]*>")
TYPES = SUPPORTED_TYPES["simulated"]


@pytest.fixture
def synced(store: RecordStore) -> RecordStore:
    """Three simulated people (realtime, hourly, daily), connected the day before, synced up
    to SYNCED; sim-003 then
    needs reauthorization, sim-001's steps failed after its last success."""
    source = Windowed(SimulatedSource(3, clock=lambda: SYNCED), TYPES)
    # The day before too: coverage reaches a day back whatever the hour (just after midnight UTC
    # today's partition alone would hold minutes).
    sync_partition(source, store, [SYNCED.date() - timedelta(days=1), SYNCED.date()], now=SYNCED)
    with store.write() as conn:  # they connected a day before that sync
        conn.execute(users.update().values(connected_at_us=to_us(SYNCED - timedelta(days=1))))
    store.record_errors("simulated", "sim-001", {"steps": "ProviderError: read timed out"})
    store.set_state("simulated", "sim-003", NEEDS_REAUTHORIZATION, "invalid_grant")
    return store


def status(**kw) -> TypeStatus:
    base = {
        "provider": "simulated",
        "user_id": "p",
        "patient": "p",
        "data_type": "steps",
        "state": "active",
        "state_reason": None,
        "covered_until": NOW - timedelta(hours=1),
        "last_success": None,
        "last_error": None,
        "last_error_at": None,
        "records_24h": 0,
        "sync_frequency": "hourly",
        "connected_at": NOW - timedelta(days=3),
    }
    return TypeStatus(**{**base, **kw})


# -- the lag rule ----------------------------------------------------------------------------------


def test_the_default_lag_is_twice_the_sync_interval_plus_the_horizon() -> None:
    limit = LagLimit(horizon=timedelta(hours=1))
    assert limit.allowed("hourly") == limit.allowed("realtime") == timedelta(hours=3)
    assert limit.allowed("daily") == timedelta(days=2, hours=1)
    assert LagLimit(timedelta(hours=72), fixed=timedelta(hours=6)).allowed("daily") == timedelta(
        hours=6
    )
    edge = NOW - timedelta(hours=3)
    assert not is_behind(status(covered_until=edge), NOW, limit)
    assert is_behind(status(covered_until=edge - timedelta(seconds=1)), NOW, limit)
    assert not is_behind(status(covered_until=edge, sync_frequency="daily"), NOW, limit)
    # Nothing covered yet, or only an old day: the wait counts from the connection.
    assert not is_behind(status(covered_until=None, connected_at=NOW), NOW, limit)
    assert is_behind(status(covered_until=None), NOW, limit)
    old_day = NOW - timedelta(days=400)
    assert not is_behind(status(covered_until=old_day, connected_at=NOW), NOW, limit)
    assert is_behind(status(covered_until=old_day), NOW, limit)
    # Only active types fall behind: a refusal or a lost grant is another problem.
    for state in ("refused", "needs reauthorization", "disconnected", "not enabled"):
        assert not is_behind(status(state=state, covered_until=None), NOW, limit)


def test_lag_settings_name_the_variable_and_the_form() -> None:
    assert parse_per_source("OHX_MAX_SYNC_LAG", "oura=6h, simulated=90m", minimum=1) == {
        "oura": timedelta(hours=6),
        "simulated": timedelta(minutes=90),
    }
    for wrong in ("oura=6", "fitbit=2h", "oura=0h", "oura"):
        with pytest.raises(ValueError, match=r"^OHX_MAX_SYNC_LAG: .*expected source=N"):
            parse_per_source("OHX_MAX_SYNC_LAG", wrong, minimum=1, known=KNOWN_SOURCES)
    settings = Settings.from_env({"OHX_HOME": "/nowhere", "OHX_MAX_SYNC_LAG": "simulated=2d"})
    assert settings.max_lag_overrides == (("simulated", 172800.0),)


def test_table_rows_put_problems_first_in_iso_times() -> None:
    limit = LagLimit(horizon=timedelta(hours=1))
    rows = [
        status(user_id="fine"),
        status(user_id="late", covered_until=NOW - timedelta(hours=5)),
        status(user_id="gone", state="needs reauthorization"),
        status(user_id="denied", state="refused", state_reason="HTTP 403: no scope"),
        status(
            user_id="broken",
            last_error="ProviderError: timeout",
            last_error_at=NOW - timedelta(minutes=5),
            last_success=NOW - timedelta(hours=2),
        ),
    ]
    table = table_rows(rows, NOW, limit)
    assert [r["person"] for r in table] == ["late", "gone", "denied", "broken", "fine"]
    late = table[0]
    assert late["behind"] is True and late["lag"] == "5 h" and late["allowed_lag"] == "3 h"
    assert late["covered_until"] == (NOW - timedelta(hours=5)).isoformat().replace("+00:00", "Z")
    assert table[2]["state"] == "refused: HTTP 403: no scope"
    assert table[3]["last_error"].endswith("ProviderError: timeout")
    assert table_rows(rows, NOW, limit, max_rows=2) == table[:2]
    # An export keeps no lag: nothing is behind, nothing allowed.
    assert not any(r["behind"] or r["allowed_lag"] for r in table_rows(rows, NOW, None))


# -- the assets, on a real store -------------------------------------------------------------------


def run_status(
    tmp_path: Path, store: RecordStore, monkeypatch: pytest.MonkeyPatch, **env: str
) -> dg.ExecuteInProcessResult:
    monkeypatch.delenv("OHX_DATABASE_URL", raising=False)
    settings = Settings.from_env(
        {"OHX_HOME": str(tmp_path / "home"), "OHX_DATABASE_URL": store.url, **env}
    )
    defs = build_definitions(settings)
    (tmp_path / "dagster").mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        return defs.get_job_def("sync_status_job").execute_in_process(instance=instance)


def shown(user_id: str) -> str:
    """A simulated person as the status asset names them: their shown salted subject."""
    return short(subject_hash("simulated", user_id, salt=erasure_salt()))


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_status_asset_holds_the_cli_table_and_its_checks_fail_on_problems(
    synced: RecordStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_status(tmp_path, synced, monkeypatch)
    assert result.success
    (event,) = result.get_asset_materialization_events()
    assert event.asset_key == dg.AssetKey(["sync_status", "simulated"])
    metadata = event.materialization.metadata
    assert not EPOCH_MICROSECONDS.search(json.dumps({k: str(v) for k, v in metadata.items()}))
    table = metadata["status"]
    assert isinstance(table, dg.TableMetadataValue)
    rows = {(r.data["person"], r.data["type"]): r.data for r in table.records}
    # The same people, types, states and times as `ohx status --json` on the same store.
    cli_out = CliRunner().invoke(
        cli,
        ["status", "--provider", "simulated", "--json"],
        env={"OHX_DATABASE_URL": synced.url, "OHX_HOME": str(tmp_path / "home")},
    )
    assert cli_out.exit_code == 0, cli_out.output
    statuses = json.loads(cli_out.stdout)["statuses"]
    assert len(statuses) == len(rows) > 0
    for cli_row in statuses:
        row = rows[shown(cli_row["user_id"]), cli_row["data_type"]]
        assert row["covered_until"] == (cli_row["covered_until"] or "never")
        assert row["records_24h"] == cli_row["records_24h"]
        state = cli_row["state"]
        assert row["state"] == (
            f"refused: {cli_row['state_reason']}" if state == "refused" else state
        )
    synced_at = SYNCED.isoformat().replace("+00:00", "Z")
    for kind in TYPES & SUPPORTED_TYPES["simulated"]:
        assert rows[shown("sim-002"), kind.value]["covered_until"] == synced_at
        # 40 minutes when the module was loaded, more by the time this test runs in a long suite.
        since_load = (datetime.now(UTC) - NOW).total_seconds() // 60
        lags = {words(timedelta(minutes=m)) for m in range(40, 42 + int(since_load))}
        assert rows[shown("sim-002"), kind.value]["lag"] in lags
    assert rows[shown("sim-001"), "heart_rate"]["records_24h"] > 0
    assert {r["state"] for (p, _), r in rows.items() if p == shown("sim-003")} <= {
        "needs reauthorization",
        "not supported",
    }
    assert metadata["needs_reauthorization"].value == 1
    assert metadata["people"].value == 3
    # 40 minutes behind is within the default (3 h for hourly and realtime people).
    found = checks(result)
    assert found["freshness"].passed
    assert not found["connections_authorized"].passed
    assert found["connections_authorized"].severity == dg.AssetCheckSeverity.WARN
    assert not found["last_sync_succeeded"].passed
    assert f"{shown('sim-001')} steps" in str(
        found["last_sync_succeeded"].metadata["failing"].value
    )
    assert found["connections_authorized"].metadata["people"].value == [shown("sim-003")]
    # People by salted subject only (issue 19): no id in the table or any check's metadata.
    told = str([metadata, [c.metadata for c in found.values()]])
    assert not re.search(r"sim-00\d", told)


def test_freshness_fails_when_a_person_falls_behind_the_configured_lag(
    synced: RecordStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_status(tmp_path, synced, monkeypatch, OHX_MAX_SYNC_LAG="simulated=30m")
    freshness = checks(result)["freshness"]
    assert not freshness.passed and freshness.severity == dg.AssetCheckSeverity.ERROR
    behind = freshness.metadata["behind"].value
    # sim-001 and sim-002 are active and 40 minutes behind; sim-003's grant is gone instead.
    assert {line.split()[0] for line in behind} == {shown("sim-001"), shown("sim-002")}
    assert all("(allowed 30 min)" in line for line in behind)
    assert freshness.metadata["allowed_lag"].value == "30 min (OHX_MAX_SYNC_LAG)"
    (event,) = result.get_asset_materialization_events()
    table = event.materialization.metadata["status"].records
    assert table[0].data["person"] in (shown("sim-001"), shown("sim-002"))
    assert table[0].data["behind"] is True
    # Relaxed: a lag no run of the suite reaches (SYNCED is read when the module is imported,
    # and a loaded machine reaches this test tens of minutes later).
    relaxed = run_status(tmp_path / "relaxed", synced, monkeypatch, OHX_MAX_SYNC_LAG="simulated=1d")
    assert checks(relaxed)["freshness"].passed


# -- the partition's per-hour plot ----------------------------------------------------------------


def test_the_per_hour_plot_has_one_mark_per_utc_hour() -> None:
    day = datetime(2026, 3, 1, tzinfo=UTC)
    hours = {0: 10, 1: 1, 13: 80, 23: 40}
    hourly = pd.DataFrame(
        {
            "user_id": "p",
            "data_type": "heart_rate",
            "bucket_start_us": [to_us(day + timedelta(hours=h)) for h in hours],
            "count": list(hours.values()),
        }
    )
    text = hourly_plot(hourly).value
    assert not EPOCH_MICROSECONDS.search(text)
    (line,) = [row for row in text.splitlines() if row.startswith("| heart_rate")]
    plot = line.split("`")[1]
    assert len(plot) == 24
    assert plot[13] == "█" and plot[1] == "▁" and plot[0] == "▁" and plot[23] == "▄"
    assert {plot[h] for h in range(24) if h not in hours} == {"·"}
    assert line.endswith("| 131 |")


# -- the status asset's plots ----------------------------------------------------------------------


def test_the_status_asset_plots_records_per_hour_and_per_person_without_naming_anyone(
    synced: RecordStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drawn as the partition view's plots are (assets/metadata.py), decoded by the independent
    reader of tests/dagster/test_metadata_plot.py; counts only: no id, no subject in them."""
    from png_reader import DATA_URI, bar_heights, read_png

    from assets.metadata import PEOPLE_CHART_KEY, PLOT_HEIGHT_PX, people_chart

    result = run_status(tmp_path, synced, monkeypatch)
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    table = metadata["status"].records
    per_person: dict[str, int] = {}
    for row in table:
        per_person[row.data["person"]] = per_person.get(row.data["person"], 0) + int(
            row.data["records_24h"]
        )
    assert len(per_person) == 3 and sorted(per_person.values())[-1] > 0

    def chart(key: str) -> tuple[str, list[list[tuple[int, ...]]]]:
        value = metadata[key].value
        assert len(value) < 1000, (key, len(value))  # shown inline in the UI's table
        ((alt, data),) = DATA_URI.findall(value)
        for person in [*per_person, "sim-001", "sim-002", "sim-003"]:
            assert person not in value
        return alt, read_png(base64.b64decode(data))

    alt, rows = chart(PEOPLE_CHART_KEY)
    assert alt == "records of the last 24 hours per person, busiest first (3 people)"
    heights = bar_heights(rows, 3)
    ranked = sorted(per_person.values(), reverse=True)
    plot = PLOT_HEIGHT_PX - 3
    assert heights[0] == plot
    for count, height in zip(ranked, heights, strict=True):
        assert abs(height - count * plot / ranked[0]) <= 1
    # The hourly charts hold every record the table counts, hour by hour as the store has them.
    types = {row.data["type"] for row in table if int(row.data["records_24h"])}
    keys = {k for k in metadata if k.startswith("records_per_hour/")}
    assert keys == {f"records_per_hour/{t}" for t in types}
    as_of = datetime.fromisoformat(metadata["as_of"].value.replace("Z", "+00:00"))
    start = to_us(window_start(as_of))
    stored = records_per_hour(synced, "simulated", start, start + 24 * 3_600_000_000)
    assert sum(n for _, _, n in stored) == metadata["records_24h"].value
    heart = [0] * 24
    for hour_us, data_type, n in stored:
        if data_type == "heart_rate":
            heart[hour_us // 3_600_000_000 % 24] += n
    alt, rows = chart("records_per_hour/heart_rate")
    assert alt == "heart_rate records per UTC hour, 00 to 23 h"
    drawn = bar_heights(rows, 24)
    assert [bool(h) for h in drawn] == [bool(n) for n in heart]
    assert drawn.index(plot) == heart.index(max(heart))
    # More people than bars: the busiest drawn, and the alt text says so.
    many = people_chart(list(range(100)))[PEOPLE_CHART_KEY].value
    assert len(many) < 1000
    assert "(100 people, the 60 busiest drawn)" in many


# -- what the UI shows about the definitions -------------------------------------------------------


def test_every_source_has_a_status_asset_and_a_schedule(tmp_path: Path, fitabase_dir: Path) -> None:
    settings = Settings.from_env(
        {
            "OHX_HOME": str(tmp_path),
            "OHX_FITABASE_DIR": str(fitabase_dir),
            "OHX_FITABASE_TZ": "UTC",
        }
    )
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    names: dict[str, set[str]] = {}
    for key in graph.asset_check_keys:
        names.setdefault(key.asset_key.to_user_string(), set()).add(key.name)
    assert names["sync_status/simulated"] == {
        "freshness",
        "connections_authorized",
        "last_sync_succeeded",
        "notified_data_arrived",
    }
    # An export has no lag to keep and no notifications: neither check.
    assert names["sync_status/fitabase"] == {"last_sync_succeeded"}
    schedule = defs.get_schedule_def("sync_status_schedule")
    assert schedule.cron_schedule == "*/15 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_descriptions_render_in_the_ui(tmp_path: Path) -> None:
    """The UI renders descriptions as markdown: a bare <day> vanishes, so any placeholder must
    sit in a code span."""
    defs = build_definitions(Settings.from_env({"OHX_HOME": str(tmp_path)}))
    graph = defs.resolve_asset_graph()
    texts = {k.to_user_string(): graph.get(k).description or "" for k in graph.get_all_asset_keys()}
    for spec in graph.asset_check_keys:
        texts[f"check {spec.to_user_string()}"] = graph.get_check_spec(spec).description or ""
    for schedule in defs.schedules or []:
        texts[schedule.name] = schedule.description or ""
    for sensor in defs.sensors or []:
        texts[sensor.name] = sensor.description or ""
    for name, text in texts.items():
        outside_code = re.sub(r"`[^`]*`", "", text)
        assert not BARE_TAG.search(outside_code), (name, BARE_TAG.search(outside_code))
    assert "`OHX_FHIR_DIR/<day>/<source key>/`" in texts["fhir_observations"]


def test_checks_that_guard_the_output_are_blocking(tmp_path: Path) -> None:
    """A failed blocking check stops the assets downstream of it in that run: wrong statistics
    or invalid FHIR are never published. Warnings and facts about the source are not blocking."""
    defs = build_definitions(Settings.from_env({"OHX_HOME": str(tmp_path)}))
    graph = defs.resolve_asset_graph()
    blocking = {
        key.to_user_string() for key in graph.asset_check_keys if graph.get_check_spec(key).blocking
    }
    assert blocking == {
        "raw_health_records:day_covered",
        "hourly_aggregates:counts_match_records",
        "hourly_aggregates:statistics_consistent",
        "daily_aggregates:statistics_consistent",
        "fhir_observations:valid_r5",
        "fhir_observations:unique_ids",
    }


# -- runs that cannot be what they ask for ---------------------------------------------------------


def test_a_partition_outside_the_range_names_the_range_and_the_sources() -> None:
    partitions = health_partitions(datetime(2025, 1, 1).date(), ["simulated", "oura-0", "oura-1"])
    today = datetime.now(UTC).date().isoformat()
    assert outside_partitions(partitions, "2025-01-01|oura-1") is None
    early = outside_partitions(partitions, "2016-04-12|simulated")
    assert early == (
        "partition '2016-04-12|simulated' is not one of this code location's partitions: days "
        f"2025-01-01 (OHX_PARTITIONS_START) to {today} (today, UTC) x sources simulated, oura-0, "
        "oura-1 (OHX_SOURCES): set OHX_PARTITIONS_START=2016-04-12 (or earlier) where Dagster "
        "runs, or pick a later day"
    )
    unknown = outside_partitions(partitions, "2025-02-01|fitabase")
    assert unknown is not None and unknown.endswith("add 'fitabase' to OHX_SOURCES")
    late = outside_partitions(partitions, "2999-01-01|simulated")
    assert late is not None and "OHX_PARTITIONS_START" in late and "\n" not in late


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The step failure's message with the messages of its causes (one per line)."""
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    error, lines = failure.step_failure_data.error, []
    while error is not None:
        lines.append(error.message.strip())
        error = error.cause
    return "\n".join(lines)


def test_a_run_for_a_day_before_the_range_stops_before_it_writes(
    tmp_path: Path, sqlite_store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dagster job execute --tags '{"dagster/partition": ...}'` reaches the run: it must not
    sync 2016 into the store of a code location whose partitions start in 2025."""
    monkeypatch.delenv("OHX_DATABASE_URL", raising=False)
    settings = Settings.from_env(
        {"OHX_HOME": str(tmp_path / "home"), "OHX_DATABASE_URL": sqlite_store.url}
    )
    job = build_definitions(settings).get_job_def("sync_partition")
    (tmp_path / "dagster").mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = job.execute_in_process(
            instance=instance,
            tags={"dagster/partition": "2016-04-12|simulated"},
            raise_on_error=False,
        )
    assert not result.success
    message = failure_message(result)
    assert "'2016-04-12|simulated'" in message and "2025-01-01 (OHX_PARTITIONS_START)" in message
    assert "sources simulated (OHX_SOURCES)" in message
    assert sqlite_store.count_records("simulated") == 0
    assert sqlite_store.people("simulated") == []


def test_an_unknown_ohx_tag_fails_the_run_and_lists_the_valid_ones(
    tmp_path: Path, sqlite_store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OHX_DATABASE_URL", raising=False)
    settings = Settings.from_env(
        {"OHX_HOME": str(tmp_path / "home"), "OHX_DATABASE_URL": sqlite_store.url}
    )
    job = build_definitions(settings).get_job_def("sync_partition")
    day = datetime.now(UTC).date().isoformat()
    (tmp_path / "dagster").mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = job.execute_in_process(
            instance=instance,
            partition_key=f"{day}|simulated",
            tags={"ohx/user": "sim-001"},  # a typo of ohx/users: must not sync everyone
            raise_on_error=False,
        )
    assert not result.success
    message = failure_message(result)
    assert "unknown run tag 'ohx/user'" in message
    assert all(tag in message for tag in KNOWN_TAGS)
    assert sqlite_store.count_records("simulated") == 0
