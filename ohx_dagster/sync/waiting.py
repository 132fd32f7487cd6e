"""Notified windows the provider answered empty: waiting for the provider, never covered.

A webhook can come before the provider has the data (an Oura ring syncs the night two to four days
later, a provider is slow): the push run asks for the window the notification names and gets
nothing. Covering that empty answer would lose the night, since nothing would ask again. So:

- a notified window that answers empty, where the store holds nothing of that type either, is
  waiting: it is left uncovered (an empty answer where data was stored is a deletion at the
  provider: covered, so the stored data goes);
- the schedules' catch-up asks for it again with backoff: 1 h after the empty answer, then 2, 4,
  8, 16 h, then daily (`next_ask_us`; until then a run plans it as if covered);
- it stops waiting when data arrives in it. Once the provider's re-sync horizon has passed since
  the notification it is `late`: `ohx status` and the sync_status check `notified_data_arrived`
  say so, and it is still asked for. After GIVE_UP it is covered (nothing asks again) and kept
  as expired, still reported, until FORGET_AFTER.

The list is one of the person's provider cursors (WAITING), written in the commit that takes the
answer, so it moves with the records and coverage it speaks of.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Final

import orjson
import pandas as pd

from ohx_dagster.core.coverage import Interval, gaps, normalize
from ohx_dagster.core.models import HealthDataType

WAITING: Final = "waiting-for-provider"
GIVE_UP: Final = timedelta(days=14)
FORGET_AFTER: Final = timedelta(days=28)
LONGEST_WAIT: Final = timedelta(days=1)
_US: Final = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Waiting:
    data_type: str
    start_us: int
    end_us: int
    since_us: int  # when the notification's run first got nothing
    asked_us: int  # when it was last asked for
    tries: int = 1
    expired: bool = False

    @property
    def next_ask_us(self) -> int:
        wait = min(timedelta(hours=2 ** (self.tries - 1)), LONGEST_WAIT)
        return self.asked_us + wait // _US

    def late(self, now_us: int, horizon: timedelta) -> bool:
        """Still empty after the provider's re-sync horizon (or given up on)."""
        return self.expired or now_us - self.since_us >= horizon // _US


def not_due(items: Sequence[Waiting], now_us: int) -> dict[str, list[Interval]]:
    """Windows a run must not ask for yet (their backoff), per type."""
    found: dict[str, list[Interval]] = {}
    for item in items:
        if not item.expired and now_us < item.next_ask_us:
            found.setdefault(item.data_type, []).append((item.start_us, item.end_us))
    return found


def load(text: str | None) -> list[Waiting]:
    if not text:
        return []
    return [Waiting(*item) for item in orjson.loads(text)]


def dump(items: Sequence[Waiting]) -> str:
    return orjson.dumps(
        sorted(
            [w.data_type, w.start_us, w.end_us, w.since_us, w.asked_us, w.tries, w.expired]
            for w in items
        )
    ).decode()


def _answered(batch: pd.DataFrame, data_type: str, start: int, end: int) -> bool:
    if batch.empty:
        return False
    rows = batch[batch["data_type"] == data_type]
    stamps = rows["ts"].dt.as_unit("us").astype("int64")
    return bool(((stamps >= start) & (stamps < end)).any())


def _asked(covered: Mapping[str, Sequence[Interval]], item: Waiting) -> bool:
    return any(s <= item.start_us and item.end_us <= e for s, e in covered.get(item.data_type, ()))


def settle(
    pending: Sequence[Waiting],
    announced: Mapping[HealthDataType, Sequence[Interval]] | None,
    batch: pd.DataFrame,
    covered: Mapping[str, Sequence[Interval]],
    *,
    stored: Callable[[str, int, int], bool],
    now_us: int,
) -> tuple[list[Waiting], dict[str, list[Interval]]]:
    """(what is still waiting or expired, the coverage this answer may add) after a fetch that
    covered `covered`: `announced` are the windows this run's notifications named, `stored`
    says whether the store holds the type's data in a window."""
    items = [w for w in pending if now_us - w.since_us < FORGET_AFTER // _US]
    for kind, windows in (announced or {}).items():
        for start, end in normalize((s, min(e, now_us)) for s, e in windows):
            fresh = Waiting(kind.value, start, end, now_us, now_us, tries=0)
            # The answer holds data of the window: nothing waits (and the store is not read:
            # a realtime push answers with data, and that read cost more than its commit).
            if _answered(batch, kind.value, start, end):
                continue
            if _asked(covered, fresh) and not stored(kind.value, start, end):
                items.append(fresh)
    kept: list[Waiting] = []
    for item in items:
        if item.expired or not _asked(covered, item):
            kept.append(item)
        elif _answered(batch, item.data_type, item.start_us, item.end_us):
            continue  # the data came
        elif now_us - item.since_us >= GIVE_UP // _US:
            kept.append(replace(item, expired=True, asked_us=now_us))
        else:
            kept.append(replace(item, asked_us=now_us, tries=item.tries + 1))
    unique = {(w.data_type, w.start_us, w.end_us): w for w in sorted(kept, key=_in_order)}
    kept = list(unique.values())
    open_windows: dict[str, list[Interval]] = {}
    for item in kept:
        if not item.expired:
            open_windows.setdefault(item.data_type, []).append((item.start_us, item.end_us))
    allowed = {
        kind: [
            piece for span in spans for piece in gaps(span, normalize(open_windows.get(kind, [])))
        ]
        for kind, spans in covered.items()
    }
    return kept, allowed


def _in_order(item: Waiting) -> tuple[int, bool]:
    # Of one window's entries the last wins: a newer notification starts its wait again.
    return (item.since_us, item.expired)
