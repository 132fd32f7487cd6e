"""Where files are: a local path, or an object-store URL (s3://bucket/prefix) read through fsspec.

Production runs have no shared disk (one container or pod per run), so every place the product
reads or writes files may be an s3:// URL: the FHIR output root (OHX_FHIR_DIR, fhir/output.py)
and the export sources' locations (OHX_FITABASE_DIR, OHX_APPLE_HEALTH_EXPORT, OHX_POLAR_CSV).
Local paths stay plain `pathlib.Path`s; a URL becomes a `upath.UPath`, which has the methods the
readers use (`/`, `open`, `is_file`, `is_dir`, `iterdir`, `read_bytes`, `name`, `suffix`,
`parent`); `str()` of either is what messages show (the path, or the URL).

| variable | meaning |
|---|---|
| OHX_S3_ENDPOINT_URL | an S3-compatible endpoint (MinIO, moto); unset = AWS |
| AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, ... | credentials, read by botocore itself: they never pass through the product or Dagster's config |
"""  # noqa: E501

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

from upath import UPath

from ohx_dagster.config import environment
from ohx_dagster.core.errors import ConfigError

# scheme://... : a URL (s3://, gs://, memory://); anything else is a local path.
_URL: Final = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_SCHEME: Final = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*$")

Location = Path | UPath


def is_url(text: str) -> bool:
    return bool(_URL.match(text))


def storage_options(url: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """fsspec options of a URL: for s3://, the endpoint of OHX_S3_ENDPOINT_URL when set, and no
    listings cache (another process may have written since: every listing is asked afresh)."""
    env = environment.resolve(env)
    if not url.startswith(("s3://", "s3a://")):
        return {}
    options: dict[str, Any] = {"use_listings_cache": False}
    if env.get("OHX_S3_ENDPOINT_URL"):
        options["client_kwargs"] = {"endpoint_url": env["OHX_S3_ENDPOINT_URL"]}
    return options


def location(text: str | os.PathLike[str] | UPath, setting: str) -> Location:
    """The file or folder that `setting` names: a local path (`~` expanded) or a URL.

    Raises ConfigError naming the setting for an empty value or a URL whose filesystem is not
    installed."""
    if isinstance(text, UPath) and not isinstance(text, Path):
        return text
    value = os.fspath(text).strip()
    if not value:
        raise ConfigError(f"{setting} is empty: give a path or an s3://bucket/prefix URL")
    if not is_url(value):
        return Path(value).expanduser()
    try:
        return UPath(value.rstrip("/") or value, **storage_options(value))
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"{setting}={value!r}: {' '.join(str(exc).split())}") from None


def kind(path: Location, setting: str) -> Literal["file", "folder"] | None:
    """Whether `path` is a file, a folder (on object storage: a prefix with objects under it) or
    nothing; an unreadable location (no credentials, endpoint down, access denied) raises
    ConfigError naming the setting, in one line."""
    try:
        if path.is_file():
            return "file"
        if path.is_dir():
            return "folder"
        return None
    except FileNotFoundError:
        return None
    except Exception as exc:  # botocore's own errors are not OSErrors
        reason = " ".join(str(exc).split()) or type(exc).__name__
        fix = (
            "check the URL, OHX_S3_ENDPOINT_URL and the AWS_* credentials"
            if is_url(str(path))
            else "check the path and its permissions"
        )
        raise ConfigError(f"{setting}={str(path)!r} cannot be read: {reason} ({fix})") from None


def split_locations(value: str) -> list[str]:
    """Several locations in one variable, separated by the OS path separator (':' on POSIX);
    the ':' of a URL's scheme (s3://) does not split it."""
    parts = value.split(os.pathsep)
    merged: list[str] = []
    for part in parts:
        if merged and part.startswith("//") and _SCHEME.match(merged[-1]):
            merged[-1] = f"{merged[-1]}:{part}"
        else:
            merged.append(part)
    return [p.strip() for p in merged if p.strip()]
