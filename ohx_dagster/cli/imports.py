"""`ohx import`: a data export into the record store, through the same sync as Dagster's runs.

The file is read by its source class (AppleHealthSource, FitabaseSource) whole, and checked,
before anything is stored: a file with an error stores nothing. (An Apple Health export is read
into a temporary file, providers/apple_health/spill.py, not into memory: the import's memory is
the same whatever the number of samples.) Samples dated outside the plausible dates
(OHX_EARLIEST_SAMPLE_DATE to tomorrow, providers/bounds.py) are refused, counted and shown in one
line. Then `sync_partition` with strategy `partition` stores it for every UTC day it spans, in
calls holding at most a week of days with records and, where the source says how many records a
day holds, at most RECORDS_PER_SYNC records unless one day holds more (one fetch and one commit
per person and call, so a call's memory is bounded too; the empty days between are joined to a
call, so a sparse file spanning years costs a few calls, not one per week), so a re-import of the
same file changes nothing. Only the data types the file holds are synced: an export that holds
heart rate only leaves the steps another export stored alone. Within those types the file is the
truth for its days (records of those days it no longer holds are deleted), as for every
partition run.

Each call commits on its own: an import that stops half way (a database gone, a person's
failure) says which days are stored and which are not, and importing the same file again
completes it (what is stored already is unchanged).

Publishing: the store marks every day whose data changed. The days the running Dagster owns (the
source is in its OHX_SOURCES and the day within its partitions, from OHX_PARTITIONS_START to
today: this environment's settings, as Dagster's) are its republish_sensor's, which publishes
them in `refresh` runs the UI shows. Every other changed day of the file the import publishes
itself, with the same step as those runs (publish.publish_partition, validated by
publish.validate_sample), as FHIR R5 bulk NDJSON under OHX_FHIR_DIR (no FHIR server delivery:
that is a Dagster run's); a re-import publishes what an interrupted one left unpublished.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import click

from ohx_dagster.cli import common
from ohx_dagster.core.errors import OhxError, ValidationError

if TYPE_CHECKING:
    import pandas as pd

    from ohx_dagster.config.settings import Settings
    from ohx_dagster.fhir.output import FhirOutput
    from ohx_dagster.providers.base import HealthSource
    from ohx_dagster.providers.bounds import PlausibleDates, RefusedDates
    from ohx_dagster.storage.store import RecordStore
    from ohx_dagster.sync.shards import Shard

DAYS_PER_SYNC = 7
# Records per sync_partition call at most (a day holding more is a call of its own): a week of
# heart rate every 10 s is 60,480.
RECORDS_PER_SYNC = 100_000
ABOUT_EXPORT = {"ExportDate", "Me"}  # export.xml's own metadata elements, not data
FITABASE_REASONS = {
    "dailyActivity_merged.csv": "daily totals: its TotalSteps repeats hourlySteps_merged.csv and "
    "would count the steps twice",
}


@dataclass
class Skipped:
    what: str
    count: int
    why: str


@dataclass
class ImportOutcome:
    source: str
    days: list[date]
    syncs: int = 0  # sync_partition calls
    imported: Counter[str] = field(default_factory=Counter)
    implausible: Counter[str] = field(default_factory=Counter)
    people: set[str] = field(default_factory=set)
    people_skipped: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    # Per person who failed, the (first, last) days of each call that did not store their data.
    failed_days: dict[str, list[tuple[date, date]]] = field(default_factory=dict)
    days_changed: set[date] = field(default_factory=set)


class ImportStopped(OhxError):
    """An import that could not finish: what is stored, what is not, and how to complete it."""


def spanned_days(records: pd.DataFrame) -> list[date]:
    """Every UTC day from the first record's to the last's."""
    first, last = records["ts"].min().date(), records["ts"].max().date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def held_days(records: pd.DataFrame) -> set[date]:
    """The UTC days holding at least one record."""
    return set(records["ts"].dt.floor("D").unique().date)


def sync_calls(
    days: list[date], held: set[date], sizes: Mapping[date, int] | None = None
) -> list[list[date]]:
    """The days in consecutive runs of at most DAYS_PER_SYNC days holding records each and, given
    `sizes` (records per day), at most RECORDS_PER_SYNC records unless one day holds more; the
    empty days between join the run before them (one call stores, or clears, them all)."""
    calls: list[list[date]] = []
    count = records = 0
    for day in days:
        if day in held:
            size = sizes.get(day, 0) if sizes is not None else 0
            if not calls or count == DAYS_PER_SYNC or (count and records + size > RECORDS_PER_SYNC):
                calls.append([])
                count = records = 0
            count += 1
            records += size
        elif not calls:
            calls.append([])
        calls[-1].append(day)
    return calls


def held_types(name: str, records: pd.DataFrame) -> frozenset[Any]:
    from ohx_dagster.core.models import HealthDataType
    from ohx_dagster.providers.registry import SUPPORTED_TYPES

    held = {HealthDataType(t) for t in records["data_type"].unique()}
    return frozenset(held & SUPPORTED_TYPES[name])


def sync_file(
    store: RecordStore,
    source: HealthSource,
    people: Iterable[str],
    days: list[date],
    *,
    held: set[date] | None = None,
    sizes: Mapping[date, int] | None = None,
    progress: Callable[[date, date], None] | None = None,
) -> ImportOutcome:
    """The file's people over its days (`held`: those holding records; default all), at most
    DAYS_PER_SYNC days with records and RECORDS_PER_SYNC records (`sizes`: records per day, when
    the source tells) per sync_partition call."""
    from ohx_dagster.sync.fetch import SyncFailed, sync_partition

    outcome = ImportOutcome(source.name, days)
    wanted = frozenset(people)
    for chunk in sync_calls(days, set(days) if held is None else held, sizes):
        try:
            try:
                report = sync_partition(
                    source, store, chunk, strategy="partition", user_ids=wanted, now=common.now()
                )
            except SyncFailed as failed:
                report = failed.report
            outcome.syncs += 1
            imported, implausible = _file_records(source, report, chunk)
            outcome.imported.update(imported)
            outcome.implausible.update(implausible)
            outcome.people.update(report.users_synced)
            outcome.people_skipped.update(report.users_skipped)
            outcome.failures.update(report.failures)
            for user_id in report.failures:
                outcome.failed_days.setdefault(user_id, []).append((chunk[0], chunk[-1]))
            outcome.days_changed |= report.days_changed
            if progress is not None:
                progress(chunk[0], chunk[-1])
        except (Exception, KeyboardInterrupt) as exc:  # Ctrl-C too: say what is stored
            raise ImportStopped(_stopped(outcome, chunk, exc)) from exc
    outcome.people -= set(outcome.failures) | set(outcome.people_skipped)
    from ohx_dagster.privacy.audit import record_import  # who imported whom, for `ohx audit`
    from ohx_dagster.privacy.identity import erased_among

    records, span = sum(outcome.imported.values()), len(days)
    record_import(store, source.name, outcome.people, outcome.failures, records=records, days=span)
    if erased := erased_among(store, source.name, wanted):  # counted, never named
        click.echo(
            f"{erased} people of the file were erased and stay out until `ohx users readmit`: "
            "purge them from the export itself",
            err=True,
        )
    return outcome


def _file_records(
    source: HealthSource, report: Any, chunk: list[date]
) -> tuple[Mapping[str, int], Mapping[str, int]]:
    """What the call stored of the file, by type: the file's records on the call's UTC days of
    the people it synced, and of those the implausible values. (A call's windows reach into its
    neighbours' days where a person's local day does, so the sync's own counts would count the
    records there twice.) A source that is not a file read by windows: the sync's counts."""
    from ohx_dagster.core.models import DateRange
    from ohx_dagster.core.records import concat
    from ohx_dagster.core.times import utc_day
    from ohx_dagster.sync.quality import implausible_values

    reader = getattr(source, "reader", None)
    if reader is None or not hasattr(reader, "fetch"):
        return report.records_by_type, report.implausible
    window = DateRange(utc_day(chunk[0]).start, utc_day(chunk[-1]).end)
    synced = set(report.users_synced) - set(report.failures)
    people = [c for c in source.discover_users() if c.user_id in synced]
    found = concat(
        reader.fetch(person, source.supported_types, window, batch_size=10_000) for person in people
    )
    if found.empty:
        return {}, {}
    # Counted by the data_type column's text (pandas types the index of counts as Hashable).
    counts = cast("dict[str, int]", found["data_type"].value_counts().to_dict())
    return counts, implausible_values(found)


def _stopped(outcome: ImportOutcome, chunk: list[date], exc: BaseException) -> str:
    from ohx_dagster.cli import _user_error

    if isinstance(exc, KeyboardInterrupt):
        why = "interrupted"
    else:
        why = _user_error(exc) or f"{type(exc).__name__}: {common.one_line(exc)}"
    stored = (
        f"days {outcome.days[0]} .. {chunk[0] - timedelta(days=1)} are stored"
        if chunk[0] > outcome.days[0]
        else "nothing is stored"
    )
    return (
        f"the import stopped at {chunk[0]} ({why}): {stored}; {chunk[0]} .. "
        f"{outcome.days[-1]} may not be: import the same file again to complete it (what is "
        "stored already stays unchanged)"
    )


class _Advance(Protocol):
    def __call__(self, first: date, last: date | None = None) -> None: ...


@contextmanager
def _progress(start: str, verb: str, total: int) -> Iterator[_Advance]:
    """A progress bar on one line that rewrites itself, and is gone when the step ends, when the
    output is a terminal; nothing when it is not (a pipe, a file, a log). Yields advance(first,
    last): the days first .. last (last None: first alone) are done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("days"),
    )
    console = common.console(stderr=True)
    # click.get_text_stream: deprecated in click 8.5 (typed object), the same function until 9.
    shown = console.is_terminal and click.get_text_stream("stdout").isatty()  # type: ignore[operator]
    with Progress(*columns, console=console, transient=True, disable=not shown) as bar:
        task = bar.add_task(start, total=total)

        def advance(first: date, last: date | None = None) -> None:
            end = first if last is None else last
            bar.update(task, advance=(end - first).days + 1, description=f"{verb} {end}")

        yield advance


def run_with_progress(
    store: RecordStore,
    source: HealthSource,
    people: Iterable[str],
    days: list[date],
    held: set[date] | None = None,
    sizes: Mapping[date, int] | None = None,
) -> ImportOutcome:
    """The sync with a progress bar (_progress: in a terminal only)."""
    with _progress(f"syncing {days[0]}", "synced to", len(days)) as advance:
        return sync_file(store, source, people, days, held=held, sizes=sizes, progress=advance)


def import_file(
    store: RecordStore,
    source: HealthSource,
    people: list[str],
    days: list[date],
    held: set[date] | None = None,
    sizes: Mapping[date, int] | None = None,
) -> tuple[ImportOutcome, Settings, Published]:
    """The sync, then the publishing of the changed days the running Dagster does not publish
    (publish_outside), under this environment's settings."""
    from ohx_dagster.config.settings import Settings
    from ohx_dagster.providers.registry import CATALOG

    # Validated before the command ran (cli.OhxGroup).
    settings = Settings.from_env(catalog=CATALOG)
    outcome = run_with_progress(store, source, people, days, held, sizes)
    return outcome, settings, publish_outside(store, settings, outcome, people)


@dataclass
class Published:
    """What the import published itself: days outside the running Dagster's partitions or
    sources."""

    days: set[date] = field(default_factory=set)
    where: str = ""  # the output folder of the days, with <day> for the date
    invalid: dict[date, list[str]] = field(default_factory=dict)  # days not published, and why


def dagster_days(settings: Settings, source: str, days: Iterable[date]) -> set[date]:
    """The days the running Dagster's republish_sensor publishes: its source, its partitions
    (OHX_PARTITIONS_START to today UTC, as sensors/republish.py skips the others)."""
    if source not in settings.sources:
        return set()
    today = common.now().date()
    return {d for d in days if settings.partitions_start <= d <= today}


def publish_outside(
    store: RecordStore, settings: Settings, outcome: ImportOutcome, people: Iterable[str]
) -> Published:
    """Publish the file's people's unpublished days of its span that the running Dagster does
    not (dagster_days), as the publish step of a `refresh` run does: the people whose day
    changed, per source key, validated the same way (publish.validate_sample)."""
    from ohx_dagster.fhir.output import FhirOutput
    from ohx_dagster.sync.shards import Shard, Sharding

    source, wanted, span = outcome.source, set(people), set(outcome.days)
    due = {
        day: found & wanted
        for day, found in store.unpublished_days(source).items()
        if day in span and found & wanted
    }
    for day in dagster_days(settings, source, due):
        del due[day]
    configured = source in settings.sources
    sharding = Sharding(settings.source_counts)
    shards = {
        u: sharding.shard_of(source, u) if configured else Shard(source)
        for users in due.values()
        for u in users
    }
    keys = sorted({shard.key for shard in shards.values()})
    published = Published(
        where=f"{settings.fhir_dir}/<day>/{keys[0] if len(keys) == 1 else '<source key>'}/"
    )
    output = FhirOutput(settings.fhir_dir)
    with _progress("publishing", "published", len(due)) as advance:
        for day, users in sorted(due.items()):
            try:
                for shard in sorted({shards[u] for u in users}, key=lambda s: s.index):
                    scope = {u for u in users if shards[u] == shard}
                    _publish(store, output, settings, published, shard, day, scope)
            except (Exception, KeyboardInterrupt) as exc:  # Ctrl-C too: say what is published
                raise ImportStopped(_publish_stopped(published, day, exc)) from exc
            advance(day)
    return published


def _publish(
    store: RecordStore,
    output: FhirOutput,
    settings: Settings,
    published: Published,
    shard: Shard,
    day: date,
    scope: set[str],
) -> None:
    """One day of the people of one source key, as a refresh run's publish step does."""
    from ohx_dagster.privacy.audit import login
    from ohx_dagster.publish.partitions import publish_partition, validate_sample

    report = publish_partition(
        store,
        output,
        provider=shard.provider,
        key=shard.key,
        shard=shard,
        day=day,
        scope=scope,
        now=common.now(),
        horizon=settings.resync_horizons[shard.provider],
        publish_ambiguous=settings.publish_ambiguous,
        validate=validate_sample,
        actor=login("ohx import"),  # each person's files are an `export` in the audit log
    )
    problems = [p for ps in report.invalid_buckets.values() for p in ps]
    if problems:
        published.invalid.setdefault(day, []).extend(problems)
    elif report.buckets:
        published.days.add(day)


def _publish_stopped(published: Published, day: date, exc: BaseException) -> str:
    from ohx_dagster.cli import _user_error

    if isinstance(exc, KeyboardInterrupt):
        why = "interrupted"
    else:
        why = _user_error(exc) or f"{type(exc).__name__}: {common.one_line(exc)}"
    return (
        f"publishing stopped at {day} ({why}): the file is stored, {len(published.days)} days "
        f"are published in {published.where}; import the same file again to publish the rest"
    )


def publishing_note(
    source: str, changed: set[date], settings: Settings, published: Published
) -> str:
    """One line: what the import published and where, and what the running Dagster publishes."""
    if not changed and not published.days:
        return "Nothing changed in the store: nothing to publish."
    notes = []
    if published.days:
        first, last = min(published.days), max(published.days)
        if source not in settings.sources:
            sources = ",".join(settings.sources)
            why = f"{source!r} is not in the running Dagster's OHX_SOURCES ({sources})"
        else:
            why = (
                "they lie outside the running Dagster's partitions (OHX_PARTITIONS_START="
                f"{settings.partitions_start} to today)"
            )
        notes.append(
            f"FHIR: {len(published.days)} days ({first} .. {last}) published by this import to "
            f"{published.where} (manifest.json, NDJSON): {why}."
        )
    inside = dagster_days(settings, source, changed)
    if inside:
        notes.append(
            f"The running Dagster publishes {len(inside)} changed days: its republish_sensor "
            "picks them up within a minute (a refresh run per day and source key, in Runs)."
        )
    return " ".join(notes) or "Nothing left to publish."


def invalid_line(published: Published) -> str | None:
    """The days whose FHIR did not validate (not published: the previous version stays)."""
    if not published.invalid:
        return None
    day = min(published.invalid)
    return (
        f"{len(published.invalid)} days not published: their FHIR does not validate (the "
        f"previous version stays); {day}: {published.invalid[day][0]}"
    )


def retention_note(store: RecordStore, outcome: ImportOutcome) -> str | None:
    """Imported days older than a person's retention period, counted back from the export's
    newest record (ohx_dagster/privacy/retention.retention_cutoff): Dagster's daily_retention
    schedule
    deletes them (their FHIR output too) at its next run."""
    from ohx_dagster.privacy.retention import retention_cutoff

    expired: dict[int, int] = {}
    for user_id in outcome.people:
        person = store.person(outcome.source, user_id)
        if person is None:
            continue
        keep = person.config.retention_days
        cutoff = retention_cutoff(store, person.config, common.now()).date()
        old = sum(1 for day in outcome.days if day < cutoff)
        if old:
            expired[keep] = max(expired.get(keep, 0), old)
    if not expired:
        return None
    parts = [
        f"{old} of the {len(outcome.days)} days are over {keep} days before the person's newest "
        "record"
        for keep, old in sorted(expired.items())
    ]
    return (
        f"Retention: {'; '.join(parts)} (the people's retention_days): Dagster's daily_retention "
        "schedule deletes those records at its next run, 03:45 UTC."
    )


def render_summary(
    title: str,
    outcome: ImportOutcome,
    skipped: list[Skipped],
    notes: Iterable[str] = (),
    *,
    store: RecordStore,
    settings: Settings,
    published: Published,
    refused: RefusedDates | None = None,
    verbose: bool = False,
) -> None:
    """A few lines: what was imported, over which days, what was skipped (counted), where the
    FHIR of the days the import published is and what Dagster will publish, and what retention
    deletes; a line for each refusal, failure or day whose FHIR did not validate. `verbose`:
    the records and the skipped elements as tables, kind by kind."""
    from rich.text import Text

    out = common.console()
    out.print(Text(title, style="bold"))
    for note in notes:
        out.print(Text(note))
    if refused is not None and refused.total:
        out.print(Text(refused.line(), style="yellow"))
    days = outcome.days
    out.print(
        Text(
            f"Days (UTC): {days[0]} .. {days[-1]}, {len(days)} days; "
            f"{len(outcome.days_changed)} days changed in the store."
        )
    )
    if verbose:
        _tables(out, outcome, skipped)
    else:
        out.print(Text(records_line(outcome)))
        out.print(Text(skipped_line(skipped)))
    for user_id, why in sorted(outcome.people_skipped.items()):
        out.print(Text(f"person {user_id} not imported: {why}", style="yellow"))
    for user_id, why in sorted(outcome.failures.items()):
        spans = outcome.failed_days.get(user_id, [])
        listed = ", ".join(f"{first} .. {last}" for first, last in spans)
        out.print(
            Text(
                f"person {user_id} failed: {why}; not stored for them: {listed or 'nothing'} (the "
                "other days are); import the same file again to complete it",
                style="red",
            )
        )
    out.print(Text(publishing_note(outcome.source, outcome.days_changed, settings, published)))
    invalid = invalid_line(published)
    if invalid:
        out.print(Text(invalid, style="red"))
    retention = retention_note(store, outcome)
    if retention:
        out.print(Text(retention, style="yellow"))


def records_line(outcome: ImportOutcome) -> str:
    """'Records: 6,197 (heart_rate 2,177, steps 3,980, weight 40)', implausible ones counted."""
    kinds = []
    for data_type, count in sorted(outcome.imported.items()):
        flagged = outcome.implausible.get(data_type, 0)
        kinds.append(
            f"{data_type} {count:,}"
            + (f" of which {flagged:,} implausible (kept)" if flagged else "")
        )
    total = sum(outcome.imported.values())
    return f"Records: {total:,}" + (f" ({', '.join(kinds)})" if kinds else "") + "."


def skipped_line(skipped: list[Skipped]) -> str:
    """What the file held that is not synced, counted in one line (--verbose lists it)."""
    if not skipped:
        return "Skipped: nothing."
    count = sum(item.count for item in skipped)
    return (
        f"Skipped: {len(skipped)} kinds ({count:,} in all) this product does not sync: "
        "--verbose lists them and why."
    )


def _tables(out: Any, outcome: ImportOutcome, skipped: list[Skipped]) -> None:
    from rich.table import Table
    from rich.text import Text

    imported = Table(title=Text("imported"), title_justify="left")
    for header, justify in (
        ("type", "left"),
        ("records", "right"),
        ("implausible (kept)", "right"),
    ):
        imported.add_column(header, justify=justify)  # type: ignore[arg-type]
    for data_type, count in sorted(outcome.imported.items()):
        flagged = outcome.implausible.get(data_type, 0)
        imported.add_row(
            Text(data_type), Text(f"{count:,}"), Text(f"{flagged:,}" if flagged else "")
        )
    imported.add_row(
        Text("total", style="bold"), Text(f"{sum(outcome.imported.values()):,}"), Text("")
    )
    out.print(imported)
    if skipped:
        table = Table(title=Text("skipped"), title_justify="left")
        for header, justify in (("what", "left"), ("count", "right"), ("why", "left")):
            table.add_column(header, justify=justify)  # type: ignore[arg-type]
        for item in sorted(skipped, key=lambda s: (-s.count, s.what)):
            table.add_row(Text(item.what), Text(f"{item.count:,}"), Text(item.why))
        out.print(table)
    else:
        out.print(Text("skipped: nothing"))


VERBOSE = click.option(
    "--verbose", "-v", is_flag=True, help="List the records and the skipped elements by kind."
)


def plausible_dates() -> PlausibleDates:
    """OHX_EARLIEST_SAMPLE_DATE to tomorrow of this run's clock."""
    from ohx_dagster.config.settings import earliest_sample_date
    from ohx_dagster.providers.bounds import PlausibleDates

    return PlausibleDates.at(common.now(), earliest_sample_date())


def _failed(outcome: ImportOutcome, published: Published) -> None:
    if outcome.failures or published.invalid:
        raise click.exceptions.Exit(1)


# -- Apple Health ----------------------------------------------------------------------------------


def apple_skipped(summary: Any) -> list[Skipped]:
    """What an export.xml held that is not synced, with counts and why."""
    from ohx_dagster.providers.apple_health.sleep import NO_LENGTH

    why = {NO_LENGTH: "a sleep record that ends as it starts: no time asleep or in bed"}
    found = [
        Skipped(kind, count, why.get(kind, "not a data type this product syncs"))
        for kind, count in summary.skipped.items()
    ]
    found += [
        Skipped(kind, count, "a correlation other than blood pressure")
        for kind, count in summary.correlations.items()
        if kind != "HKCorrelationTypeIdentifierBloodPressure"
    ]
    found += [
        Skipped(tag, count, f"<{tag}> elements are not samples this product syncs")
        for tag, count in summary.other.items()
        if tag not in ABOUT_EXPORT
    ]
    if summary.unpaired_blood_pressure:
        found.append(
            Skipped(
                "blood pressure halves",
                summary.unpaired_blood_pressure,
                "a systolic or diastolic value without its pair (no blood-pressure correlation)",
            )
        )
    return found


@click.group("import")
def import_() -> None:
    """Import a data export into the record store, and publish its changed days as FHIR (the
    running Dagster's republish_sensor publishes those in its sources and partitions)."""


@import_.command("apple-health")
@click.argument("export", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--user", "user_id", help="The person's id (default: the name of the folder holding the file)."
)
@click.option("--timezone", help="The person's IANA zone (default: inferred from the export).")
@VERBOSE
@click.pass_context
def apple_health(
    ctx: click.Context, export: Path, user_id: str | None, timezone: str | None, verbose: bool
) -> None:
    """Import an Apple Health export (export.zip as the Health app shares it, or export.xml)
    for one person: heart rate, steps, weight, temperature, SpO2, blood pressure and ECGs, over
    every day it spans. Importing again replaces the stored records of those days and types
    with the file's (an unchanged file changes nothing). The changed days are published as FHIR
    by the running Dagster when apple_health is in its OHX_SOURCES and the day in its partitions,
    by the import otherwise (the summary says where)."""
    from ohx_dagster.core.ids import check_user_id  # the id rule of every entry point
    from ohx_dagster.providers.apple_health import AppleHealthSource
    from ohx_dagster.providers.base import Windowed
    from ohx_dagster.providers.registry import RESYNC_HORIZON, SUPPORTED_TYPES

    if user_id is not None:
        try:
            check_user_id(user_id, "--user")
        except ValidationError as exc:
            raise click.BadParameter(f"expected {exc.expected}", param_hint="--user") from None
    reader = AppleHealthSource(export, user_id=user_id, timezone=timezone, dates=plausible_dates())
    ctx.call_on_close(reader.close)  # its temporary file (spill.py), however the command ends
    with common.console(stderr=True).status(f"reading {export}"):
        sizes = reader.day_sizes()  # the export read and checked: nothing stored before this
        held = list(sizes)
        zone = reader.zone
    store = common.open_store(ctx, create=True)
    types = reader.held_types() & SUPPORTED_TYPES[reader.name]
    # A sync reads a window's records built for that window alone (AppleHealthSource.fetch).
    source = Windowed(reader, types, RESYNC_HORIZON[reader.name])
    notes = [f"Zone: {zone.reason}"]
    stored = store.person(reader.name, reader.user_id)
    if stored is not None and stored.config.timezone != zone.zone:
        notes.append(
            f"{reader.user_id} is already in the store with zone {stored.config.timezone}, "
            f"which their days keep (the export says {zone.zone})."
        )
    days = [held[0] + timedelta(days=n) for n in range((held[-1] - held[0]).days + 1)]
    outcome, settings, published = import_file(
        store, source, [reader.user_id], days, set(held), sizes
    )
    title = f"Imported {export} as {reader.name} person {reader.user_id}"
    render_summary(
        title,
        outcome,
        apple_skipped(reader.summary),
        notes,
        store=store,
        settings=settings,
        published=published,
        refused=reader.refused,
        verbose=verbose,
    )
    _failed(outcome, published)


# -- Fitabase --------------------------------------------------------------------------------------


def _rows(path: Path) -> int:
    with path.open("rb") as handle:
        return max(0, sum(1 for line in handle if line.strip()) - 1)


def fitabase_skipped(directory: Path, read: Mapping[str, Any]) -> list[Skipped]:
    """The folder's other CSV files (rows each) and why they are not read; a symbolic link
    leading out of the folder is not opened, not even to count its rows."""
    found = []
    for path in sorted(directory.glob("*.csv")):
        if path.name in read:
            continue
        if not path.resolve().is_relative_to(directory.resolve()):
            found.append(Skipped(path.name, 0, "a symbolic link leading out of the folder"))
            continue
        why = FITABASE_REASONS.get(path.name, "not a data type this product syncs")
        found.append(Skipped(path.name, _rows(path), why))
    return found


@import_.command("fitabase")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--timezone",
    required=True,
    help="IANA zone of the export's wall-clock times (e.g. America/Chicago).",
)
@VERBOSE
@click.pass_context
def fitabase(ctx: click.Context, directory: Path, timezone: str, verbose: bool) -> None:
    """Import a Fitbit export in the Fitabase CSV layout (one folder, many people): heart rate,
    hourly steps and weight, over every day it spans. Importing again replaces the stored
    records of those days and types with the folder's. The changed days are published as FHIR
    by the running Dagster when fitabase is in its OHX_SOURCES and the day in its partitions, by
    the import otherwise (the summary says where)."""
    from ohx_dagster.providers.base import Windowed
    from ohx_dagster.providers.fitabase import EXPORT_FILES, FitabaseSource
    from ohx_dagster.providers.registry import RESYNC_HORIZON

    expected = {spec.name: spec for spec in EXPORT_FILES}
    if not any((directory / name).is_file() for name in expected):
        raise ValidationError(
            "directory",
            str(directory),
            f"a Fitabase export folder holding {', '.join(expected)} (one or more)",
        )
    reader = FitabaseSource([directory], timezone, dates=plausible_dates())
    with common.console(stderr=True).status(f"reading {directory}"):
        records = reader.records
    if records.empty:
        raise ValidationError(
            "directory", str(directory), f"records in {', '.join(expected)}", where="all empty"
        )
    store = common.open_store(ctx, create=True)
    source = Windowed(reader, held_types(reader.name, records), RESYNC_HORIZON[reader.name])
    people = [c.user_id for c in reader.discover_users()]
    outcome, settings, published = import_file(
        store, source, people, spanned_days(records), held_days(records)
    )
    title = f"Imported {directory} as {reader.name}: {len(outcome.people)} people, zone {timezone}"
    skipped = fitabase_skipped(directory, expected)
    render_summary(
        title,
        outcome,
        skipped,
        store=store,
        settings=settings,
        published=published,
        refused=reader.refused,
        verbose=verbose,
    )
    _failed(outcome, published)
