"""Sleep sessions (ohx_dagster/core/sessions.py): stamped at their end, one night each.

Invariants, attacked with hypothesis:
- a session is published in exactly one partition, the local date its person woke up on, in any
  zone (whole, half and quarter hours, Lord Howe's half-hour DST, New York's 25-hour day) and
  whatever midnight or clock change the night crossed; through the real store and publishing too;
- stage intervals are checked on ingest: in order, inside the session, of a known stage, or the
  batch is refused with one line naming the interval;
- the published stage durations are the intervals' sums, and merged overlapping intervals count
  every second once;
- a provider's summary of a night (each stage's total, not when) is accepted exactly when its
  sleep and waking fit in the night, and published as it was told.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from depth import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.core.records import make_batch
from ohx_dagster.core.sessions import (
    Stage,
    check_parts,
    from_hypnogram,
    merge_intervals,
    night_totals,
    stage_intervals,
    stage_summary,
    stage_totals,
)
from ohx_dagster.core.times import to_us
from ohx_dagster.fhir.partition import BucketData, bucket_resources
from ohx_dagster.fhir.timefmt import parse_us

SLEEP = HealthDataType.SLEEP
ZONES = [
    "UTC",
    "America/New_York",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "Australia/Lord_Howe",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
]
# Around New York's change of 2026-11-01 and Lord Howe's of 2026-10-04.
FIRST = datetime(2026, 9, 28, tzinfo=UTC)
SPAN_S = 45 * 86_400


def nights(zone: str, ends_s: list[int], lengths_s: list[int]) -> pd.DataFrame:
    ends = pd.DatetimeIndex([FIRST + timedelta(seconds=s) for s in ends_s]).tz_convert(zone)
    return make_batch(
        provider="simulated",
        user_id="p",
        data_type=SLEEP,
        timestamps=ends,
        values=np.asarray(lengths_s, dtype="float64") * 0.9,
        unit="s",
        device_id="ring",
        duration_s=np.asarray(lengths_s, dtype="float64"),
    )


def published_nights(config: HealthSyncConfig, batch: pd.DataFrame, day: date) -> list[dict]:
    data = BucketData("simulated", day, {"p": config}, [], batch)
    resources = bucket_resources(data, pd.DataFrame(), pd.DataFrame(), {}, recorded_us=0)
    return [
        r
        for r in resources
        if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "93832-4"
    ]


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(ZONES),
    st.lists(
        st.tuples(st.integers(86_400, SPAN_S - 86_400), st.integers(600, 14 * 3600)),
        min_size=1,
        max_size=6,
        unique_by=lambda t: t[0],
    ),
)
def test_each_night_is_published_once_on_the_day_its_person_woke(
    zone: str, drawn: list[tuple[int, int]]
) -> None:
    config = HealthSyncConfig("p", "simulated", timezone=zone)
    batch = nights(zone, [e for e, _ in drawn], [n for _, n in drawn])
    seen: dict[str, date] = {}
    first = FIRST.date()
    for n in range(SPAN_S // 86_400 + 1):
        day = first + timedelta(days=n)
        for resource in published_nights(config, batch, day):
            assert resource["id"] not in seen, f"a night in {seen[resource['id']]} and {day}"
            seen[resource["id"]] = day
            woke = datetime.fromtimestamp(parse_us(resource["effectivePeriod"]["end"]) / 1e6, UTC)
            assert woke.astimezone(ZoneInfo(zone)).date() == day
    assert len(seen) == len(drawn)


def test_a_night_across_midnight_and_one_across_the_clock_change_are_one_night_each() -> None:
    """New York: 22:30 to 06:45 across midnight on 2026-11-19/20, and 23:00 on 2026-10-31 to
    06:00 on 2026-11-01 across the change from EDT to EST (8 hours of sleep, not 7)."""
    zone = ZoneInfo("America/New_York")
    config = HealthSyncConfig("p", "simulated", timezone="America/New_York")
    ends = [datetime(2026, 11, 20, 6, 45, tzinfo=zone), datetime(2026, 11, 1, 6, 0, tzinfo=zone)]
    starts = [datetime(2026, 11, 19, 22, 30, tzinfo=zone), datetime(2026, 10, 31, 23, tzinfo=zone)]
    lengths = [(to_us(e) - to_us(s)) / 1e6 for s, e in zip(starts, ends, strict=True)]
    assert lengths[1] == 8 * 3600  # the wall clock says 7 hours; the night lasted 8
    batch = make_batch(provider="simulated", user_id="p", data_type=SLEEP,
                       timestamps=pd.DatetimeIndex(ends), values=[450, 420], unit="min",
                       device_id="ring", duration_s=lengths)  # fmt: skip
    found = {
        day: published_nights(config, batch, day)
        for day in (date(2026, 10, 31), date(2026, 11, 1), date(2026, 11, 19), date(2026, 11, 20))
    }
    assert [len(found[d]) for d in sorted(found)] == [0, 1, 0, 1]
    across_change = found[date(2026, 11, 1)][0]
    assert across_change["effectivePeriod"] == {
        "start": "2026-10-31T22:00:00-05:00",  # 23:00 EDT, written on the clock of the waking
        "end": "2026-11-01T06:00:00-05:00",
    }
    assert across_change["valueQuantity"]["value"] == 420
    assert found[date(2026, 11, 20)][0]["effectivePeriod"]["start"] == "2026-11-19T22:30:00-05:00"


def test_nights_through_the_real_store_and_publishing_once_each(tmp_path) -> None:
    """A simulated person in New York over three weeks around the clock change: every stored
    night is published once, in the partition of the date they woke up."""
    from ohx_dagster.core.models import DateRange
    from ohx_dagster.fhir.output import FhirOutput
    from ohx_dagster.providers.simulated import SimulatedSource
    from ohx_dagster.publish.partitions import partition_dir, publish_partition
    from ohx_dagster.storage.store import RecordStore
    from ohx_dagster.sync.shards import Shard

    now = datetime(2026, 11, 20, tzinfo=UTC)
    source = SimulatedSource(2, clock=lambda: now)
    config = next(u for u in source.discover_users() if u.timezone == "America/New_York")
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    output = FhirOutput(str(tmp_path / "fhir"))
    store.add_users([config])
    window = DateRange(datetime(2026, 10, 20, tzinfo=UTC), now)
    batch = source.fetch(config, [SLEEP], window)
    assert len(batch) == 31  # the mornings of 2026-10-20 to 2026-11-19
    store.commit("simulated", config.user_id, config, batch)
    for day in sorted(store.unpublished_days("simulated")):
        publish_partition(store, output, provider="simulated", key="simulated",
                          shard=Shard("simulated"), day=day, scope=None, now=now,
                          horizon=timedelta(hours=1))  # fmt: skip
    published: dict[str, date] = {}
    zone = ZoneInfo("America/New_York")
    for n in range(32):
        day = date(2026, 10, 19) + timedelta(days=n)
        directory = partition_dir(day, "simulated")
        manifest = output.manifest(directory) or {"output": []}
        for entry in manifest["output"]:
            for r in output.read_resources(f"{directory}/{entry['url'].rsplit('/', 1)[-1]}"):
                if (
                    r["resourceType"] == "Observation"
                    and r["code"]["coding"][0]["code"] == "93832-4"
                ):
                    assert r["id"] not in published
                    published[r["id"]] = day
                    end = parse_us(r["effectivePeriod"]["end"])
                    assert datetime.fromtimestamp(end / 1e6, UTC).astimezone(zone).date() == day
    assert len(published) == len(batch)
    store.dispose()


# -- stages ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stages", "named"),
    [
        ([0, 600, 4, 500, 900, 1], "interval 1"),  # overlaps the one before
        ([0, 600, 4, 600, 30_000, 2], "interval 1"),  # beyond the session's 25,200 s
        ([0, 600, 7], "interval 0"),  # no such stage
        ([600, 600, 2], "interval 0"),  # empty
        ([0, 600], "triples"),
    ],
)
def test_stages_not_inside_the_night_are_refused_naming_the_interval(
    stages: list[float], named: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        make_batch(provider="oura", user_id="p", data_type=SLEEP,
                   timestamps=pd.DatetimeIndex([FIRST]), values=[400], unit="min",
                   duration_s=[25_200], samples=[stages])  # fmt: skip
    message = str(caught.value)
    assert named in message and "\n" not in message


@pytest.mark.parametrize(
    ("duration", "value", "field"),
    [(-1, 0, "duration_s"), (90_000, 60, "duration_s"), (3600, 61.1, "value")],
)
def test_a_session_longer_than_a_day_or_more_asleep_than_long_is_refused(
    duration: float, value: float, field: str
) -> None:
    with pytest.raises(ValidationError, match=field):
        make_batch(provider="oura", user_id="p", data_type=SLEEP,
                   timestamps=pd.DatetimeIndex([FIRST]), values=[value], unit="min",
                   duration_s=[duration])  # fmt: skip


@given(st.text(alphabet="1234", min_size=1, max_size=400))
@settings(max_examples=examples(200))
def test_a_hypnogram_becomes_runs_whose_totals_are_its_steps(text: str) -> None:
    rows = stage_intervals(from_hypnogram(text, 30.0), len(text) * 30.0)
    totals = stage_totals(rows)
    assert totals.deep == text.count("1") * 30
    assert totals.light == text.count("2") * 30
    assert totals.rem == text.count("3") * 30
    assert (rows[1:, 2] != rows[:-1, 2]).all()  # runs: no two neighbours of one stage
    asleep = [i for i, c in enumerate(text) if c != "4"]
    between = text[asleep[0] : asleep[-1] + 1] if asleep else ""
    assert totals.awake_after_onset == between.count("4") * 30
    assert totals.awakenings == len(re.findall("4+", between))


@given(
    st.lists(
        st.tuples(st.integers(0, 36_000), st.integers(1, 7_200), st.sampled_from(list(Stage))),
        min_size=1,
        max_size=30,
    )
)
@settings(max_examples=examples(200))
def test_overlapping_records_count_every_second_once(drawn: list[tuple[int, int, Stage]]) -> None:
    starts = np.array([s for s, _, _ in drawn], dtype="float64")
    ends = starts + np.array([n for _, n, _ in drawn], dtype="float64")
    stages = np.array([int(k) for _, _, k in drawn], dtype="float64")
    rows = stage_intervals(merge_intervals(starts, ends, stages), float(ends.max()))
    covered = np.zeros(int(ends.max()), dtype=bool)
    for start, end in zip(starts.astype(int), ends.astype(int), strict=True):
        covered[start:end] = True
    assert (rows[:, 1] - rows[:, 0]).sum() == covered.sum()


def test_wake_after_onset_counts_only_waking_between_sleeps() -> None:
    rows = np.array(
        [[0, 600, 4], [600, 3600, 2], [3600, 3900, 4], [3900, 7200, 3], [7200, 7500, 4],
         [7500, 9000, 1], [9000, 9600, 4]], dtype="float64",
    )  # fmt: skip
    totals = stage_totals(rows)
    assert totals.awake_after_onset == 600  # 300 + 300; not the 600 before or after
    assert totals.awakenings == 2
    assert totals.asleep == 3000 + 3300 + 1500


# -- workouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("measures", "named"),
    [
        ([30_000, np.nan, np.nan, np.nan], "energy"),  # 30,000 kcal
        ([300, -5, np.nan, np.nan], "distance"),
        ([300, 5_000, 170, 150], "mean_heart_rate"),  # mean above the highest
        ([300, 5_000], "measures"),
    ],
)
def test_a_workouts_measures_outside_what_a_device_gives_are_refused(
    measures: list[float], named: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        make_batch(provider="oura", user_id="p", data_type=HealthDataType.WORKOUT,
                   timestamps=pd.DatetimeIndex([FIRST]), values=[45], unit="min",
                   duration_s=[2_700], samples=[measures], context="running")  # fmt: skip
    assert named in str(caught.value) and "\n" not in str(caught.value)


def test_a_workout_across_midnight_is_on_the_day_it_ended_as_the_ig_panel() -> None:
    """Kolkata (+05:30): a run from 23:40 to 00:25 is on the second day, once: a panel whose
    members hold the activity, 45 minutes, the energy, distance and heart rates reported."""
    zone = ZoneInfo("Asia/Kolkata")
    config = HealthSyncConfig("p", "simulated", timezone="Asia/Kolkata")
    end = datetime(2026, 11, 21, 0, 25, tzinfo=zone)
    batch = make_batch(provider="simulated", user_id="p", data_type=HealthDataType.WORKOUT,
                       timestamps=pd.DatetimeIndex([end]), values=[45], unit="min",
                       device_id="watch", duration_s=[2_700], context="running",
                       samples=[[410.5, 7_200, 148, 171]])  # fmt: skip
    found = {}
    for day in (date(2026, 11, 20), date(2026, 11, 21)):
        data = BucketData("simulated", day, {"p": config}, [], batch)
        resources = bucket_resources(data, pd.DataFrame(), pd.DataFrame(), {}, recorded_us=0)
        found[day] = [r for r in resources if r["resourceType"] == "Observation"]
    assert found[date(2026, 11, 20)] == []
    panel, *members = found[date(2026, 11, 21)]
    assert panel["code"]["coding"][0]["code"] == "PAPanel"
    assert panel["effectivePeriod"] == {"start": "2026-11-20T23:40:00+05:30",
                                        "end": "2026-11-21T00:25:00+05:30"}  # fmt: skip
    assert [m["reference"] for m in panel["hasMember"]] == [
        f"Observation/{m['id']}" for m in members
    ]
    values = {
        m["code"]["coding"][0]["code"]: m.get("valueQuantity") or m["valueCodeableConcept"]
        for m in members
    }
    assert values["73985-4"] == {"text": "running"}
    assert (values["55411-3"]["value"], values["55411-3"]["code"]) == (45, "min")
    assert (values["55424-6"]["value"], values["55424-6"]["code"]) == (410.5, "kcal")
    assert (values["distance"]["value"], values["distance"]["code"]) == (7_200, "m")
    assert (values["55425-3"]["value"], values["55426-1"]["value"]) == (148, 171)
    assert all(m["effectivePeriod"] == panel["effectivePeriod"] for m in members)


# -- a night told as totals (Withings' sleep summaries) -------------------------------------------


@given(
    st.integers(1_800, 43_200),
    st.lists(st.floats(0, 0.6, allow_nan=False), min_size=4, max_size=4),
    st.integers(0, 30),
)
@settings(max_examples=examples(200))
def test_a_summary_is_accepted_exactly_when_its_sleep_and_waking_fit_the_night(
    length: int, shares: list[float], awakenings: int
) -> None:
    deep, light, rem, waso = (round(share * length) for share in shares)
    parts = stage_summary(deep=deep, light=light, rem=rem, awake_after_onset=waso,
                          awakenings=awakenings)  # fmt: skip
    fits = deep + light + rem + waso <= length + 1
    if fits:
        checked = check_parts("sleep", parts, length)
        totals = night_totals(checked, length)
        assert (totals.deep, totals.light, totals.rem) == (deep, light, rem)
        assert totals.asleep == deep + light + rem and totals.awakenings == awakenings
    else:
        with pytest.raises(ValidationError, match="within the session's"):
            check_parts("sleep", parts, length)


@pytest.mark.parametrize(
    ("parts", "field"),
    [
        (stage_summary(deep=-1.0), "deep"),
        (stage_summary(awakenings=1.5), "awakenings"),
        (stage_summary(light=np.inf), "light"),
        (stage_summary()[:5], "stages"),
    ],
)
def test_a_summary_not_of_seconds_and_counts_is_refused_in_one_line(
    parts: list[float], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        make_batch(provider="withings", user_id="p", data_type=SLEEP,
                   timestamps=pd.DatetimeIndex([FIRST]), values=[400], unit="min",
                   duration_s=[25_200], samples=[parts])  # fmt: skip
    assert str(caught.value).startswith(field) and "\n" not in str(caught.value)


def test_a_summarised_night_is_published_as_told_and_an_unstaged_one_without_stages() -> None:
    config = HealthSyncConfig(user_id="p", provider="withings", timezone="UTC")
    told = stage_summary(deep=5_820, light=10_440, rem=2_400, awake_after_onset=1_380,
                         awakenings=1)  # fmt: skip
    elsewhere = stage_summary(asleep_unstaged=18_000)
    batch = make_batch(provider="withings", user_id="p", data_type=SLEEP,
                       timestamps=pd.DatetimeIndex([FIRST + timedelta(hours=7),
                                                    FIRST + timedelta(days=1, hours=7)]),
                       values=[18_660, 18_000], unit="s", duration_s=[21_720, 21_720],
                       samples=[told, elsewhere])  # fmt: skip
    first, second = (
        published_nights(config, batch, day) for day in (FIRST.date(), FIRST.date() + timedelta(1))
    )
    (night,) = first
    assert {c["code"]["coding"][0]["code"]: c.get("valueQuantity", {}).get("value")
            for c in night["component"]} == {"93831-6": 97, "93830-8": 174, "93829-0": 40,
                                             "wakeAfterSleepOnset": 23,
                                             "numberOfAwakenings": None}  # fmt: skip
    assert night["component"][-1]["valueInteger"] == 1
    (unstaged,) = second
    assert unstaged["valueQuantity"]["value"] == 300 and "component" not in unstaged
