"""Errors the domain raises. Each names the field, the value and what was expected."""

from __future__ import annotations


class OhxError(Exception):
    """Base of every error this product raises on purpose."""


class ValidationError(OhxError, ValueError):
    """A value failed validation: names the field, the offending value and what was expected."""

    def __init__(self, field: str, value: object, expected: str, *, where: str = "") -> None:
        self.field = field
        self.value = value
        self.expected = expected
        self.where = where
        location = f" ({where})" if where else ""
        super().__init__(f"{field}={value!r}{location}: expected {expected}")


class ProviderError(OhxError):
    """A provider answered with something we cannot use (bad payload, auth failure, outage)."""


class RateLimited(ProviderError):
    """The provider asked us to slow down; `retry_after_s` is its Retry-After, when given."""

    def __init__(self, provider: str, retry_after_s: float | None) -> None:
        self.provider = provider
        self.retry_after_s = retry_after_s
        super().__init__(f"{provider} rate limit hit; retry after {retry_after_s} s")


class ConfigError(OhxError, ValueError):
    """A setting (environment variable, run tag, user config) is missing or malformed."""


class NeedsReauthorization(ProviderError):
    """The provider no longer accepts the person's grant (a refresh token refused with
    invalid_grant, or spent): nothing can be fetched until they connect the account again."""


class Refused(ProviderError):
    """The provider refuses one data type to us (HTTP 403: a scope the person did not grant, an
    expired membership): retrying will not help until the person reconnects."""
