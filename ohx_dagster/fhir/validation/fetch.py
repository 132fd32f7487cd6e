"""python -m ohx_dagster.fhir.validation.fetch [--dest DIR]: the pinned HL7 FHIR packages the
validator reads, fetched with npm (for an installed wheel; in a checkout,
scripts/fetch-fhir-packages does the same)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ohx_dagster.fhir.validation.packages import SETTING, fetch_packages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=fetch_packages.__doc__)
    parser.add_argument("--dest", type=Path, help=f"default: ${SETTING}, the checkout, the cache")
    for path in fetch_packages(parser.parse_args(argv).dest):
        print(f"fetched {path.name} into {path}")


if __name__ == "__main__":
    main()
