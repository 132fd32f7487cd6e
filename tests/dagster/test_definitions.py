"""The code location as the UI loads it: assets with descriptions, groups and checks; day x source
partitions; the hourly schedule's run requests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from ohx_dagster.config.settings import Settings
from ohx_dagster.definitions import build_definitions
from resources import RecordStoreResource

HEALTH_ASSETS = ["raw_health_records", "hourly_aggregates", "daily_aggregates", "fhir_observations"]


@pytest.fixture
def defs(tmp_path: Path, fitabase_dir: Path) -> dg.Definitions:
    settings = Settings.from_env(
        {
            "OHX_HOME": str(tmp_path / "home"),
            "OHX_FITABASE_DIR": str(fitabase_dir),
            "OHX_FITABASE_TZ": "UTC",
            "OHX_PARTITIONS_START": "2016-03-01",
        }
    )
    assert settings.sources == ("simulated", "fitabase")
    definitions = build_definitions(settings)
    dg.Definitions.validate_loadable(definitions)
    return definitions


def test_every_asset_has_a_description_a_group_and_checks(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert set(HEALTH_ASSETS) <= keys
    checks_by_asset: dict[str, set[str]] = {}
    for check_key in graph.asset_check_keys:
        checks_by_asset.setdefault(check_key.asset_key.to_user_string(), set()).add(check_key.name)
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        assert node.description and len(node.description) > 20, name
        assert node.group_name and node.group_name != "default", name
        assert checks_by_asset.get(name), f"{name} has no checks"
    assert {"plausible_ranges", "linked_heart_rate_present"} <= checks_by_asset[
        "raw_health_records"
    ]
    assert "valid_r5" in checks_by_asset["fhir_observations"]
    assert {"outbox_drained", "server_confirms"} <= checks_by_asset["fhir_delivery"]
    upstream = graph.get(dg.AssetKey("fhir_observations")).parent_keys
    assert dg.AssetKey("daily_aggregates") in upstream


def test_partitions_are_day_by_source(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    for name in HEALTH_ASSETS:
        partitions = graph.get(dg.AssetKey(name)).partitions_def
        assert isinstance(partitions, dg.MultiPartitionsDefinition)
        assert [d.name for d in partitions.partitions_defs] == ["day", "source"]
        keys = partitions.get_partition_keys(current_time=datetime(2016, 5, 13, tzinfo=UTC))
        assert "2016-04-12|fitabase" in keys
        assert "2016-03-01|simulated" in keys
        assert "2016-02-29|fitabase" not in keys
        key = partitions.get_partition_key_from_str("2016-04-12|fitabase")
        assert key.keys_by_dimension == {"day": "2016-04-12", "source": "fitabase"}
        # Days x sources: 73 days from 2016-03-01 through 2016-05-12, two sources.
        assert len(keys) == 2 * 73 + 2  # + today's partition (end_offset=1) for each source


def test_hourly_schedule_requests_one_run_per_source(defs: dg.Definitions, tmp_path: Path) -> None:
    schedule = defs.get_schedule_def("hourly_incremental_sync")
    assert schedule.cron_schedule == "5 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    moment = datetime(2016, 4, 12, 10, 5, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=moment,
            repository_def=defs.get_repository_def(),
            resources={"store": RecordStoreResource(database_url=f"sqlite:///{tmp_path / 's.db'}")},
        )
        requests = list(schedule.evaluate_tick(context).run_requests or [])
    assert [r.partition_key for r in requests] == ["2016-04-12|simulated", "2016-04-12|fitabase"]
    for request in requests:
        assert request.tags["ohx/strategy"] == "incremental"
        assert request.tags["dagster/priority"] == "0"
        assert request.run_key and "2016-04-12" in request.run_key
    assert len({r.run_key for r in requests}) == 2
    assert schedule.job_name == "sync_partition"
