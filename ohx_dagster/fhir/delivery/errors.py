"""The error of delivery: the server refused, stayed unavailable, or would not issue a token.

A module of its own because the client (client.py) and the auth (auth.py: a token endpoint that
refuses, a SMART key that cannot sign) both raise it, and the client imports the auth.
"""

from __future__ import annotations

from ohx_dagster.core.errors import OhxError


class DeliveryError(OhxError):
    """The server refused a transaction (not retryable) or stayed unavailable past the retries."""
