"""Person ids never go into log lines in clear (issue 19): the failure paths of the provider
modules and the receiver log the person by their salted subject, and a database error's message
holds no statement parameters. Each test runs real failure paths against local HTTP servers
(a provider answering 403, 429 and 500 and refusing a token refresh, the receiver refusing
webhooks and failing to write its inbox, the connect flow's after-connect step failing) and
reads every log record, its traceback included, for the ids."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from provider_api_server import FakeApi, answer

from ohx_dagster.config.receiver import WebhookSecrets
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.privacy.subjects import erasure_salt, short, subject_hash
from ohx_dagster.providers.api.source import ApiSettings
from ohx_dagster.providers.api.subscription import SubscriptionSettings, subscribe_after_connect
from ohx_dagster.providers.api.tokens import OAuthClient, OAuthTokens, connect_user
from ohx_dagster.providers.oura import OuraSource
from ohx_dagster.providers.oura.source import HEARTRATE
from ohx_dagster.providers.registry import API_PROVIDERS
from ohx_dagster.receiver.app import create_app
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import SyncFailed, sync_partition

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
DAY = NOW.date() - timedelta(days=1)
LATER = NOW + timedelta(hours=1)  # the expired person's token is refreshed first
OURA_PERSON = "oura-person-in-clear-4711"
OURA_EXPIRED = "oura-person-expired-0815"
WITHINGS_PERSON = "90210555"  # Withings ids are numbers
WITHINGS_GONE = "90210777"  # not connected (erased, say)
CALLBACK_TOKEN = "withings-callback-token"
FORM = {"content-type": "application/x-www-form-urlencoded"}


def leaks(records: Iterable[logging.LogRecord], ids: Iterable[str]) -> list[str]:
    """The log records (message and traceback) that hold one of the ids as a whole word."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    patterns = [re.compile(rf"(?<![0-9A-Za-z]){re.escape(i)}(?![0-9A-Za-z])") for i in ids]
    found = []
    for record in records:
        text = formatter.format(record)
        if any(p.search(text) for p in patterns):
            found.append(text)
    return found


def shown(provider: str, user_id: str) -> str:
    return short(subject_hash(provider, user_id, salt=erasure_salt()))


def test_a_provider_answering_403_429_500_and_refusing_a_refresh_logs_no_person_id(
    api: FakeApi, tmp_path: Path, token_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    heart = frozenset({HealthDataType.HEART_RATE})
    # Every answer quotes the person, as providers' error bodies may.
    api.on(
        "/oauth/token",
        lambda call: answer(400, {"error": "invalid_grant", "error_description": OURA_EXPIRED}),
    )
    settings = ApiSettings(
        "oura", api.base_url, OAuthClient("oura", f"{api.base_url}/oauth/token", "cid", "cs")
    )
    outcomes = {}
    for status in (403, 500, 429):  # each against a store of its own: a 429 stops the app
        store = RecordStore(f"sqlite:///{tmp_path / f'{status}.db'}")
        for user_id, expires in ((OURA_PERSON, NOW + timedelta(days=1)), (OURA_EXPIRED, NOW)):
            config = HealthSyncConfig(user_id=user_id, provider="oura", enabled_types=heart)
            tokens = OAuthTokens("at-" + user_id, "rt", expires)
            connect_user(store, "oura", user_id, tokens, config)
        api.on(
            HEARTRATE,
            lambda call, s=status: answer(s, {"detail": f"no data for user {OURA_PERSON}"}),
        )
        source = OuraSource(store, settings, backoff_s=0.0, clock=lambda: LATER)
        try:
            outcomes[status] = sync_partition(source, store, DAY, strategy="incremental", now=NOW)
        except SyncFailed as failed:
            outcomes[status] = failed.report
        finally:
            store.dispose()
    # The paths ran: a refusal, a failure, a rate limit, a refresh refused.
    assert OURA_PERSON in outcomes[403].refused
    assert OURA_PERSON in outcomes[500].failures
    assert OURA_PERSON in outcomes[429].deferred
    assert api.calls_to("/oauth/token")
    assert OURA_EXPIRED not in outcomes[403].users_synced
    assert leaks(caplog.records, [OURA_PERSON, OURA_EXPIRED]) == []


def test_the_receivers_refused_webhooks_and_inbox_failures_log_no_person_id(
    sqlite_store: RecordStore, token_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = sqlite_store
    config = HealthSyncConfig(user_id=WITHINGS_PERSON, provider="withings")
    connect_user(store, "withings", WITHINGS_PERSON, OAuthTokens("a", "r"), config)
    secrets = WebhookSecrets(withings_token=CALLBACK_TOKEN)
    notify = "userid={}&appli=1&startdate=1772355000&enddate=1772355600"
    with (
        serve_in_thread(create_app(store, secrets, group_commit=False)) as url,
        httpx.Client(timeout=10) as http,
    ):
        endpoint = f"{url}/webhooks/withings?token={CALLBACK_TOKEN}"

        def post(body: str) -> httpx.Response:
            return http.post(endpoint, content=body.encode(), headers=FORM)

        # An account that is not connected (erased, or never was): refused, by subject.
        unknown = post(notify.format(WITHINGS_GONE))
        assert unknown.status_code == 401
        assert shown("withings", WITHINGS_GONE) in unknown.json()["error"]
        # A body that is no form, its first field the person's id.
        assert post(f"userid={WITHINGS_PERSON}&appli=1&broken").status_code == 400
        # A connected person's notification whose key is over the inbox's column.
        long = notify.format(WITHINGS_PERSON) + "&action=" + "x" * 600
        too_long = post(long)
        assert too_long.status_code == 400 and "event_key" in too_long.text
        # The inbox cannot be written: the database's error, logged with its traceback.
        with store.write() as conn:
            conn.execute(sa.text("ALTER TABLE webhook_inbox RENAME TO webhook_inbox_gone"))
        assert post(notify.format(WITHINGS_PERSON)).status_code == 503
    messages = [r.getMessage() for r in caplog.records]
    assert any("inbox write failed" in m for m in messages), messages
    assert any(f"withings account {shown('withings', WITHINGS_GONE)}" in m for m in messages)
    assert leaks(caplog.records, [WITHINGS_PERSON, WITHINGS_GONE]) == []


def test_a_failed_token_refresh_after_connecting_logs_the_subject_not_the_id(
    api: FakeApi, sqlite_store: RecordStore, token_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = sqlite_store
    config = HealthSyncConfig(user_id=WITHINGS_PERSON, provider="withings")
    expired = OAuthTokens("a", "r", datetime.now(UTC) - timedelta(hours=1))
    connect_user(store, "withings", WITHINGS_PERSON, expired, config)
    api.on(
        "/v2/oauth2",
        lambda call: answer(
            200, {"status": 503, "error": f"invalid refresh for {WITHINGS_PERSON}"}
        ),
    )
    env = {
        "OHX_WITHINGS_CLIENT_ID": "withings-client",
        "OHX_WITHINGS_CLIENT_SECRET": "withings-client-SECRET",
        "OHX_WITHINGS_API_URL": api.base_url,
        "OHX_WITHINGS_TOKEN_URL": f"{api.base_url}/v2/oauth2",
    }
    app = API_PROVIDERS["withings"]
    settings = SubscriptionSettings("https://ohx.example.org", None, CALLBACK_TOKEN)
    results = subscribe_after_connect(
        store, settings, app, ApiSettings.from_env(app, env), config, backoff_s=0.0
    )
    assert results and {r.status for r in results} == {"failed"}
    assert any(WITHINGS_PERSON in r.detail for r in results)  # recorded in the store as it was
    failed = [r.getMessage() for r in caplog.records if "webhook subscription" in r.getMessage()]
    assert failed and all(shown("withings", WITHINGS_PERSON) in m for m in failed), failed
    assert leaks(caplog.records, [WITHINGS_PERSON]) == []


def test_a_failing_after_connect_step_logs_its_traceback_without_the_id(
    sqlite_store: RecordStore,
    token_key: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from provider_api_server import fake_api
    from test_connect import USER_IDS, FakeProviders
    from test_webhooks_subscriptions import WITHINGS_TOKEN, connect_receiver

    caplog.set_level(logging.DEBUG)

    def crash(store: object, settings: object, app: object, api: object, user) -> None:
        raise RuntimeError(f"subscribing {user.user_id} crashed")

    monkeypatch.setattr("ohx_dagster.receiver.connect.subscribe_after_connect", crash)
    with (
        fake_api() as server,
        connect_receiver(
            sqlite_store, FakeProviders(server), withings_token=WITHINGS_TOKEN
        ) as setup,
    ):
        _, done = setup.receiver.connect("withings")
    assert done.status_code == 200
    person = USER_IDS["withings"]
    (line,) = [
        r.getMessage() for r in caplog.records if "after-connect step failed" in r.getMessage()
    ]
    assert "Traceback" in line and "RuntimeError: subscribing" in line
    assert f"subscribing {shown('withings', person)} crashed" in line
    assert leaks(caplog.records, [person]) == []
