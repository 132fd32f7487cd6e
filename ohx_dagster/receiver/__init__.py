"""The webhook receiver (its own ASGI process, `ohx-webhooks`): verification, signatures, inbox.
The receiver is ohx_dagster.receiver.app.create_app; each provider's routes live in its folder."""
