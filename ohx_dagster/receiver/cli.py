"""`ohx-webhooks`: serve the webhook receiver with uvicorn.

    ohx-webhooks --host 127.0.0.1 --port 8787

The store is OHX_DATABASE_URL (default: SQLite under OHX_HOME, see ohx_dagster/config/storage.py),
the same store the Dagster code location reads, so the webhook sensor sees what this process
commits. Provider secrets and the receiver's limits (timeouts, connection limit, rate limit per
client address, trusted proxies): ohx_dagster/config/receiver.py, each limit also a flag here that
wins over its variable. A bad setting stops the process at startup with a message naming the
variable or flag. Account connection (/connect, /oauth/<provider>/callback): see
ohx_dagster/receiver/connect.py. GET /healthz answers {"status": "ok", "providers": [...]}.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from ohx_dagster.config.receiver import (
    LIMIT_VARIABLES,
    SIMULATED_SECRET,
    ReceiverLimits,
    WebhookSecrets,
)
from ohx_dagster.config.settings import Settings
from ohx_dagster.core.errors import ConfigError
from ohx_dagster.providers.registry import CATALOG
from ohx_dagster.receiver.app import create_app
from ohx_dagster.receiver.connect import ConnectConfig
from ohx_dagster.receiver.serve import server_config
from ohx_dagster.storage.store import RecordStore

log = logging.getLogger("ohx_dagster.receiver")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ohx-webhooks", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8787, help="port, 0 = any free (default 8787)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    for limit in LIMIT_VARIABLES:
        default = getattr(ReceiverLimits(), limit.field)
        shown = ",".join(default) if isinstance(default, tuple) else default
        if limit.field.endswith("_s"):
            shown = f"{default:g} s"
        parser.add_argument(
            limit.flag,
            dest=limit.field,
            metavar="SECONDS"
            if limit.field.endswith("_s")
            else "LIST"
            if isinstance(default, tuple)
            else "N",
            help=f"{limit.help} (env {limit.env}, default {shown or 'none'})",
        )
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env(catalog=CATALOG)
        secrets = WebhookSecrets.from_env()
        flags = {limit.field: getattr(args, limit.field) for limit in LIMIT_VARIABLES}
        limits = ReceiverLimits.from_env(flags=flags)
        connect = ConnectConfig.from_env()
    except ConfigError as exc:
        print(f"ohx-webhooks: configuration error: {exc}", file=sys.stderr)
        return 2
    for provider, mounted in secrets.mounted.items():
        if mounted:
            log.info("mounted /webhooks/%s", provider)
        else:
            log.info("not mounted /webhooks/%s: its secrets are not set", provider)
    if secrets.simulated_secret is not None:
        log.warning(
            "/webhooks/simulated is a development route: unset %s in production", SIMULATED_SECRET
        )
    log.info(
        "limits: head %g s, body %g s, keep-alive %d s, %d connections (%s per address), %s, "
        "client address from %s",
        limits.header_timeout_s,
        limits.body_timeout_s,
        limits.keep_alive_s,
        limits.max_connections,
        limits.max_connections_per_address or "no cap",
        f"{limits.rate_per_minute}/min per address (burst {limits.rate_burst})"
        if limits.rate_per_minute
        else "no rate limit",
        f"X-Forwarded-For via {','.join(limits.trusted_proxies)}"
        if limits.trusted_proxies
        else "the socket",
    )
    if connect is None:
        log.info("not mounted /connect: OHX_OAUTH_REDIRECT_BASE is not set")
    else:
        log.info("mounted /connect for %s", sorted(connect.providers) or "no provider")
    store = RecordStore(settings.database_url)
    try:
        app = create_app(store, secrets, limits=limits, connect=connect)
    except ConfigError as exc:  # OHX_TOKEN_KEY missing while a provider is connectable
        store.dispose()
        print(f"ohx-webhooks: configuration error: {exc}", file=sys.stderr)
        return 2
    server = uvicorn.Server(
        server_config(app, limits, host=args.host, port=args.port, log_level=args.log_level)
    )
    try:
        server.run()
    finally:
        store.dispose()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
