"""Apple Health import: peak memory and speed of the streaming parse against the export's size,
and the peak memory of a whole `ohx import` of a large export.

Parse: the real export.xml (3.8 MB) and larger exports made from it by repeating its body with
each copy under its own sourceName (so every copy's samples are distinct records, as a longer
history would be). Each measurement runs in a fresh process and reports the growth of its peak
resident memory (ru_maxrss) over the process after imports: the streaming parse of this product
(`AppleHealthSource.summary`, then the record batch), next to ElementTree.parse of the whole
document, and the time the user's zone inference takes over the records (`source.zone`).

Import (`--import N`): `write_export` writes an export.xml of N heart-rate Records in the real
export's shapes (its prolog, its Garmin Connect HeartRate Record, one every 10 s; 235 bytes a
Record, streamed to disk), and `ohx import apple-health` runs on it in a child process with
OHX_HOME in a temporary folder: its peak RSS (RUSAGE_CHILDREN), the records stored, wall and CPU
time. Figures of 2026-12-06 on the 2-core machine, 6,000,000 Records (1.41 GB, 696 days): 699.5
MiB before the spill file (the samples as columns in memory, and 0.33 MiB more a day published),
see docs/storage.md for after. tests/providers/test_import_bounds.py runs a 600,000-Record one.

Run: .venv/bin/python bench/apple_health.py             (the parse figures; about a minute)
     .venv/bin/python bench/apple_health.py --import 6000000   (about 10 minutes, 1.5 GB of disk)
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from ohx_dagster.storage.store import RecordStore

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "apple-health" / "export.xml"
COPIES = (1, 10, 40)
OHX = Path(sys.executable).parent / "ohx"

CHILD = """
import resource, sys, time
import xml.etree.ElementTree as ET
from pathlib import Path
from ohx_dagster.providers.apple_health import AppleHealthSource
path, mode = Path(sys.argv[1]), sys.argv[2]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if mode == "stream":
    source = AppleHealthSource(path)
    summary = source.summary
    parsed = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = len(source.records)
    elapsed = time.perf_counter() - start
    zone_start = time.perf_counter()
    _ = source.zone
    zone_s = time.perf_counter() - zone_start
else:
    n = len(ET.parse(path).getroot())
    parsed = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    elapsed, zone_s = time.perf_counter() - start, 0.0
done = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((parsed - base) / 1024, (done - base) / 1024, n, elapsed, zone_s)
"""


def scaled(copies: int, folder: Path) -> Path:
    if copies == 1:
        return REAL
    lines = REAL.read_text(encoding="utf-8").splitlines(keepends=True)
    open_at = next(i for i, line in enumerate(lines) if line.startswith("<HealthData"))
    close_at = max(i for i, line in enumerate(lines) if line.startswith("</HealthData>"))
    body = "".join(lines[open_at + 1 : close_at])
    path = folder / f"export-x{copies}.xml"
    with path.open("w", encoding="utf-8") as out:
        out.writelines(lines[: open_at + 1])
        for copy in range(copies):
            out.write(body.replace('sourceName="', f'sourceName="copy {copy} '))
        out.writelines(lines[close_at:])
    return path


def measure(path: Path, mode: str) -> tuple[float, float, int, float, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), mode],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout.split()
    return float(out[0]), float(out[1]), int(out[2]), float(out[3]), float(out[4])


def write_export(
    path: Path, records: int, *, every_s: int = 10, first: date = date(2016, 1, 1)
) -> list[date]:
    """An export.xml of `records` heart-rate Records, written as it goes (never whole in memory):
    the real export's prolog (DTD, ExportDate, Me) and its first HeartRate Record's shape
    (sourceName Connect, count/min, +0200), one every `every_s` seconds of local time from
    `first`, values 50..139. Returns the local days it spans (with +0200, the first Record of a
    day at 00:00 is 22:00 UTC of the day before)."""
    text = REAL.read_text(encoding="utf-8")
    head = text[: text.index("<Record ")].rstrip(" ")
    real = next(
        line for line in text.splitlines() if 'type="HKQuantityTypeIdentifierHeartRate"' in line
    )
    template = re.sub(r'(creation|start|end)Date="[^"]*"', r'\1Date="{d} {t} +0200"', real)
    template = re.sub(r'value="[^"]*"', 'value="{v}"', template) + "\n"
    assert template.count("{d} {t}") == 3, template
    times = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(0, 86400, every_s)]
    days = []
    with path.open("w", encoding="utf-8") as out:
        out.write(head)
        written, day = 0, first
        while written < records:
            stamps = times[: records - written]
            iso = day.isoformat()
            out.write(
                "".join(
                    template.format(d=iso, t=t, v=50 + (written + n) * 7 % 90)
                    for n, t in enumerate(stamps)
                )
            )
            written += len(stamps)
            days.append(day)
            day += timedelta(days=1)
        out.write("</HealthData>\n")
    return days


def measure_import(records: int) -> None:
    """`ohx import` of a written export of `records` heart rates: peak RSS, records stored."""
    with tempfile.TemporaryDirectory() as folder:
        export = Path(folder) / "ada" / "export.xml"
        export.parent.mkdir()
        started = time.perf_counter()
        days = write_export(export, records)
        print(
            f"wrote {export.stat().st_size / 1e9:.2f} GB, {records:,} Records over {len(days)} "
            f"days in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("OHX_")}
        env.update(OHX_HOME=str(Path(folder) / "home"), COLUMNS="200")
        env.setdefault("OHX_ERASURE_SALT", "bench-salt-0123456789abcdef")
        started = time.perf_counter()
        done = subprocess.run(
            [str(OHX), "import", "apple-health", str(export)],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            sys.exit(f"ohx import failed ({done.returncode}): {done.stderr[-2000:]}")
        store = RecordStore(f"sqlite:///{Path(folder) / 'home' / 'ohx.db'}")
        try:
            stored = store.count_records("apple_health")
        finally:
            store.dispose()
        print(
            f"ohx import: peak RSS {usage.ru_maxrss / 1024:.1f} MiB, {stored:,} of {records:,} "
            f"heart rates stored, {wall:.0f} s wall, {usage.ru_utime + usage.ru_stime:.0f} CPU-s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--import", dest="records", type=int, help="ohx import of N heart rates")
    args = parser.parse_args()
    if args.records:
        measure_import(args.records)
        return
    print(
        f"{'export':>12} {'MB':>7} | {'stream: parse MB':>16} {'+batch MB':>9} {'records':>8} "
        f"{'s':>6} {'MB/s':>6} {'zone s':>6} | {'ET.parse MB':>11}"
    )
    with tempfile.TemporaryDirectory() as folder:
        for copies in COPIES:
            path = scaled(copies, Path(folder))
            size = path.stat().st_size / 1e6
            parse_mb, total_mb, records, seconds, zone_s = measure(path, "stream")
            whole = f"{measure(path, 'tree')[0]:11.1f}" if copies <= 10 else f"{'-':>11}"
            print(
                f"{'x' + str(copies):>12} {size:7.1f} | {parse_mb:16.1f} {total_mb:9.1f} "
                f"{records:8d} {seconds:6.2f} {size / seconds:6.1f} {zone_s:6.2f} | {whole}"
            )


if __name__ == "__main__":
    main()
