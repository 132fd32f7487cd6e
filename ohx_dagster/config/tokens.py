"""Token encryption settings: the key that encrypts the provider OAuth tokens at rest
(ohx_dagster/providers/api/tokens.py).

| variable | default | meaning |
|---|---|---|
| OHX_TOKEN_KEY | (required once a token is read or written) | Fernet key(s), comma-separated: the first encrypts, all decrypt (rotation) |

A missing or malformed key is a ConfigError when a token is read or written (or a provider is
connectable), not before: a deployment without API sources needs no key. `ohx` checks a key that
is set before every command that reads the settings.
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.fernet import Fernet, MultiFernet

from ohx_dagster.config import environment
from ohx_dagster.config.redact import Redacted
from ohx_dagster.core.errors import ConfigError

TOKEN_KEY_ENV: Final = "OHX_TOKEN_KEY"


@dataclass(frozen=True, slots=True, repr=False)
class TokenSettings(Redacted):
    """OHX_TOKEN_KEY as given ("": unset); `cipher()` checks and builds it."""

    _secrets = ("key",)

    key: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TokenSettings:
        return cls(environment.resolve(env).get(TOKEN_KEY_ENV, ""))

    @property
    def keys(self) -> list[str]:
        """The Fernet keys, in order (none when unset)."""
        return [k.strip() for k in self.key.split(",") if k.strip()]

    def cipher(self) -> MultiFernet:
        """The keys as one MultiFernet; ConfigError naming the variable when it is unset or
        not a list of Fernet keys."""
        keys = self.keys
        if not keys:
            raise ConfigError(
                f"{TOKEN_KEY_ENV} is not set: provider tokens are encrypted at rest with it; "
                'create one with python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"'
            )
        try:
            return MultiFernet([Fernet(k) for k in keys])
        except (ValueError, TypeError):
            raise ConfigError(
                f"{TOKEN_KEY_ENV}: expected Fernet keys (32 url-safe base64-encoded bytes each, "
                "comma-separated for rotation)"
            ) from None


def cipher_from_env(env: Mapping[str, str] | None = None) -> MultiFernet:
    """The cipher of OHX_TOKEN_KEY (TokenSettings.cipher)."""
    return TokenSettings.from_env(env).cipher()
