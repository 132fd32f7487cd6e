"""What a file source refuses before anything reaches the store: hostile input refused cheaply.

- Samples dated outside the plausible dates (from OHX_EARLIEST_SAMPLE_DATE, 2000-01-01 by default,
  to tomorrow of the run's clock, both UTC days) are refused and counted: a heart rate from 1900
  or from 9999 is a broken clock or a forged file, and an import spans every day from its first
  sample to its last, so one such sample would make it sync decades of empty days.
- A zip whose export.xml would inflate beyond MAX_UNCOMPRESSED bytes, or more than MAX_RATIO
  times its compressed size, is refused before it is read (a zip bomb); the sizes are the
  archive's own, and Python's zipfile never inflates a member past the size it declares.
- A file a folder source reaches through a symbolic link that leads outside the folder given
  is refused: an export folder names what may be read, nothing beyond it.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from ohx_dagster.config.locations import Location
from ohx_dagster.core.errors import ValidationError

EARLIEST_SAMPLE: Final = date(2000, 1, 1)
SETTING: Final = "OHX_EARLIEST_SAMPLE_DATE"
# An export.xml of ten years of an Apple Watch is a few GB; 1,032:1 is deflate's own limit, and
# the real export in ../shared/data deflates 19:1 (20:1 at level 9): 100:1 leaves room for
# repetitive exports while a bomb (1 MB inflating to 1 GB) stops at its central directory.
MAX_UNCOMPRESSED: Final = 16 * 1024**3
MAX_RATIO: Final = 100
_EPOCH: Final = date(1970, 1, 1)
_DAY_US: Final = 86_400_000_000


@dataclass(frozen=True, slots=True)
class PlausibleDates:
    """The UTC days a sample may be dated on: `earliest` .. `latest`, both included."""

    earliest: date
    latest: date

    @classmethod
    def at(cls, now: datetime, earliest: date = EARLIEST_SAMPLE) -> PlausibleDates:
        """From `earliest` to tomorrow of `now` (the run's clock)."""
        return cls(earliest, now.astimezone(UTC).date() + timedelta(days=1))

    @property
    def start_us(self) -> int:
        """The first plausible instant, microseconds since the epoch."""
        return (self.earliest - _EPOCH).days * _DAY_US

    @property
    def end_us(self) -> int:
        """The first instant after the plausible dates (exclusive)."""
        return ((self.latest - _EPOCH).days + 1) * _DAY_US

    def holds_us(self, utc_us: int) -> bool:
        return self.start_us <= utc_us < self.end_us

    def outside(self, stamps: pd.DatetimeIndex | pd.Series) -> np.ndarray:
        """Which of the UTC timestamps lie outside."""
        start = pd.Timestamp(self.earliest, tz=UTC)
        end = pd.Timestamp(self.latest + timedelta(days=1), tz=UTC)
        return np.asarray((stamps < start) | (stamps >= end), dtype=bool)

    def __str__(self) -> str:
        return f"{self.earliest} .. {self.latest}"


@dataclass
class RefusedDates:
    """Samples a source refused for their date, per data type, and the first one as an example."""

    dates: PlausibleDates
    by_type: Counter[str] = field(default_factory=Counter)
    example: str = ""

    @property
    def total(self) -> int:
        return sum(self.by_type.values())

    def add(self, data_type: str, count: int, example: str) -> None:
        if count <= 0:
            return
        self.by_type[data_type] += count
        if not self.example:
            self.example = example

    def keep(self, records: pd.DataFrame, where: str) -> pd.DataFrame:
        """The records dated inside; the others are counted here."""
        if records.empty:
            return records
        outside = self.dates.outside(records["ts"])
        if not outside.any():
            return records
        kinds = records["data_type"].to_numpy()[outside]
        first = records["ts"].iloc[int(np.flatnonzero(outside)[0])]
        for kind, count in Counter(kinds.tolist()).items():
            self.add(str(kind), count, f"{first.isoformat()} ({where})")
        return records[~outside].reset_index(drop=True)

    def line(self) -> str:
        """One line for the person importing: how many, of which types, and why."""
        if not self.total:
            return ""
        types = ", ".join(f"{kind} {n:,}" for kind, n in sorted(self.by_type.items()))
        return (
            f"Refused {self.total:,} sample{'s' if self.total != 1 else ''} dated outside the "
            f"plausible dates {self.dates} ({SETTING} to tomorrow, UTC): {types}; the first: "
            f"{self.example}"
        )


def check_archive_member(archive: str, member: zipfile.ZipInfo) -> None:
    """Refuses a member that would inflate beyond the limits, by the sizes the zip declares."""
    size, packed = member.file_size, member.compress_size
    ratio = size / max(packed, 1)
    if size > MAX_UNCOMPRESSED or ratio > MAX_RATIO:
        raise ValidationError(
            "archive",
            archive,
            f"a zip whose {member.filename} inflates to at most {MAX_UNCOMPRESSED / 1024**3:g} "
            f"GiB and at most {MAX_RATIO}:1 (it says {size:,} bytes from {packed:,}, "
            f"{ratio:,.0f}:1: a zip bomb, or not an export the Health app wrote)",
        )


def inside(folder: Location, path: Location, setting: str) -> Location:
    """`path`, when it is `folder`'s own or a symbolic link that stays inside `folder`; a link
    leading outside is refused (an export folder names what may be read, nothing beyond it).
    Object-store locations have no links and are returned as they are."""
    if not isinstance(path, Path) or not isinstance(folder, Path):
        return path
    target = path.resolve()
    if not target.is_relative_to(folder.resolve()):
        raise ValidationError(
            setting,
            str(path),
            f"a file inside {folder}, not a symbolic link leading out of it (it leads to {target})",
        )
    return path
