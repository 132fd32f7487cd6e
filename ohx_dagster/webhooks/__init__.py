"""The webhook receiver (its own ASGI process, `ohx-webhooks`): verification, signatures, inbox."""

from ohx_dagster.webhooks.app import create_app
from ohx_dagster.webhooks.config import WebhookSecrets

__all__ = ["WebhookSecrets", "create_app"]
