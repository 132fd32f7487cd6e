"""Connect the simulated users to the embedded store, so a fresh install shows them at once.

`python -m ohx_dagster.cli.seed` (`ohx dev` and scripts/dev do it): the new-user sensor then sees
them connected and backfills their history; without it they appear on the first scheduled sync.
The store is OHX_DATABASE_URL (default $OHX_HOME/ohx.db); OHX_SIMULATED_USERS and
OHX_SIMULATED_SEED say who the simulated users are. Running it again adds no one twice.
"""

from __future__ import annotations

import argparse
import sys

from ohx_dagster.config.settings import Settings
from ohx_dagster.core.errors import OhxError


def seed(settings: Settings) -> str:
    """Connect the simulated users not in the store yet; what was done, in one line."""
    from ohx_dagster.providers.simulated import SimulatedSource
    from ohx_dagster.storage.db import redacted
    from ohx_dagster.storage.store import RecordStore

    if "simulated" not in settings.sources:
        return "OHX_SOURCES has no 'simulated': nothing to seed"
    store = RecordStore(settings.database_url)
    try:
        source = SimulatedSource(settings.simulated_users, seed=settings.simulated_seed)
        added = store.add_users(source.discover_users())
    finally:
        store.dispose()
    return f"simulated users: {added} newly connected, store {redacted(settings.database_url)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ohx_dagster.cli.seed", description=__doc__.split("\n\n")[0]
    )
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.parse_args(argv)
    try:
        from ohx_dagster.providers.registry import CATALOG

        print(seed(Settings.from_env(catalog=CATALOG)))
    except OhxError as exc:
        print(f"seed: configuration error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
