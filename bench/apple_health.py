"""Apple Health import: peak memory and speed of the streaming parse against the export's size.

Inputs: the real export.xml (3.8 MB) and larger exports made from it by repeating its body with
each copy under its own sourceName (so every copy's samples are distinct records, as a longer
history would be). Each measurement runs in a fresh process and reports the growth of its peak
resident memory (ru_maxrss) over the process after imports: the streaming parse of this product
(`AppleHealthSource.summary`, then the record batch), next to ElementTree.parse of the whole
document, and the time the user's zone inference takes over the records (`source.zone`).

Run: .venv/bin/python bench/apple_health.py   (prints the figures; about a minute)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "apple-health" / "export.xml"
COPIES = (1, 10, 40)

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


def main() -> None:
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
