"""A bad configuration is refused when the code location loads, with the variable named."""

import pytest

from ohx_dagster.config.settings import Settings
from ohx_dagster.core.errors import ConfigError
from ohx_dagster.providers.registry import CATALOG


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OHX_SOURCES": "simulated,fitbit"}, "unknown source 'fitbit'"),
        ({"OHX_SOURCES": " , "}, "OHX_SOURCES is empty"),
        ({"OHX_SOURCES": "fitabase"}, "OHX_FITABASE_DIR is not set"),
        ({"OHX_FITABASE_DIR": "/data"}, "OHX_FITABASE_TZ is not set"),
        ({"OHX_POLAR_TZ": "Mars/Olympus"}, "OHX_POLAR_TZ"),
        ({"OHX_PUBLISH_AMBIGUOUS": "maybe"}, "OHX_PUBLISH_AMBIGUOUS"),
        ({"OHX_SOURCES": "polar"}, "OHX_POLAR_CSV is not set"),
        ({"OHX_SOURCES": "apple_health"}, "OHX_APPLE_HEALTH_EXPORT is not set"),
        ({"OHX_SOURCES": "oura"}, "OHX_OURA_CLIENT_ID and OHX_OURA_CLIENT_SECRET"),
        (
            {"OHX_SOURCES": "withings", "OHX_WITHINGS_CLIENT_ID": "an-app-id"},
            "OHX_WITHINGS_CLIENT_SECRET",
        ),
        ({"OHX_PARTITIONS_START": "12/04/2016"}, "OHX_PARTITIONS_START='12/04/2016'"),
        ({"OHX_SIMULATED_USERS": "three"}, "OHX_SIMULATED_USERS='three'"),
        ({"OHX_SIMULATED_USERS": "-1"}, "OHX_SIMULATED_USERS='-1'"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env, catalog=CATALOG)
    assert named in str(raised.value)


def test_a_bad_time_zone_names_the_zone() -> None:
    with pytest.raises(ConfigError, match="OHX_FITABASE_TZ='Mars/Olympus': expected an IANA zone"):
        Settings.from_env({"OHX_FITABASE_TZ": "Mars/Olympus"})


def test_defaults_and_derived_paths(tmp_path) -> None:
    settings = Settings.from_env({"OHX_HOME": str(tmp_path)})
    assert settings.sources == ("simulated",)
    assert settings.database_url == f"sqlite:///{tmp_path / 'ohx.db'}"
    assert settings.fhir_dir == str(tmp_path / "fhir")
    with_fitabase = Settings.from_env(
        {"OHX_HOME": str(tmp_path), "OHX_FITABASE_DIR": "/data", "OHX_FITABASE_TZ": "UTC"}
    )
    assert with_fitabase.sources == ("simulated", "fitabase")
    assert with_fitabase.live_sources == ("simulated",)
