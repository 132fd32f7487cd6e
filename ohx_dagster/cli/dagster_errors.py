"""Mistakes a person makes at the `dagster` CLI, answered in one line instead of a traceback.

`dagster asset materialize -m ohx_dagster.definitions --partition KEY` (and `dagster job execute
-c config.yaml`) load this code location in their own process and let Dagster's exceptions for a
partition key outside the partitions, or for run config that does not fit a job's schema, end the
process with a 54-76-line traceback. The code location installs `install()`'s hook: for those two
exceptions it prints what is expected (the valid days and sources, and the setting to change; or
each config error with its path), for anything else it is Python's own hook.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from types import TracebackType

import dagster as dg

_PARTITION_KEY = re.compile(r"partition key `([^`]*)`")


def explain(exc: BaseException, partitions: dg.MultiPartitionsDefinition) -> str | None:
    """What to print instead of the traceback of `exc`, or None when it is not a person's
    mistake at the CLI that the project can explain."""
    from assets.partitions import outside_partitions

    for error in _chain(exc):
        if isinstance(error, dg.DagsterInvalidConfigError):
            return str(error).strip()
        if isinstance(error, (dg.DagsterInvalidSubsetError, dg.DagsterUnknownPartitionError)):
            match = _PARTITION_KEY.search(str(error))
            if match is not None:
                return outside_partitions(partitions, match.group(1))
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def install(partitions: dg.MultiPartitionsDefinition) -> None:
    """Answer the CLI's partition and config errors in this process in one line each."""
    previous: Callable[[type[BaseException], BaseException, TracebackType | None], object]
    previous = sys.excepthook
    if getattr(previous, "_ohx_cli_errors", False):
        previous = previous.__wrapped__  # type: ignore[attr-defined]

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        problem = explain(exc, partitions)
        if problem is None:
            previous(kind, exc, tb)
            return
        for line in problem.splitlines():
            print(f"Error: {line.strip()}", file=sys.stderr)

    hook._ohx_cli_errors = True  # type: ignore[attr-defined]
    hook.__wrapped__ = previous  # type: ignore[attr-defined]
    sys.excepthook = hook
