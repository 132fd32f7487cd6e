"""`ohx connect <provider> --patient ID`: the link that starts connecting a person's account.

The link is the receiver's connect flow (ohx_dagster/receiver/connect.py):
OHX_OAUTH_REDIRECT_BASE + /connect/<provider>?patient=..&timezone=..&frequency=..&aggregation=..
&lookback_days=.. The receiver wants a staff member's token (`ohx staff add`) in an Authorization
header, never in the link: the curl printed beside it sends it from the shell's OHX_STAFF_TOKEN
and prints the provider's consent page to open in the person's browser. Through the deployment's
proxy a browser can open the link itself: the proxy's login asks for the staff name and token.
Nothing is stored until the person consents.
"""

from __future__ import annotations

import shlex
from urllib.parse import urlencode

import click

from ohx_dagster.core.errors import ConfigError

REDIRECT_BASE = "OHX_OAUTH_REDIRECT_BASE"  # ohx_dagster/config/connect.py
STAFF_TOKEN = "OHX_STAFF_TOKEN"


def connect_link(
    provider: str,
    *,
    patient: str,
    timezone: str = "UTC",
    frequency: str = "hourly",
    aggregation: str = "hourly",
    lookback_days: int = 30,
    base: str,
) -> str:
    params = {
        "patient": patient,
        "timezone": timezone,
        "frequency": frequency,
        "aggregation": aggregation,
        "lookback_days": str(lookback_days),
    }
    return f"{base.rstrip('/')}/connect/{provider}?{urlencode(params)}"


def _base() -> str:
    from ohx_dagster.config.connect import ConnectionSettings

    base = ConnectionSettings.from_env().base_url
    if not base:
        raise ConfigError(
            f"{REDIRECT_BASE} is not set: set it to the receiver's public base URL "
            "(https://...), the one its /connect and /oauth/<provider>/callback routes are under"
        )
    if not base.startswith(("https://", "http://")):
        raise ConfigError(f"{REDIRECT_BASE}={base!r}: expected the receiver's URL, https://...")
    return base


@click.command("connect")
@click.argument("provider")
@click.option("--patient", required=True, help="The person's FHIR Patient id.")
@click.option("--timezone", default="UTC", show_default=True, help="The person's IANA zone.")
@click.option(
    "--frequency",
    type=click.Choice(["realtime", "hourly", "daily"]),
    default="hourly",
    show_default=True,
    help="How often their data is synced.",
)
@click.option(
    "--aggregation",
    type=click.Choice(["individual", "hourly", "daily"]),
    default="hourly",
    show_default=True,
    help="What their FHIR output aggregates.",
)
@click.option(
    "--lookback-days",
    type=click.IntRange(1, 3650),
    default=30,
    show_default=True,
    help="History fetched once connected.",
)
def connect(
    provider: str,
    patient: str,
    timezone: str,
    frequency: str,
    aggregation: str,
    lookback_days: int,
) -> None:
    """Print the receiver's link that connects PROVIDER (oura, withings, google_health) for a
    patient: the person signs in at the provider, and their history is synced by itself."""
    from ohx_dagster.providers.api.connect import STATE_TTL, sync_config
    from ohx_dagster.providers.registry import API_PROVIDERS

    if provider not in API_PROVIDERS:
        raise click.BadParameter(
            f"{provider!r}: expected one of {', '.join(API_PROVIDERS)}", param_hint="PROVIDER"
        )
    # The receiver's own validation, here first: a bad value is named now, not in a browser.
    sync_config(
        provider,
        fhir_patient_id=patient,
        timezone=timezone,
        sync_frequency=frequency,
        aggregation=aggregation,
        lookback_days=lookback_days,
    )
    base = _base()
    link = connect_link(
        provider,
        patient=patient,
        timezone=timezone,
        frequency=frequency,
        aggregation=aggregation,
        lookback_days=lookback_days,
        base=base,
    )
    minutes = int(STATE_TTL.total_seconds() // 60)
    click.echo("Connect link (a staff token goes in an Authorization header, never the link):")
    click.echo(link)
    click.echo("Start it with (prints the provider's consent page):")
    click.echo(
        f'curl -sS -o /dev/null -w "%{{redirect_url}}\\n" '
        f'-H "Authorization: Bearer ${STAFF_TOKEN}" {shlex.quote(link)}'
    )
    click.echo(
        f"then open that page in the person's browser within {minutes} minutes ({STAFF_TOKEN}: "
        "your token from `ohx staff add`; behind the deployment's proxy a browser opens the link "
        "itself after the staff login)."
    )
