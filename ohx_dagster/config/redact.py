"""How settings show themselves: with their secrets redacted, so that a settings object in a log
line, an error, a test's assertion or a debugger never shows a client secret, a token, a key, a
salt or the password of a database URL."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED: Final = "<redacted>"
# Query parameters of a URL that hold a secret (libpq takes `?password=`).
_SECRET_PARAMETERS: Final = frozenset({"password", "pwd", "secret", "token", "key"})


def hide_password(url: str) -> str:
    """The URL with the password of its user (`user:password@host`) and secret query parameters
    replaced by ***; anything else as it is."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name.lower() in _SECRET_PARAMETERS for name, _ in pairs):
            query = urlencode(
                [(n, "***" if n.lower() in _SECRET_PARAMETERS else v) for n, v in pairs]
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Redacted:
    """A settings dataclass (declared with `repr=False`) whose repr and str hide its secrets:
    the fields named in `_secrets` show as '<redacted>' when set, the URLs named in `_urls`
    without their password; fields declared `field(repr=False)` are left out."""

    __slots__ = ()
    _secrets: ClassVar[tuple[str, ...]] = ()
    _urls: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        shown = []
        for found in dataclasses.fields(self):  # type: ignore[arg-type]
            if not found.repr:
                continue
            value = getattr(self, found.name)
            if found.name in self._secrets and value:
                text = repr(REDACTED)
            elif found.name in self._urls and isinstance(value, str):
                text = repr(hide_password(value))
            else:
                text = repr(value)
            shown.append(f"{found.name}={text}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def __str__(self) -> str:
        return self.__repr__()
