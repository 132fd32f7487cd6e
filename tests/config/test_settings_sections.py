"""The one Settings object: a section per concern, each parsed from the same environment, and no
secret in the repr or str of any of them (issue 20)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from ohx_dagster.config.settings import Settings
from ohx_dagster.config.sources import parse_per_source
from ohx_dagster.core.errors import ConfigError
from ohx_dagster.providers.registry import (
    API_PROVIDERS,
    CATALOG,
    KNOWN_SOURCES,
    RESYNC_HORIZON,
    SUPPORTED_TYPES,
)

TOKEN_KEY = Fernet.generate_key().decode()
SECRETS = {
    "OHX_DATABASE_URL": "postgresql://ohx:db-password-4711@db.example.org:5432/ohx",
    "OHX_TOKEN_KEY": TOKEN_KEY,
    "OHX_ERASURE_SALT": "erasure-salt-value-0123456789",
    "OHX_OURA_CLIENT_SECRET": "oura-client-secret-4711",
    "OHX_OURA_VERIFICATION_TOKEN": "oura-verification-token-4711",
    "OHX_WITHINGS_CLIENT_SECRET": "withings-client-secret-4711",
    "OHX_WITHINGS_CALLBACK_TOKEN": "withings-callback-token-4711",
    "OHX_GOOGLE_HEALTH_CLIENT_SECRET": "google-client-secret-4711",
    "OHX_GOOGLE_HEALTH_WEBHOOK_AUTHORIZATION": "Bearer google-webhook-secret-4711",
    "OHX_POLAR_ACCESSLINK_CLIENT_SECRET": "polar-client-secret-4711",
    "OHX_POLAR_ACCESSLINK_SIGNATURE_SECRET_KEY": "polar-signature-key-4711",
    "OHX_DEXCOM_CLIENT_SECRET": "dexcom-client-secret-4711",
    "OHX_SIMULATED_WEBHOOK_SECRET": "simulated-webhook-secret-4711",
    "OHX_FHIR_CLIENT_SECRET": "fhir-client-secret-4711",
    "OHX_FHIR_BEARER_TOKEN": "fhir-bearer-token-4711",
    "OHX_FHIR_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nfhir-private-key-4711\n-----END",
}


HOME = Path("/nowhere/ohx-home")  # never created: the settings read it, nothing writes there


@pytest.fixture
def env() -> dict[str, str]:
    """A production-like environment: every provider API and every secret set."""
    return {
        **SECRETS,
        "OHX_HOME": str(HOME),
        "OHX_SOURCES": "simulated," + ",".join(API_PROVIDERS),
        **{
            f"{app.env_prefix}_CLIENT_ID": f"{name}-client-id"
            for name, app in API_PROVIDERS.items()
        },
        "OHX_OAUTH_REDIRECT_BASE": "https://receiver.example.org",
        "OHX_FHIR_SERVER_URL": "https://fhir.example.org/r5",
        "OHX_FHIR_TOKEN_URL": "https://fhir.example.org/token",
        "OHX_FHIR_CLIENT_ID": "fhir-client-id",
        "OHX_FHIR_BATCH_SIZE": "50",
        "OHX_WEBHOOK_RATE_PER_MINUTE": "600",
    }


def sections(settings: Settings) -> dict[str, object]:
    return {
        "storage": settings.storage,
        "apis": settings.apis,
        **{f"api({name})": settings.api(app) for name, app in API_PROVIDERS.items()},
        "connection": settings.connection,
        "subscriptions": settings.subscriptions,
        "receiver": settings.receiver,
        "tokens": settings.tokens,
        "privacy": settings.privacy,
        "fhir_server": settings.fhir_server,
        "fhir_packages": settings.fhir_packages,
        "cli": settings.cli,
    }


def test_no_secret_shows_in_the_settings_or_any_section(env: dict[str, str]) -> None:
    settings = Settings.from_env(env, catalog=CATALOG)
    shown = {"settings": (repr(settings), str(settings))}
    shown |= {name: (repr(section), str(section)) for name, section in sections(settings).items()}
    for name, texts in shown.items():
        for text in texts:
            for variable, secret in SECRETS.items():
                # A multi-line secret (the PEM) shows escaped in a repr: each line must not show.
                for part in secret.removeprefix("Bearer ").splitlines():
                    assert len(part) < 6 or part not in text, f"{variable} in {name}: {text}"
    # Redacted, not left out: what is not secret still shows, a secret shows that it is set.
    assert "postgresql://ohx:***@db.example.org:5432/ohx" in repr(settings)
    assert "oura-client-id" in repr(settings.api(API_PROVIDERS["oura"]))
    assert "client_secret='<redacted>'" in repr(settings.api(API_PROVIDERS["oura"]))
    assert "https://fhir.example.org/r5" in repr(settings.fhir_server)
    assert "bearer_token='<redacted>'" in repr(settings.fhir_server)
    assert "rate_per_minute=600" in repr(settings.receiver)


def test_every_section_reads_the_settings_environment(env: dict[str, str]) -> None:
    settings = Settings.from_env(env, catalog=CATALOG)
    assert settings.storage.database_url == SECRETS["OHX_DATABASE_URL"]
    assert settings.storage.home == settings.home == HOME
    assert set(settings.apis) == set(API_PROVIDERS)
    assert (
        settings.api(API_PROVIDERS["withings"]).oauth.client_secret
        == (SECRETS["OHX_WITHINGS_CLIENT_SECRET"])
    )
    assert settings.connection.redirect_uri("oura") == (
        "https://receiver.example.org/oauth/oura/callback"
    )
    subscriptions = settings.subscriptions
    assert subscriptions is not None
    assert subscriptions.oura_verification_token == SECRETS["OHX_OURA_VERIFICATION_TOKEN"]
    assert settings.receiver.secrets.mounted == dict.fromkeys(
        ("oura", "withings", "google_health", "polar_accesslink", "simulated"), True
    )
    assert settings.receiver.limits.rate_per_minute == 600
    assert settings.tokens.keys == [TOKEN_KEY]
    assert settings.tokens.cipher().decrypt(settings.tokens.cipher().encrypt(b"x")) == b"x"
    assert settings.privacy.salt() == SECRETS["OHX_ERASURE_SALT"].encode()
    assert settings.privacy.audit_retention == timedelta(days=2190) == settings.audit_retention
    assert settings.fhir_server.configured["client_secret"] == "OHX_FHIR_CLIENT_SECRET"
    assert settings.fhir_server.numbers() == {"batch_size": 50}
    # The settings hold the environment they were read from, not the process's.
    assert settings.env == env


def test_a_section_fails_where_it_is_used_not_with_the_settings(env: dict[str, str]) -> None:
    env["OHX_WEBHOOK_RATE_BURST"] = "none"
    env["OHX_TOKEN_KEY"] = "not-a-fernet-key"
    settings = Settings.from_env(env, catalog=CATALOG)
    with pytest.raises(ConfigError, match="OHX_WEBHOOK_RATE_BURST"):
        settings.receiver  # noqa: B018
    with pytest.raises(ConfigError, match="OHX_TOKEN_KEY"):
        settings.tokens.cipher()


def test_the_registry_hands_its_sources_to_the_settings() -> None:
    assert CATALOG.names == KNOWN_SOURCES
    assert set(KNOWN_SOURCES) == set(SUPPORTED_TYPES) == set(RESYNC_HORIZON)
    settings = Settings.from_env({"OHX_RESYNC_HORIZON": "oura=3d"}, catalog=CATALOG)
    assert settings.resync_horizons == {**RESYNC_HORIZON, "oura": timedelta(days=3)}
    with pytest.raises(ConfigError, match=r"^OHX_SOURCES: unknown source 'fitbit'; known: simulat"):
        Settings.from_env({"OHX_SOURCES": "simulated,fitbit"}, catalog=CATALOG)
    with pytest.raises(ConfigError, match=r"\(sources: simulated, fitabase, polar, apple_healt"):
        Settings.from_env({"OHX_MAX_SYNC_LAG": "fitbit=2h"}, catalog=CATALOG)


def test_without_the_catalog_source_names_are_not_checked() -> None:
    settings = Settings.from_env({"OHX_SOURCES": "simulated,fitbit:2"})
    assert settings.source_keys == ("simulated", "fitbit-0", "fitbit-1")
    with pytest.raises(ValueError, match="catalog"):
        settings.resync_horizons  # noqa: B018
    assert parse_per_source("OHX_MAX_SYNC_LAG", "fitbit=2h", minimum=1) == {
        "fitbit": timedelta(hours=2)
    }
    with pytest.raises(ConfigError, match=r"^OHX_MAX_SYNC_LAG: '=2h': expected source=N"):
        parse_per_source("OHX_MAX_SYNC_LAG", "=2h", minimum=1)
