"""The small protocol every source implements: who its users are, and their records in a window."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import pandas as pd

from ohx_dagster.models import DateRange, HealthDataType, HealthSyncConfig


@runtime_checkable
class HealthSource(Protocol):
    """A provider API or an export that yields record batches (see ohx_dagster.records)."""

    name: str

    def discover_users(self) -> list[HealthSyncConfig]:
        """Users the source can enumerate itself (exports, the simulator); [] for OAuth APIs,
        whose users arrive by connecting."""
        ...

    def fetch(
        self,
        user: HealthSyncConfig,
        data_types: Iterable[HealthDataType],
        window: DateRange,
        *,
        batch_size: int,
    ) -> pd.DataFrame:
        """The user's records of these types with timestamps in the window, canonical units."""
        ...
