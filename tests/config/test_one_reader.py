"""Exactly one module of the product reads the process environment: ohx_dagster/config/
environment.py. Every other module of ohx_dagster/, assets/, resources/ and sensors/ gets its
values from config's settings objects (issue 20), so no module may name `os.environ` or
`os.getenv`, import them from os, or reach them with getattr."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("ohx_dagster", "assets", "resources", "sensors")
READER = Path("ohx_dagster/config/environment.py")
# What reads the environment, in the modules that hold it (os; posix and nt are os's own).
MODULES = frozenset({"os", "posix", "nt"})
NAMES = frozenset({"environ", "environb", "getenv", "getenvb"})


def environment_reads(source: str) -> list[str]:
    """Where the module's source references the process environment: `line: what`."""
    tree = ast.parse(source)
    modules: set[str] = set()  # names bound to os (import os, import os as o, import os.path)
    bound: set[str] = set()  # names bound to os.environ/getenv (from os import environ as e)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if alias.asname is None and top in MODULES:
                    modules.add(top)
                elif alias.name in MODULES:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module in MODULES and node.level == 0:
            for alias in node.names:
                if alias.name in NAMES or alias.name == "*":
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
                    bound.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in NAMES
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.Name) and node.id in bound and "*" not in bound:
            found.append((node.lineno, node.id))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in modules
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in NAMES
        ):
            found.append((node.lineno, f"getattr({node.args[0].id}, {node.args[1].value!r})"))
    return [f"{line}: {what}" for line, what in sorted(set(found))]


def product_modules() -> list[Path]:
    return sorted(path.relative_to(REPO) for root in ROOTS for path in (REPO / root).rglob("*.py"))


@pytest.mark.parametrize(
    "source",
    [
        "import os\nos.environ.get('X')",
        "import os\nos.getenv('X')",
        "import os as system\nsystem.environ['X']",
        "import os.path\nos.environ",
        "from os import environ\nenviron.get('X')",
        "from os import getenv as read\nread('X')",
        "from os import *\n",
        "import os\ngetattr(os, 'environ')",
        "import posix\nposix.environ",
        "def f():\n    import os\n    return dict(os.environ)",
    ],
)
def test_every_way_of_reading_the_environment_is_found(source: str) -> None:
    assert environment_reads(source)


@pytest.mark.parametrize(
    "source",
    [
        "import os\nos.fspath('x'); os.pathsep; os.path.isfile('x')",
        "environ = {}\nenviron.get('X')",
        "from ohx_dagster.config import environment\nenvironment.environ()",
        "import dagster as dg\ndg.EnvVar('OHX_DATABASE_URL')",
    ],
)
def test_what_is_not_reading_the_environment_is_not_found(source: str) -> None:
    assert environment_reads(source) == []


def test_exactly_one_module_reads_the_environment() -> None:
    modules = product_modules()
    readers = {
        str(path): reads
        for path in modules
        if path != READER and (reads := environment_reads((REPO / path).read_text()))
    }
    assert readers == {}, (
        f"only {READER} reads the environment; these modules do too (take the value from "
        f"ohx_dagster.config's settings instead): {readers}"
    )
    assert READER in modules
    assert environment_reads((REPO / READER).read_text()), f"{READER} reads the environment"
