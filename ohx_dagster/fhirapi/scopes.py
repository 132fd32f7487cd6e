"""SMART v2 system scopes (SMART App Launch 2.x, "Scopes for requesting clinical data"):
`system/<resource type or *>.<permissions>`, the permissions a subset of `cruds` in that order
(create, read, update, delete, search). This server reads and searches: `r` and `s` are what it
checks. The v1 spellings (`.read`, `.write`, `.*`) are not accepted: a client asks in v2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_SCOPE: Final = re.compile(r"system/(\*|[A-Z][A-Za-z]{1,63})\.(c?r?u?d?s?)")


@dataclass(frozen=True, slots=True)
class Scope:
    resource_type: str  # or "*"
    permissions: str  # a subset of "cruds", in that order

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        """The scope, or None when `text` is not a SMART v2 system scope."""
        found = _SCOPE.fullmatch(text)
        if found is None or not found.group(2):
            return None
        return cls(found.group(1), found.group(2))

    def covers(self, other: Scope) -> bool:
        """Whether holding this scope grants everything `other` asks for."""
        same_type = self.resource_type in ("*", other.resource_type)
        return same_type and set(other.permissions) <= set(self.permissions)

    def allows(self, resource_type: str, permission: str) -> bool:
        return self.resource_type in ("*", resource_type) and permission in self.permissions

    def __str__(self) -> str:
        return f"system/{self.resource_type}.{self.permissions}"


def parse_scopes(text: str) -> tuple[list[Scope], list[str]]:
    """The scopes of a space-separated list, and the words that are not scopes."""
    scopes, bad = [], []
    for word in text.split():
        scope = Scope.parse(word)
        if scope is None:
            bad.append(word)
        else:
            scopes.append(scope)
    return scopes, bad


def allowed(scopes: list[Scope], resource_type: str, permission: str) -> bool:
    return any(scope.allows(resource_type, permission) for scope in scopes)
