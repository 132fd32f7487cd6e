"""Where a text is found in a Dagster instance: its runs' tags and config, every event log entry,
its backfills, every row of every table of its SQLite databases, and its other files (captured
logs). The erasure and pseudonymous-run tests search it for people."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

Found = Callable[[str], list[str]]


def storage_hits(instance: dg.DagsterInstance, folder: Path, found: Found) -> dict[str, list[str]]:
    """Place -> what `found` names in the text there (places where it names nothing left out)."""
    hits: dict[str, list[str]] = {}
    for record in instance.get_run_records():
        run = record.dagster_run
        text = json.dumps([run.tags, run.run_config], default=str)
        text += " ".join(str(e) for e in instance.all_logs(run.run_id))
        if names := found(text):
            hits[f"run {run.run_id} {run.tags.get('dagster/partition')}"] = names
    for backfill in instance.get_backfills():
        if names := found(json.dumps(dict(backfill.tags))):
            hits[f"backfill {backfill.backfill_id}"] = names
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".db":
            engine = sa.create_engine(f"sqlite:///{path}")
            with engine.connect() as conn:
                for table in sa.inspect(engine).get_table_names():
                    for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                        if names := found(repr(tuple(row))):
                            hits[f"{path.name}:{table}"] = names
            engine.dispose()
        elif not path.name.endswith(("-wal", "-shm", "-journal")) and (
            names := found(path.read_bytes().decode("latin-1"))
        ):
            hits[str(path.relative_to(folder))] = names
    return hits
