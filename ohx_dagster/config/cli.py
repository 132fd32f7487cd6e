"""The `ohx` command line's own settings: the Dagster instance it checks (`ohx doctor`), the
ports and folders of `ohx dev`, and the width of its tables.

| variable | default | meaning |
|---|---|---|
| DAGSTER_HOME | (`ohx dev`: $OHX_HOME/dagster) | Dagster instance: deploy/dagster.yaml (SQLite) or deploy/dagster.postgres.yaml |
| OHX_UI_PORT | 3000 | `ohx dev`: the Dagster UI on 127.0.0.1 |
| OHX_WEBHOOK_PORT | 8787 | `ohx dev`: the webhook receiver on 127.0.0.1 |
| COLUMNS | 160 | width of tables written to a file or a pipe (a terminal's own width otherwise) |

`ohx dev` runs the product on its embedded default: OHX_HOME (ohx_dagster/config/storage.py)
defaults to ./.ohx there, DAGSTER_HOME to $OHX_HOME/dagster, and its services get both.
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ohx_dagster.config import environment
from ohx_dagster.config.redact import Redacted
from ohx_dagster.core.errors import ConfigError

# (variable, default, what listens there) of `ohx dev`'s two ports.
PORTS: Final = (
    ("OHX_UI_PORT", 3000, "the Dagster UI"),
    ("OHX_WEBHOOK_PORT", 8787, "the webhook receiver"),
    ("OHX_FHIR_API_PORT", 8790, "the FHIR API"),
)


def port_setting(name: str, default: int, env: Mapping[str, str] | None = None) -> int:
    """A port variable (1..65535; unset or blank: `default`); ConfigError naming it."""
    env = environment.resolve(env)
    text = env.get(name, "").strip() or str(default)
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"{name}={text!r}: expected a port number 1..65535 (default {default})")
    return int(text)


@dataclass(frozen=True, slots=True, repr=False)
class CliSettings(Redacted):
    """The variables as given ("" unset); the ports are checked when asked (`ports()`)."""

    dagster_home: str = ""  # DAGSTER_HOME, stripped
    ohx_home: str = ""  # OHX_HOME as given
    dagster_home_setting: str = ""  # DAGSTER_HOME as given
    columns: str = ""  # COLUMNS as given
    port_settings: tuple[tuple[str, str], ...] = ()  # (variable, text) of the set port variables

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CliSettings:
        env = environment.resolve(env)
        return cls(
            dagster_home=env.get("DAGSTER_HOME", "").strip(),
            ohx_home=env.get("OHX_HOME") or "",
            dagster_home_setting=env.get("DAGSTER_HOME") or "",
            columns=env.get("COLUMNS") or "",
            port_settings=tuple((name, env[name]) for name, _, _ in PORTS if name in env),
        )

    def ports(self) -> dict[str, int]:
        """`ohx dev`'s ports by variable; ConfigError naming a bad one."""
        given = dict(self.port_settings)
        return {name: port_setting(name, default, given) for name, default, _ in PORTS}

    @property
    def width(self) -> int:
        """Columns of a table written to a file or a pipe."""
        return int(self.columns or 160)

    def dev_homes(self, cwd: Path) -> tuple[Path, Path]:
        """`ohx dev`'s OHX_HOME (default ./.ohx) and DAGSTER_HOME (default $OHX_HOME/dagster),
        absolute."""
        home = Path(self.ohx_home or cwd / ".ohx").absolute()
        return home, Path(self.dagster_home_setting or home / "dagster").absolute()
