"""Connect the simulated users to the embedded store, so a fresh install shows them at once.

`python -m ohx_dagster.seed` (the README's run command does it): the new-user sensor then sees
them connected and backfills their history; without it they appear on the first scheduled sync.
"""

from __future__ import annotations

from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.settings import Settings
from ohx_dagster.store import RecordStore


def main() -> None:
    settings = Settings.from_env()
    if "simulated" not in settings.sources:
        print("OHX_SOURCES has no 'simulated': nothing to seed")
        return
    store = RecordStore(settings.database_url)
    source = SimulatedSource(settings.simulated_users, seed=settings.simulated_seed)
    added = store.add_users(source.discover_users())
    print(f"simulated users: {added} newly connected, store {settings.database_url}")


if __name__ == "__main__":
    main()
