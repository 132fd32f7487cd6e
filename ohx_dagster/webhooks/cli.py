"""`ohx-webhooks`: serve the webhook receiver with uvicorn.

    ohx-webhooks --host 127.0.0.1 --port 8787

The store is OHX_DATABASE_URL (default: SQLite under OHX_HOME, see ohx_dagster/settings.py), the
same store the Dagster code location reads, so the webhook sensor sees what this process commits.
Provider secrets: ohx_dagster/webhooks/config.py. A bad setting stops the process at startup with
a message naming the variable. Account connection (/connect, /oauth/<provider>/callback): see
ohx_dagster/webhooks/connect.py. GET /healthz answers {"status": "ok", "providers": [...]}.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from ohx_dagster.errors import ConfigError
from ohx_dagster.settings import Settings
from ohx_dagster.store import RecordStore
from ohx_dagster.webhooks.app import create_app
from ohx_dagster.webhooks.config import SIMULATED_DEV_SECRET, WebhookSecrets
from ohx_dagster.webhooks.connect import ConnectConfig

log = logging.getLogger("ohx_dagster.webhooks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ohx-webhooks", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8787, help="port, 0 = any free (default 8787)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        secrets = WebhookSecrets.from_env()
        connect = ConnectConfig.from_env()
    except ConfigError as exc:
        print(f"ohx-webhooks: configuration error: {exc}", file=sys.stderr)
        return 2
    for provider, mounted in secrets.mounted.items():
        if mounted:
            log.info("mounted /webhooks/%s", provider)
        else:
            log.info("not mounted /webhooks/%s: its secrets are not set", provider)
    if secrets.simulated_secret == SIMULATED_DEV_SECRET:
        log.warning("/webhooks/simulated uses the dev secret: set OHX_SIMULATED_WEBHOOK_SECRET")
    if connect is None:
        log.info("not mounted /connect: OHX_CONNECT_TOKEN is not set")
    else:
        log.info("mounted /connect for %s", sorted(connect.providers) or "no provider")
    store = RecordStore(settings.database_url)
    try:
        app = create_app(store, secrets, connect=connect)
    except ConfigError as exc:  # OHX_TOKEN_KEY missing while a provider is connectable
        store.dispose()
        print(f"ohx-webhooks: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    finally:
        store.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
