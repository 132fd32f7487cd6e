"""The README's table of data types is the table of ohx_dagster/core/datatypes.py, row for row."""

from __future__ import annotations

import re
from pathlib import Path

from ohx_dagster.core.datatypes import DATA_TYPES, LOINC_SYSTEM

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_lists_every_type_with_its_code_unit_shape_and_profile() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Data types", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(
        r"^\| `(\w+)` \| (\S+) (.+?) \| (.+?) \| `(.+?)` \| (\w+) \| (.+?) \|$", section, re.M
    )
    documented = {name: tuple(rest) for name, *rest in rows}
    expected = {
        kind.value: (
            f.code[0],
            f.code[1],
            "LOINC" if f.system == LOINC_SYSTEM else f"`{f.system}`",
            f.unit,
            f.shape.value,
            f.profile or "—",
        )
        for kind, f in DATA_TYPES.items()
    }
    assert documented == expected


def test_every_type_has_distinct_code_and_sane_ranges() -> None:
    codes = [(f.system, f.code[0]) for f in DATA_TYPES.values()]
    assert len(codes) == len(set(codes)), "two types share a code"
    for kind, facts in DATA_TYPES.items():
        low, high = facts.hard_limits
        plausible_low, plausible_high = facts.plausible
        assert low <= plausible_low < plausible_high <= high, kind
        assert facts.unit in facts.spellings, kind
