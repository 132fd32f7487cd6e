"""Polar sensors: recordings as files (Polar Sensor Logger exports, the converted ECGLogger
recording). files.py reads the layouts, source.py turns them into records; SOURCE.md names the
source of every format fact and test fixture. Polar AccessLink, the cloud API (exercise heart
rate and RR intervals, OAuth, signed webhooks): accesslink*.py, its ProviderApp exported as
ACCESSLINK."""

from ohx_dagster.providers.polar.accesslink import APP as ACCESSLINK
from ohx_dagster.providers.polar.accesslink import AccessLinkSource
from ohx_dagster.providers.polar.files import PolarFileError
from ohx_dagster.providers.polar.source import NAME, ImportSummary, PolarFileSource

# The name the resources import; the source reads more than the H10 (Verity Sense HR, ...).
PolarH10Source = PolarFileSource

__all__ = [
    "ACCESSLINK",
    "NAME",
    "AccessLinkSource",
    "ImportSummary",
    "PolarFileError",
    "PolarFileSource",
    "PolarH10Source",
]
