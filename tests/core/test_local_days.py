"""Every person's local day, in every kind of zone: the invariants, attacked with hypothesis.

- The days of a person tile time: each instant is in exactly one local day, whatever their zone
  history (a move east, west, or a corrected setting).
- A day is the local calendar day: 00:00 to 24:00 on the wall clock of the zone it was lived in,
  23, 24 or 25 hours (23.5 or 24.5 on Lord Howe Island), its hours the wall clock's hours.
- Every sample lies in exactly one daily aggregate of its person, each daily aggregate counts
  exactly the samples of that local day, and its hours add up to it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from depth import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ohx_dagster.core.localdays import Calendar
from ohx_dagster.core.models import AggregationLevel, DateRange, HealthSyncConfig
from ohx_dagster.core.records import concat, make_batch
from ohx_dagster.core.times import HOUR_US, from_us, to_us
from ohx_dagster.fhir.timefmt import parse_us
from ohx_dagster.publish import aggregate

ZONES = [
    "America/New_York",
    "Europe/Berlin",
    "Asia/Kolkata",  # +05:30
    "Asia/Kathmandu",  # +05:45
    "Australia/Lord_Howe",  # +10:30, a 30-minute DST
    "Pacific/Chatham",  # +12:45 / +13:45
    "UTC",
]
# The 2026 daylight-saving change days of the zones above.
DST_DAYS = [
    date(2026, 3, 8), date(2026, 11, 1),  # New York
    date(2026, 3, 29), date(2026, 10, 25),  # Berlin
    date(2026, 4, 5), date(2026, 10, 4),  # Lord Howe
    date(2026, 9, 27),  # Chatham (and 2026-04-05)
]  # fmt: skip

days = st.one_of(
    st.sampled_from(DST_DAYS).flatmap(
        lambda d: st.sampled_from([d - timedelta(1), d, d + timedelta(1)])
    ),
    st.dates(min_value=date(2025, 1, 1), max_value=date(2027, 12, 31)),
)


@st.composite
def calendars(draw: st.DrawFn) -> Calendar:
    """A zone, or a history of up to three zones (moves and corrections)."""
    zones = draw(st.lists(st.sampled_from(ZONES), min_size=1, max_size=3))
    if len(zones) == 1:
        return Calendar(zones[0])
    firsts = sorted(
        draw(st.lists(days, min_size=len(zones) - 1, max_size=len(zones) - 1, unique=True))
    )
    changes = [
        ("0001-01-01", zones[0]),
        *((d.isoformat(), z) for d, z in zip(firsts, zones[1:], strict=True)),
    ]
    kept = [c for n, c in enumerate(changes) if n == 0 or c[1] != changes[n - 1][1]]
    return Calendar(kept[-1][1], tuple(kept) if len(kept) > 1 else ())


def wall_clock_day(calendar: Calendar, day: date) -> tuple[datetime, datetime]:
    zone = calendar.zone_on(day)
    return (
        datetime.combine(day, datetime.min.time(), tzinfo=zone),
        datetime.combine(day + timedelta(1), datetime.min.time(), tzinfo=zone),
    )


@settings(max_examples=examples(400), deadline=None)
@given(calendars(), days)
def test_days_tile_time_and_are_the_wall_clock_day(calendar: Calendar, day: date) -> None:
    start, end = calendar.day_window(day)
    assert calendar.day_window(day + timedelta(1))[0] == end
    assert calendar.day_window(day - timedelta(1))[1] == start
    assert calendar.day_of(start) == day and calendar.day_of(end - 1) == day
    bounds = calendar.hour_bounds(day)
    assert bounds[0] == start and bounds[-1] == end and (np.diff(bounds) > 0).all()
    assert (np.diff(bounds) <= HOUR_US).all()
    # Each hour is one hour of the wall clock: its instants read the same date, hour and offset.
    zone = calendar.zone_on(day)
    for first, last in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        a, b = from_us(first).astimezone(zone), from_us(last - 1).astimezone(zone)
        assert (a.date(), a.hour, a.utcoffset()) == (b.date(), b.hour, b.utcoffset())
    if calendar.zone_on(day - timedelta(1)) == zone:
        # No move that day: exactly the calendar day on the wall clock.
        local_start, local_end = wall_clock_day(calendar, day)
        assert (start, end) == (to_us(local_start), to_us(local_end))
        assert (end - start) / HOUR_US in {23.0, 23.5, 24.0, 24.5, 25.0}
        midnight = from_us(start).astimezone(zone)
        assert midnight.date() == day and (midnight.hour, midnight.minute) == (0, 0)


def samples(calendar_: Calendar, first: date, stamps_s: list[int]) -> pd.DataFrame:
    origin = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    moments = sorted({origin + timedelta(seconds=s) for s in stamps_s})
    return concat(
        [
            make_batch(provider="simulated", user_id="p", data_type="heart_rate",
                       timestamps=moments, values=np.full(len(moments), 70.0), unit="/min",
                       device_id="watch"),
            make_batch(provider="simulated", user_id="p", data_type="steps",
                       timestamps=moments, values=np.full(len(moments), 3.0), unit="1",
                       device_id="watch", duration_s=1.0),
        ]
    )  # fmt: skip


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calendars(), days, st.lists(st.integers(0, 3 * 86_400 - 1), min_size=1, max_size=300))
def test_each_sample_in_exactly_one_daily_aggregate(
    calendar: Calendar, first: date, stamps_s: list[int]
) -> None:
    batch = samples(calendar, first, stamps_s)
    zones = {"p": calendar}
    stamps = batch["ts"].dt.as_unit("us").astype("int64").to_numpy()
    lived = calendar.days_of(stamps)
    counted: dict[str, int] = {}
    for ordinal in np.unique(lived).tolist():
        day = date.fromordinal(ordinal)
        daily = aggregate.daily(batch, zones, day).set_index("data_type")
        start, end = calendar.day_window(day)
        for data_type, row in daily.iterrows():
            expected = int(
                ((lived == ordinal) & (batch["data_type"] == data_type).to_numpy()).sum()
            )
            assert row["count"] == expected
            assert (row["bucket_start_us"], row["bucket_end_us"]) == (start, end)
            counted[str(data_type)] = counted.get(str(data_type), 0) + int(row["count"])
        # The day's hours add up to the day.
        hours = aggregate.hourly(aggregate.in_local_day(batch, zones, day), zones)
        assert hours.groupby("data_type")["count"].sum().to_dict() == daily["count"].to_dict()
        assert ((hours["bucket_start_us"] >= start) & (hours["bucket_end_us"] <= end)).all()
    # No sample lost, none counted twice.
    assert counted == batch.groupby("data_type").size().to_dict()


def test_a_config_keeps_the_zone_of_each_day_it_lived() -> None:
    config = HealthSyncConfig("p", "simulated", timezone="America/New_York")
    moved = config.with_zone("Europe/Berlin", date(2026, 6, 10))
    assert moved.timezone == "Europe/Berlin"
    assert moved.zone_on(date(2026, 6, 9)) == ZoneInfo("America/New_York")
    assert moved.zone_on(date(2026, 6, 10)) == ZoneInfo("Europe/Berlin")
    assert HealthSyncConfig.from_json(moved.to_json()) == moved
    assert "zone_changes" not in config.to_json()  # everyone else's stored config unchanged
    # The travel day begins where the day before ended: 18 hours, none lost, none twice.
    calendar = Calendar.of(moved)
    start, end = calendar.day_window(date(2026, 6, 10))
    assert (start, end) == (
        to_us(datetime(2026, 6, 10, 4, tzinfo=UTC)),
        to_us(datetime(2026, 6, 10, 22, tzinfo=UTC)),
    )
    # A correction from the first day known replaces the history.
    corrected = moved.with_zone("Asia/Kolkata", date.min)
    assert corrected.zone_changes == () and corrected.timezone == "Asia/Kolkata"


# -- through the store and the published NDJSON ---------------------------------------------------

NOW = datetime(2026, 12, 6, 13, tzinfo=UTC)  # fixed: the simulator's data is a function of time


def published_observations(output, day: date) -> list[dict]:
    from ohx_dagster.publish.partitions import partition_dir

    directory = partition_dir(day, "simulated")
    manifest = output.manifest(directory) or {"output": []}
    return [
        r
        for entry in manifest["output"]
        for r in output.read_resources(f"{directory}/{entry['url'].rsplit('/', 1)[-1]}")
        if r["resourceType"] == "Observation"
    ]


def publish_changed(store, output, now: datetime) -> None:
    """What the chain and the republish sensor do: publish every day whose data changed."""
    from ohx_dagster.publish.partitions import publish_partition
    from ohx_dagster.sync.shards import Shard

    for day in sorted(store.unpublished_days("simulated")):
        publish_partition(store, output, provider="simulated", key="simulated",
                          shard=Shard("simulated"), day=day, scope=None, now=now,
                          horizon=timedelta(hours=1))  # fmt: skip


def test_new_york_two_utc_days_synced_one_final_daily_aggregate_of_the_whole_local_day(
    tmp_path,
) -> None:
    from ohx_dagster.fhir.output import FhirOutput
    from ohx_dagster.providers.base import Windowed
    from ohx_dagster.providers.registry import SUPPORTED_TYPES
    from ohx_dagster.providers.simulated import SimulatedSource
    from ohx_dagster.storage.store import RecordStore
    from ohx_dagster.sync.fetch import sync_partition

    day = date(2026, 11, 20)
    source = Windowed(SimulatedSource(2, seed=7, clock=lambda: NOW), SUPPORTED_TYPES["simulated"],
                      timedelta(hours=1))  # fmt: skip
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    output = FhirOutput(str(tmp_path / "fhir"))
    for utc_date in (day, day + timedelta(days=1)):
        sync_partition(source, store, utc_date, strategy="partition", now=NOW)
        publish_changed(store, output, NOW)
    person = store.user("simulated", "sim-002")
    assert person is not None and person.timezone == "America/New_York"
    stored = store.read_records("simulated", aggregate.local_day_window(day, person),
                                user_ids=["sim-002"], data_types=["heart_rate"])  # fmt: skip
    assert len(stored) == 86_400  # 1 Hz, the whole local day
    daily = [
        r for r in published_observations(output, day)
        if r["subject"]["identifier"]["value"] == "sim-002"
        and r.get("method", {}).get("coding", [{}])[0].get("code") == "average"
        and r["code"]["coding"][0]["code"] == "8867-4"
        and r["effectivePeriod"]["start"].endswith("T00:00:00-05:00")
        and r["effectivePeriod"]["end"] == "2026-11-21T00:00:00-05:00"
    ]  # fmt: skip
    assert len(daily) == 1
    (aggregate_,) = daily
    count = next(c["valueInteger"] for c in aggregate_["component"] if "valueInteger" in c)
    assert count == len(stored) and aggregate_["status"] == "final"
    assert aggregate_["effectivePeriod"]["start"] == "2026-11-20T00:00:00-05:00"
    # It derives from every hour of the local day: 24 series, all in the same partition.
    ids = {f"Observation/{r['id']}" for r in published_observations(output, day)}
    assert len(aggregate_["derivedFrom"]) == 24
    assert {d["reference"] for d in aggregate_["derivedFrom"]} <= ids
    # No other partition publishes a daily heart rate of that local day, nor any of its samples;
    # a night is on the day it ended (the night that began late on the 20th is the 21st's).
    for other in (day - timedelta(days=1), day + timedelta(days=1)):
        for r in published_observations(output, other):
            if "effectivePeriod" in r and r["subject"]["identifier"]["value"] == "sim-002":
                night = r["code"]["coding"][0]["code"] == "93832-4"
                edge = r["effectivePeriod"]["end" if night else "start"]
                assert not edge.startswith("2026-11-20T"), r["id"]
    store.dispose()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(calendars(), days, st.lists(st.integers(0, 3 * 86_400 - 1), min_size=1, max_size=200))
def test_every_stored_sample_in_exactly_one_published_daily_aggregate(
    tmp_path_factory, calendar: Calendar, first: date, stamps_s: list[int]
) -> None:
    """Through the real store and publishing: the published daily aggregates of a person count
    every stored sample once, each in the partition of its local day."""
    from ohx_dagster.fhir.output import FhirOutput
    from ohx_dagster.storage.store import RecordStore

    home = tmp_path_factory.mktemp("days")
    store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    output = FhirOutput(str(home / "fhir"))
    config = HealthSyncConfig("p", "simulated", timezone=calendar.timezone,
                              zone_changes=calendar.changes,
                              aggregation=AggregationLevel.DAILY)  # fmt: skip
    store.add_users([config])
    batch = samples(calendar, first, stamps_s)
    store.commit("simulated", "p", config, batch)
    publish_changed(store, output, NOW)
    stamps = batch[batch["data_type"] == "heart_rate"]["ts"].dt.as_unit("us").astype("int64")
    lived = calendar.days_of(stamps.to_numpy())
    counted = 0
    for ordinal in np.unique(lived).tolist():
        day = date.fromordinal(ordinal)
        start, end = calendar.day_window(day)
        found = [
            r for r in published_observations(output, day)
            if r["code"]["coding"][0]["code"] == "8867-4" and "component" in r
        ]  # fmt: skip
        assert len(found) == 1, day
        count = next(c["valueInteger"] for c in found[0]["component"] if "valueInteger" in c)
        assert count == int((lived == ordinal).sum())
        period = found[0]["effectivePeriod"]
        assert (parse_us(period["start"]), parse_us(period["end"])) == (start, end)
        counted += count
    assert counted == len(stamps)
    store.dispose()


def test_ohx_users_set_zone_recuts_the_days_and_the_old_rows_go(
    store, store_url: str, tmp_path, monkeypatch
) -> None:
    """A person moves from New York to Berlin: `ohx users set-zone --from` marks the days whose
    bounds change, publishing them again cuts them in the new zone (the day of the move is
    shorter), no daily row of the old cut is left, and the change is in the audit log."""
    from click.testing import CliRunner

    from ohx_dagster.cli import cli
    from ohx_dagster.fhir.output import FhirOutput
    from ohx_dagster.privacy import audit
    from ohx_dagster.providers.base import Windowed
    from ohx_dagster.providers.registry import SUPPORTED_TYPES
    from ohx_dagster.providers.simulated import SimulatedSource
    from ohx_dagster.sync.fetch import sync_partition

    monkeypatch.setenv("OHX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OHX_DATABASE_URL", store_url)
    monkeypatch.setenv("OHX_FHIR_DIR", str(tmp_path / "fhir"))
    monkeypatch.delenv("OHX_FHIR_SERVER_URL", raising=False)
    first = date(2026, 11, 18)
    source = Windowed(SimulatedSource(2, seed=7, clock=lambda: NOW), SUPPORTED_TYPES["simulated"],
                      timedelta(hours=1))  # fmt: skip
    output = FhirOutput(str(tmp_path / "fhir"))
    sync_partition(source, store, [first + timedelta(days=n) for n in range(3)],
                   strategy="partition", user_ids=["sim-002"], now=NOW)  # fmt: skip
    publish_changed(store, output, NOW)

    result = CliRunner().invoke(cli, ["users", "set-zone", "simulated", "sim-002",
                                      "Europe/Berlin", "--from", "2026-11-19", "--reason",
                                      "moved", "--actor", "nurse-7"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "lives in Europe/Berlin from 2026-11-19" in result.output
    config = store.user("simulated", "sim-002")
    assert config.zone_on(date(2026, 11, 18)) == ZoneInfo("America/New_York")
    assert config.zone_on(date(2026, 11, 19)) == ZoneInfo("Europe/Berlin")
    assert date(2026, 11, 19) in store.unpublished_days("simulated")
    publish_changed(store, output, NOW)

    calendar = Calendar.of(config)
    records = store.read_records(
        "simulated",
        DateRange(from_us(calendar.day_window(first)[0]),
                            from_us(calendar.day_window(first + timedelta(days=2))[1])),
        user_ids=["sim-002"],
    )  # fmt: skip
    rows = store.read_aggregates(
        "simulated", "daily",
        DateRange(datetime(2026, 11, 17, tzinfo=UTC), datetime(2026, 11, 22, tzinfo=UTC)),
        user_ids=["sim-002"],
    )  # fmt: skip
    hr = rows[rows["data_type"] == "heart_rate"].sort_values("bucket_start_us")
    spans = [(int(r.bucket_start_us), int(r.bucket_end_us)) for r in hr.itertuples()]
    # The days tile time: one daily row a day, none overlapping another (no old cut left).
    assert all(end <= start for (_, end), (start, _) in pairwise(spans))
    # The three days synced whole: each its bounds in its zone, 24 h, 18 h (the move), 24 h.
    middle = [calendar.day_window(first + timedelta(days=n)) for n in range(3)]
    assert [s for s in spans if s in middle] == middle
    assert [(e - s) // HOUR_US for s, e in middle] == [24, 18, 24]
    stamps = records[records["data_type"] == "heart_rate"]["ts"].dt.as_unit("us").astype("int64")
    counts = dict(zip(spans, hr["count"], strict=True))
    assert [counts[s] for s in middle] == [
        int(((stamps >= a) & (stamps < b)).sum()) for a, b in middle
    ]
    [row] = [r for r in audit.read(store) if r.action == "set-zone"]
    assert row.actor == "nurse-7" and "sim-002" not in row.detail


def test_reconnecting_in_another_zone_keeps_the_days_already_lived(store) -> None:
    """The connect flow registers the person again with the zone they give now: their past days
    keep their zone, the new one applies from today on, and their stored days it moves are
    marked for publishing."""
    from ohx_dagster.core.records import make_batch as batch_of

    config = HealthSyncConfig("p", "oura", timezone="America/New_York")
    store.upsert_user(config)
    today = datetime.now(UTC).date()
    moments = [datetime.combine(today, datetime.min.time(), tzinfo=UTC) - timedelta(hours=h)
               for h in range(1, 60)]  # fmt: skip
    store.commit("oura", "p", config, batch_of(provider="oura", user_id="p",
                 data_type="heart_rate", timestamps=moments, values=[60.0] * len(moments),
                 unit="/min"))  # fmt: skip
    with store.read() as conn:
        published = {d: store.day_versions(conn, "oura", d, None) for d in
                     (today - timedelta(days=n) for n in range(4))}  # fmt: skip
    store.upsert_user(HealthSyncConfig("p", "oura", timezone="Asia/Tokyo"))
    moved = store.user("oura", "p")
    assert moved.timezone == "Asia/Tokyo"
    assert moved.zone_on(today - timedelta(days=2)) == ZoneInfo("America/New_York")
    assert moved.zone_on(today + timedelta(days=2)) == ZoneInfo("Asia/Tokyo")
    with store.read() as conn:
        after = {d: store.day_versions(conn, "oura", d, None) for d in published}
    # The days already lived are cut as before: none of them moved.
    assert {d: v for d, v in after.items() if d < today - timedelta(days=1)} == {
        d: v for d, v in published.items() if d < today - timedelta(days=1)
    }
