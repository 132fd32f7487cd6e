"""Polar sensors: recordings as files (Polar Sensor Logger exports, the converted ECGLogger
recording). files.py reads the layouts, source.py turns them into records; SOURCE.md names the
source of every format fact and test fixture. Polar AccessLink, the cloud API, is not read yet."""

from ohx_dagster.providers.polar.files import PolarFileError
from ohx_dagster.providers.polar.source import NAME, ImportSummary, PolarFileSource

# The name the resources import; the source reads more than the H10 (Verity Sense HR, ...).
PolarH10Source = PolarFileSource

__all__ = ["NAME", "ImportSummary", "PolarFileError", "PolarFileSource", "PolarH10Source"]
