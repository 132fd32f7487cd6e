"""Where an export's files are: export.xml alone, the unzipped apple_health_export folder, or the
export.zip the Health app shares.

The archive, as the Health app writes it (SOURCE.md names where each fact comes from):

    apple_health_export/export.xml                     the samples (read by export.py)
    apple_health_export/export_cda.xml                 a clinical document (not read)
    apple_health_export/electrocardiograms/ecg_<date>.csv   one per ECG app recording (ecg.py)
    apple_health_export/workout-routes/route_<date>.gpx     (not read)

An export.xml given alone is read with the electrocardiograms folder beside it, when there is
one (the archive unzipped). Either may be a local path or on object storage (s3://...,
ohx_dagster/config/locations.py): the zip is read by ranges, never copied to a disk.

A member that would inflate beyond the limits of bounds.py (a zip bomb) is refused before it is
read, and an ECG file beside export.xml that is a symbolic link leading out of the export's
folder is refused.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import IO, Final

from ohx_dagster.config.locations import Location
from ohx_dagster.core.errors import ProviderError, ValidationError
from ohx_dagster.providers.bounds import check_archive_member, inside

EXPORT_XML: Final = "export.xml"
ECG_FOLDER: Final = "electrocardiograms"


class ExportFiles:
    """An open export: its export.xml and its ECG files, each under the name messages use."""

    def __init__(self, path: Location, archive: zipfile.ZipFile | None) -> None:
        self.path = path
        self.archive = archive
        self.xml_name, self._xml_member = self._find_xml()
        self._ecg_files: dict[str, Location] = {}  # beside a plain export.xml: name -> file

    def _find_xml(self) -> tuple[str, str | None]:
        if self.archive is None:
            return str(self.path), None
        names = [n for n in self.archive.namelist() if PurePosixPath(n).name == EXPORT_XML]
        if len(names) != 1:
            held = self.archive.namelist()
            shown = ", ".join(held[:5]) + (f", ... ({len(held)} entries)" if len(held) > 5 else "")
            raise ValidationError(
                "archive",
                str(self.path),
                f"a zip holding one apple_health_export/{EXPORT_XML}, as the Health app's "
                "'Export All Health Data' shares it",
                where=f"it holds {len(names)} export.xml: {shown or 'nothing'}",
            )
        check_archive_member(str(self.path), self.archive.getinfo(names[0]))
        return f"{self.path}!{names[0]}", names[0]

    @contextmanager
    def xml(self) -> Iterator[IO[bytes]]:
        if self.archive is None or self._xml_member is None:
            with self.path.open("rb") as stream:
                yield stream
        else:
            with self.archive.open(self._xml_member) as stream:
                yield stream

    def ecg_names(self) -> list[str]:
        """The ECG CSVs, sorted: electrocardiograms/*.csv beside export.xml."""
        if self.archive is None:
            folder = self.path.parent / ECG_FOLDER
            if not folder.is_dir():
                return []
            export = self.path.parent
            self._ecg_files = {
                str(p): inside(export, p, "electrocardiogram")
                for p in folder.iterdir()
                if p.suffix.lower() == ".csv" and p.is_file()
            }
            return sorted(self._ecg_files)
        return sorted(
            f"{self.path}!{n}"
            for n in self.archive.namelist()
            if PurePosixPath(n).parent.name == ECG_FOLDER and n.lower().endswith(".csv")
        )

    def read(self, name: str) -> bytes:
        if self.archive is None:
            return self._ecg_files[name].read_bytes()
        member = self.archive.getinfo(name.removeprefix(f"{self.path}!"))
        check_archive_member(str(self.path), member)
        return self.archive.read(member)


@contextmanager
def open_export(path: Location) -> Iterator[ExportFiles]:
    """The export at `path` (export.xml or export.zip), open for reading."""
    try:
        with path.open("rb") as stream:
            if not zipfile.is_zipfile(stream):
                if path.suffix.lower() == ".zip":
                    raise ValidationError(
                        "archive", str(path), "a zip archive, as 'Export All Health Data' shares it"
                    )
                zipped = None
            else:
                stream.seek(0)
                zipped = zipfile.ZipFile(stream)
            if zipped is None:
                yield ExportFiles(path, None)
                return
            with zipped as archive:
                yield ExportFiles(path, archive)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        # zlib.error, EOFError: a member whose compressed data is damaged or cut short.
        raise ProviderError(f"{path}: cannot read the export ({exc})") from exc
