"""Records the provider dates with their own offset (Google Health's readings, Oura's daily
summaries, Withings' measures: ohx_dagster/core/localdays.py RECORD_OFFSETS) are in the local day
and hour of that offset, whatever the person's zone setting says; the rest follow the zone history.

Invariants, attacked with hypothesis over offsets of every kind (-12:00 .. +14:00, half and
quarter hours) that change from record to record (a person who travels), under any zone setting:
- every record is in exactly one daily aggregate, the one of its own local date, and each daily
  aggregate counts exactly the records of that date;
- each hourly aggregate is one hour of the clock of its records' offset and the hours add up to
  the day;
- through the real store and publishing, the published daily aggregates count every stored
  sample once, each in the partition of its own local date.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
from depth import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ohx_dagster.core.localdays import Calendar, own_day_bounds
from ohx_dagster.core.models import AggregationLevel, HealthSyncConfig
from ohx_dagster.core.records import concat, make_batch
from ohx_dagster.core.times import HOUR_US, to_us
from ohx_dagster.fhir.timefmt import parse_us
from ohx_dagster.publish import aggregate
from ohx_dagster.storage.store import days_touched

# Offsets a record can carry: whole, half and quarter hours across every zone on Earth.
OFFSETS = [-720, -600, -300, -240, -210, 0, 60, 120, 330, 345, 525, 630, 765, 825, 840]
SETTINGS = ["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]
NOW = datetime(2026, 12, 6, 13, tzinfo=UTC)
FIRST = date(2026, 10, 31)  # across New York's DST change of 2026-11-01


def readings(stamps_s: list[int], offsets: list[int]) -> pd.DataFrame:
    """Heart rate (a series) and weight (a spot reading) from Google Health, each at its own
    offset."""
    origin = datetime.combine(FIRST, datetime.min.time(), tzinfo=UTC)
    at = {origin + timedelta(seconds=s): o for s, o in zip(stamps_s, offsets, strict=True)}
    pairs = sorted(at.items())
    moments = [m for m, _ in pairs]
    own = [o for _, o in pairs]
    return concat(
        [
            make_batch(provider="google_health", user_id="p", data_type="heart_rate",
                       timestamps=moments, values=np.full(len(moments), 70.0), unit="/min",
                       device_id="watch", utc_offset_min=own),
            make_batch(provider="google_health", user_id="p", data_type="weight",
                       timestamps=moments, values=np.full(len(moments), 80.0), unit="kg",
                       device_id="scale", utc_offset_min=own),
        ]
    )  # fmt: skip


def own_dates(batch: pd.DataFrame) -> np.ndarray:
    local = batch["ts"].dt.tz_convert(None) + pd.to_timedelta(
        batch["utc_offset_min"].astype("int64"), unit="min"
    )
    return np.array([d.toordinal() for d in local.dt.date])


records = st.lists(
    st.tuples(st.integers(0, 3 * 86_400 - 1), st.sampled_from(OFFSETS)), min_size=1, max_size=120
)


@settings(max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SETTINGS), records)
def test_each_record_in_the_daily_aggregate_of_its_own_date(
    setting: str, drawn: list[tuple[int, int]]
) -> None:
    batch = readings([s for s, _ in drawn], [o for _, o in drawn])
    config = HealthSyncConfig("p", "google_health", timezone=setting)
    zones = {"p": config}
    dates = own_dates(batch)
    counted: dict[str, int] = {}
    for ordinal in np.unique(dates).tolist():
        day = date.fromordinal(ordinal)
        daily = aggregate.daily(batch, zones, day).set_index("data_type")
        assert set(daily.index) == {"heart_rate", "weight"}
        for data_type, row in daily.iterrows():
            mine = (dates == ordinal) & (batch["data_type"] == data_type).to_numpy()
            assert row["count"] == int(mine.sum())
            # The day on the clock of its first and last records' offsets.
            kept = batch[mine].sort_values("ts")
            first, last = (int(kept["utc_offset_min"].iloc[i]) for i in (0, -1))
            assert row["bucket_start_us"] == own_day_bounds(day, first)[0]
            assert row["bucket_end_us"] == own_day_bounds(day, last)[1]
            assert row["utc_offset_min"] == first
            counted[str(data_type)] = counted.get(str(data_type), 0) + int(row["count"])
        hours = aggregate.hourly(aggregate.in_local_day(batch, zones, day), zones)
        assert hours.groupby("data_type")["count"].sum().to_dict() == daily["count"].to_dict()
        local_start = hours["bucket_start_us"] + hours["utc_offset_min"] * 60_000_000
        assert (local_start % HOUR_US == 0).all()  # an hour of the record's own clock
        assert (hours["bucket_end_us"] - hours["bucket_start_us"] == HOUR_US).all()
    assert counted == batch.groupby("data_type").size().to_dict()


def test_a_weigh_in_late_in_the_evening_is_on_that_evening_whatever_the_setting() -> None:
    """23:30 at -05:00 is 04:30 UTC of the next day: a person whose setting still says UTC (or
    says Kolkata) weighed in on the evening of the 1st, as the scale's own clock said."""
    moment = datetime(2026, 11, 2, 4, 30, tzinfo=UTC)
    batch = make_batch(provider="withings", user_id="p", data_type="weight",
                       timestamps=[moment], values=np.array([80.0]), unit="kg",
                       device_id="scale", utc_offset_min=-300)  # fmt: skip
    for setting in ("UTC", "Asia/Kolkata"):
        zones = {"p": HealthSyncConfig("p", "withings", timezone=setting)}
        assert aggregate.daily(batch, zones, date(2026, 11, 2)).empty
        [row] = aggregate.daily(batch, zones, date(2026, 11, 1)).to_dict("records")
        assert row["count"] == 1
        assert row["bucket_start_us"] == to_us(datetime(2026, 11, 1, 5, tzinfo=UTC))
        # A type whose records carry no offset of their own follows the setting.
        zones = {"p": HealthSyncConfig("p", "simulated", timezone=setting)}
        assert aggregate.daily(batch, zones, date(2026, 11, 1)).empty


def test_oura_heart_rate_without_an_offset_follows_the_zone_setting() -> None:
    """Oura's heart rate comes in UTC only: it is cut by the person's zone, its daily steps
    (dated with their own offset) by that offset."""
    calendar = Calendar.of(HealthSyncConfig("p", "oura", timezone="America/New_York"))
    moment = to_us(datetime(2026, 11, 2, 4, 30, tzinfo=UTC))  # 23:30 in New York on the 1st
    stamps, offsets = np.array([moment]), np.array([np.nan])
    assert calendar.record_days("heart_rate", stamps, offsets)[0] == date(2026, 11, 1).toordinal()
    ahead = np.array([60.0])  # a summary dated 05:30+01:00 on the 2nd
    assert calendar.record_days("steps", stamps, ahead)[0] == date(2026, 11, 2).toordinal()


def test_a_write_marks_the_day_of_every_clock_for_republishing() -> None:
    """A record of a provider that dates records itself may belong to the day before or after
    its UTC date: the write marks every day some clock shows, so its own day is republished."""
    moment = to_us(datetime(2026, 11, 2, 4, 30, tzinfo=UTC))
    own = HealthSyncConfig("p", "google_health")
    assert days_touched([(moment, moment + 1)], own) >= {date(2026, 11, 1), date(2026, 11, 2)}
    plain = HealthSyncConfig("p", "simulated")
    assert days_touched([(moment, moment + 1)], plain) == {date(2026, 11, 2)}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.sampled_from(SETTINGS), records)
def test_every_stored_record_in_exactly_one_published_daily_aggregate(
    tmp_path_factory, setting: str, drawn: list[tuple[int, int]]
) -> None:
    """Through the real store and publishing (series chunks and spot readings): each published
    daily aggregate counts the records of its own local date, in that date's partition."""
    from ohx_dagster.fhir.output import FhirOutput
    from ohx_dagster.publish.partitions import partition_dir, publish_partition
    from ohx_dagster.storage.store import RecordStore
    from ohx_dagster.sync.shards import Shard

    home = tmp_path_factory.mktemp("own")
    store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    output = FhirOutput(str(home / "fhir"))
    config = HealthSyncConfig("p", "google_health", timezone=setting,
                              aggregation=AggregationLevel.DAILY)  # fmt: skip
    store.add_users([config])
    batch = readings([s for s, _ in drawn], [o for _, o in drawn])
    store.commit("google_health", "p", config, batch)
    for day in sorted(store.unpublished_days("google_health")):
        publish_partition(store, output, provider="google_health", key="google_health",
                          shard=Shard("google_health"), day=day, scope=None, now=NOW,
                          horizon=timedelta(hours=72))  # fmt: skip
    dates = own_dates(batch)
    codes = {"heart_rate": "8867-4", "weight": "29463-7"}
    for data_type, code in codes.items():
        mine = (batch["data_type"] == data_type).to_numpy()
        counted = 0
        for ordinal in np.unique(dates[mine]).tolist():
            day = date.fromordinal(ordinal)
            directory = partition_dir(day, "google_health")
            manifest = output.manifest(directory) or {"output": []}
            found = [
                r
                for entry in manifest["output"]
                for r in output.read_resources(f"{directory}/{entry['url'].rsplit('/', 1)[-1]}")
                if r["resourceType"] == "Observation"
                and r["code"]["coding"][0]["code"] == code
                and "derivedFrom" in r
            ]
            assert len(found) == 1, (data_type, day)
            count = next(
                c["valueInteger"] for c in found[0].get("component", []) if "valueInteger" in c
            )
            assert count == int((mine & (dates == ordinal)).sum())
            period = found[0]["effectivePeriod"]
            assert parse_us(period["start"]) < parse_us(period["end"])
            counted += count
        assert counted == int(mine.sum())
    store.dispose()


def test_a_chunk_the_midnight_cuts_is_published_as_its_part_whatever_is_stored_yet() -> None:
    """Asia/Kolkata's day 2026-12-04 begins at 18:30 UTC on the 3rd: the stored hour 18:00 is cut
    there. Its later part has an id of its own (it starts at 18:30) even while only the samples
    after the cut are stored (a run of the 4th before the run of the 3rd): the output of the day
    does not depend on the order the days were synced in."""
    import pandas as pd

    from ohx_dagster.fhir.partition import BucketData
    from ohx_dagster.storage.chunks import Samples
    from ohx_dagster.storage.record_tables import Chunk

    hour = to_us(datetime(2026, 12, 3, 18, tzinfo=UTC))
    cut = hour + HOUR_US // 2
    config = HealthSyncConfig("p", "simulated", timezone="Asia/Kolkata")
    for stamps in ([cut + 60_000_000, cut + 120_000_000], [hour + 60_000_000, cut + 60_000_000]):
        samples = Samples.of(stamps, [70.0, 71.0])
        chunk = Chunk("p", "heart_rate", "watch", hour, samples)
        data = BucketData("simulated", date(2026, 12, 4), {"p": config}, [chunk], pd.DataFrame())
        [part], _ = data.in_day()
        assert part.hour_us == cut
        assert part.samples.ts_us.tolist() == [s for s in stamps if s >= cut]
