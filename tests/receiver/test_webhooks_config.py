"""The receiver's settings from the environment: provider secrets (no route has a default) and
the limits, each also an ohx-webhooks flag; bad values name the variable or flag."""

import pytest

from ohx_dagster.config.receiver import (
    LIMIT_VARIABLES,
    OuraSecrets,
    ReceiverLimits,
    WebhookSecrets,
)
from ohx_dagster.core.errors import ConfigError


def test_secrets_from_env():
    nothing = WebhookSecrets.from_env({})
    assert set(nothing.mounted) == {
        "oura", "withings", "google_health", "polar_accesslink", "simulated"
    }  # fmt: skip
    assert not any(nothing.mounted.values())
    assert nothing.simulated_secret is None  # development route: only when configured
    full = WebhookSecrets.from_env(
        {
            "OHX_OURA_CLIENT_SECRET": "oura-secret",
            "OHX_OURA_VERIFICATION_TOKEN": "oura-token",
            "OHX_WITHINGS_CALLBACK_TOKEN": "withings-token",
            "OHX_SIMULATED_WEBHOOK_SECRET": "simulated-secret",
            "OHX_GOOGLE_HEALTH_WEBHOOK_AUTHORIZATION": "Bearer google-webhook-secret-value",
            "OHX_GOOGLE_HEALTH_WEBHOOK_KEYSET": "https://www.gstatic.com/googlehealthapi/keys",
            "OHX_POLAR_ACCESSLINK_CLIENT_SECRET": "polar-secret",
        }
    )
    assert all(full.mounted.values()), full.mounted
    assert full.oura == OuraSecrets("oura-secret", "oura-token")
    assert full.simulated_secret == "simulated-secret"
    # The legacy Fitbit Web API is gone: its variables mount nothing.
    legacy = {"OHX_WEBHOOK_FITBIT_SECRET": "fitbit-secret", "OHX_WEBHOOK_FITBIT_VERIFY": "verify"}
    assert WebhookSecrets.from_env(legacy) == WebhookSecrets()
    with pytest.raises(ConfigError, match="OHX_OURA_CLIENT_SECRET"):
        WebhookSecrets.from_env({"OHX_OURA_VERIFICATION_TOKEN": "oura-token"})
    # The OAuth app's secret alone (API sync without webhooks) starts, Oura unmounted.
    api_only = WebhookSecrets.from_env({"OHX_OURA_CLIENT_SECRET": "oura-secret"})
    assert api_only.mounted["oura"] is False
    with pytest.raises(ConfigError, match="OHX_WITHINGS_CALLBACK_TOKEN"):
        WebhookSecrets.from_env({"OHX_WITHINGS_CALLBACK_TOKEN": "short"})
    with pytest.raises(ConfigError, match="OHX_SIMULATED_WEBHOOK_SECRET"):
        WebhookSecrets.from_env({"OHX_SIMULATED_WEBHOOK_SECRET": ""})


def test_limits_defaults_environment_and_flags():
    assert ReceiverLimits.from_env({}) == ReceiverLimits()
    assert ReceiverLimits() == ReceiverLimits(
        header_timeout_s=10.0,
        body_timeout_s=10.0,
        keep_alive_s=5,
        max_connections=1_000,
        max_connections_per_address=100,
        rate_per_minute=1_200,
        rate_burst=200,
        trusted_proxies=(),
    )
    env = {
        "OHX_WEBHOOK_HEADER_TIMEOUT_S": "2.5",
        "OHX_WEBHOOK_BODY_TIMEOUT_S": " 3 ",
        "OHX_WEBHOOK_KEEP_ALIVE_S": "7",
        "OHX_WEBHOOK_MAX_CONNECTIONS": "50",
        "OHX_WEBHOOK_MAX_CONNECTIONS_PER_ADDRESS": "0",
        "OHX_WEBHOOK_RATE_PER_MINUTE": "0",
        "OHX_WEBHOOK_RATE_BURST": "9",
        "OHX_WEBHOOK_TRUSTED_PROXIES": "10.0.0.5, 10.1.2.3/16,,2001:db8::1",
    }
    limits = ReceiverLimits.from_env(env)
    assert limits == ReceiverLimits(
        header_timeout_s=2.5,
        body_timeout_s=3.0,
        keep_alive_s=7,
        max_connections=50,
        max_connections_per_address=0,
        rate_per_minute=0,
        rate_burst=9,
        trusted_proxies=("10.0.0.5", "10.1.0.0/16", "2001:db8::1"),  # networks normalized
    )
    flags = {"body_timeout_s": "4", "trusted_proxies": "192.0.2.1", "max_connections": None}
    flagged = ReceiverLimits.from_env(env, flags)
    assert (flagged.body_timeout_s, flagged.trusted_proxies) == (4.0, ("192.0.2.1",))
    assert flagged.max_connections == 50  # a flag not given leaves the variable
    assert {v.field for v in LIMIT_VARIABLES} == set(ReceiverLimits.__dataclass_fields__)
    assert all(
        v.env.startswith("OHX_WEBHOOK_") and v.flag.startswith("--") for v in LIMIT_VARIABLES
    )


@pytest.mark.parametrize(
    ("env", "flags", "named"),
    [
        ({"OHX_WEBHOOK_BODY_TIMEOUT_S": "0"}, {}, "OHX_WEBHOOK_BODY_TIMEOUT_S"),
        ({"OHX_WEBHOOK_BODY_TIMEOUT_S": "nan"}, {}, "OHX_WEBHOOK_BODY_TIMEOUT_S"),
        ({"OHX_WEBHOOK_HEADER_TIMEOUT_S": "soon"}, {}, "OHX_WEBHOOK_HEADER_TIMEOUT_S"),
        ({"OHX_WEBHOOK_KEEP_ALIVE_S": "1.5"}, {}, "OHX_WEBHOOK_KEEP_ALIVE_S"),
        ({"OHX_WEBHOOK_MAX_CONNECTIONS": "0"}, {}, "OHX_WEBHOOK_MAX_CONNECTIONS"),
        ({"OHX_WEBHOOK_MAX_CONNECTIONS_PER_ADDRESS": "-1"}, {}, "_PER_ADDRESS"),
        ({"OHX_WEBHOOK_RATE_PER_MINUTE": "-1"}, {}, "OHX_WEBHOOK_RATE_PER_MINUTE"),
        ({"OHX_WEBHOOK_RATE_BURST": "0"}, {}, "OHX_WEBHOOK_RATE_BURST"),
        ({"OHX_WEBHOOK_TRUSTED_PROXIES": "*"}, {}, "OHX_WEBHOOK_TRUSTED_PROXIES"),
        ({"OHX_WEBHOOK_TRUSTED_PROXIES": "proxy.internal"}, {}, "OHX_WEBHOOK_TRUSTED_PROXIES"),
        ({}, {"rate_burst": "many"}, "--rate-burst"),
        ({"OHX_WEBHOOK_BODY_TIMEOUT_S": "5"}, {"body_timeout_s": "-5"}, "--body-timeout"),
    ],
)
def test_a_bad_limit_names_its_variable_or_flag(env, flags, named):
    with pytest.raises(ConfigError, match=named):
        ReceiverLimits.from_env(env, flags)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"body_timeout_s": 0},
        {"keep_alive_s": 0.5},
        {"max_connections": True},
        {"rate_burst": 0},
        {"trusted_proxies": ("*",)},
    ],
)
def test_limits_built_in_code_are_checked_too(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        ReceiverLimits(**kwargs)
