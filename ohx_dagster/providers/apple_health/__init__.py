"""File import of an Apple Health "Export All Health Data" export: export.xml, or the export.zip
the Health app shares (its export.xml and its electrocardiograms/*.csv are read inside the
archive).

| module | reads |
|---|---|
| archive.py | where the files are: export.xml alone, the unzipped folder, or export.zip |
| export.py | export.xml, streamed: heart rate, steps, weight, temperature, SpO2, blood pressure |
| spill.py | the samples read, in a temporary SQLite file while the export is imported |
| ecg.py | electrocardiograms/ecg_<date>.csv: Apple Watch ECG app recordings |
| zone.py | the user's IANA zone, from the samples' offsets, HKTimeZone metadata and locale |
| source.py | AppleHealthSource: the records, the zone, the HealthSource protocol |

SOURCE.md beside this file names where every format fact and test fixture comes from.
"""

from ohx_dagster.providers.apple_health.ecg import EcgRecording
from ohx_dagster.providers.apple_health.export import NAME, ExportSummary, device_id
from ohx_dagster.providers.apple_health.source import AppleHealthSource
from ohx_dagster.providers.apple_health.zone import ZoneChoice

__all__ = ["NAME", "AppleHealthSource", "EcgRecording", "ExportSummary", "ZoneChoice", "device_id"]
