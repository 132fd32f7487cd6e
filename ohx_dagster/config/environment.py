"""The process environment: the one module of the product that reads it (tests/config/
test_one_reader.py keeps it so). Every other module gets its values from config's settings
objects (ohx_dagster.config.settings.Settings and its sections), which parse this mapping, or a
mapping a test hands them instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def environ() -> Mapping[str, str]:
    """The live process environment (what a variable holds now, not when this was imported)."""
    return os.environ


def resolve(env: Mapping[str, str] | None) -> Mapping[str, str]:
    """`env` when given (a test's mapping), else the live process environment."""
    return environ() if env is None else env


def child_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment of a child process: this process's, with `overrides` set (`ohx dev`
    hands its services their home folders and the simulated webhook secret this way)."""
    return {**os.environ, **overrides}
