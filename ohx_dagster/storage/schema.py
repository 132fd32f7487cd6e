"""Every table of the product's database, in one place (docs/storage.md explains each choice).

The schema changes only through Alembic migrations (ohx_dagster/storage/migrations, `ohx db
upgrade`); the store checks the revision once per process when it opens, never per sensor tick.

Times are integer microseconds since the epoch (UTC). Identifiers are bounded (provider 64, user
and device 128 characters): the receiver and the importers check those lengths before a row is
written, so a long id is a 400 or a named error, never a database error.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa

from ohx_dagster.core.ids import PROVIDER_CHARS, USER_CHARS

# Alembic's bookkeeping table, not its default `alembic_version`: Dagster's own PostgreSQL
# storage keeps its revision there, and the two may share a database.
VERSION_TABLE: Final = "ohx_schema_version"
DEVICE_CHARS: Final = 128
TYPE_CHARS: Final = 32

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _person(*columns: sa.Column) -> list[sa.Column]:
    """provider + user_id as the leading primary key columns, then the rest."""
    return [
        sa.Column("provider", sa.String(PROVIDER_CHARS), primary_key=True),
        sa.Column("user_id", sa.String(USER_CHARS), primary_key=True),
        *columns,
    ]


# -- people and their connection ------------------------------------------------------------------

# state: active (synced), needs_reauthorization (the provider refused the refresh token; schedules
# skip the person until the connect flow stores new tokens), disconnected (the person or staff
# unlinked the account; kept for retention and erasure).
USER_STATES: Final = ("active", "needs_reauthorization", "disconnected")

users = sa.Table(
    "users",
    metadata,
    *_person(
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("connected", sa.Boolean, nullable=False, default=True),
        sa.Column("connected_at_us", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(32), nullable=False, default="active"),
        sa.Column("state_reason", sa.Text),
        sa.Column("state_at_us", sa.BigInteger),
    ),
    sa.CheckConstraint(f"state IN {USER_STATES!r}", name="state"),
)

oauth_tokens = sa.Table(
    "oauth_tokens",
    metadata,
    *_person(
        # Access and refresh token as one Fernet ciphertext; scope and expiry in clear.
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.Column("scope", sa.String(2048), nullable=False, default=""),
        sa.Column("expires_at_us", sa.BigInteger),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        # A refresh in flight: the run holding the lease talks to the token endpoint with no
        # transaction open; others wait for the rotated token instead of spending the old one.
        sa.Column("refresh_lease_until_us", sa.BigInteger),
        sa.Column("refresh_lease_owner", sa.String(64)),
    ),
)

oauth_states = sa.Table(
    "oauth_states",
    metadata,
    # SHA-256 of the state: the table alone does not let anyone finish someone else's flow.
    sa.Column("state_hash", sa.String(64), primary_key=True),
    sa.Column("provider", sa.String(PROVIDER_CHARS), nullable=False),
    sa.Column("config", sa.Text, nullable=False),  # the HealthSyncConfig to create, sans user id
    sa.Column("code_verifier", sa.String(128)),  # PKCE (RFC 7636), where the provider has it
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    # Who started the flow (the staff member's name, ohx_dagster/privacy/staff.py): the connect
    # row's actor.
    sa.Column("actor", sa.String(128)),
)

# -- health data ----------------------------------------------------------------------------------

# Dense series (heart rate, steps, RR intervals): one row per user, type, device and UTC hour, the
# hour's samples encoded column by column (ohx_dagster/storage/chunks.py) -- the unit FHIR
# publishes.
series_chunks = sa.Table(
    "series_chunks",
    metadata,
    *_person(
        sa.Column("data_type", sa.String(TYPE_CHARS), primary_key=True),
        sa.Column("hour_us", sa.BigInteger, primary_key=True),
        sa.Column("device_id", sa.String(DEVICE_CHARS), primary_key=True),
        sa.Column("samples", sa.Integer, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    ),
)
sa.Index(None, series_chunks.c.provider, series_chunks.c.hour_us)

# Sparse measurements (blood pressure, weight, temperature, SpO2) one row each, and ECG recordings
# one row each with the waveform encoded like a chunk's values.
measurements = sa.Table(
    "measurements",
    metadata,
    *_person(
        sa.Column("data_type", sa.String(TYPE_CHARS), primary_key=True),
        sa.Column("ts_us", sa.BigInteger, primary_key=True),
        sa.Column("device_id", sa.String(DEVICE_CHARS), primary_key=True),
        sa.Column("utc_offset_min", sa.Integer),
        sa.Column("value", sa.Float),
        sa.Column("diastolic", sa.Float),
        sa.Column("duration_s", sa.Float),
        sa.Column("method", sa.String(16), nullable=False, default="device"),
        sa.Column("context", sa.String(32), nullable=False, default=""),  # CONTEXT_CHARS
        sa.Column("sampling_rate_hz", sa.Float),
        sa.Column("waveform", sa.LargeBinary),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    ),
)
sa.Index(None, measurements.c.provider, measurements.c.ts_us)

# -- sync state -----------------------------------------------------------------------------------

# What has been fetched and stored, per person, provider and type (ohx_dagster/core/coverage.py).
coverage = sa.Table(
    "coverage",
    metadata,
    *_person(
        sa.Column("data_type", sa.String(TYPE_CHARS), primary_key=True),
        sa.Column("start_us", sa.BigInteger, primary_key=True),
        sa.Column("end_us", sa.BigInteger, nullable=False),
    ),
)

# Per person, provider and type: the last success and failure, and a refusal (403 for a scope the
# person did not grant) that is skipped until they reconnect or their settings change.
type_status = sa.Table(
    "type_status",
    metadata,
    *_person(
        sa.Column("data_type", sa.String(TYPE_CHARS), primary_key=True),
        sa.Column("last_success_us", sa.BigInteger),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_us", sa.BigInteger),
        sa.Column("refused_reason", sa.Text),
        sa.Column("refused_us", sa.BigInteger),
        sa.Column("refused_config", sa.String(64)),  # hash of the config the refusal applies to
    ),
)

# Per person and day partition: a version that every change of the person's data for that day
# increments, and the version the FHIR output was last published from. version > published_version
# means the partition must be published again (late data, deletions, another partition's run).
day_versions = sa.Table(
    "day_versions",
    metadata,
    *_person(
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False, default=0),
        sa.Column("published_version", sa.BigInteger, nullable=False, default=0),
        sa.Column("published_final", sa.Boolean, nullable=False, default=False),
        sa.Column("changed_us", sa.BigInteger),
        sa.Column("published_us", sa.BigInteger),
    ),
)
sa.Index(None, day_versions.c.provider, day_versions.c.day)

# Provider cursors per person: Withings `lastupdate`, and the like.
provider_cursors = sa.Table(
    "provider_cursors",
    metadata,
    *_person(
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    ),
)

# A provider application's request budget, shared by every run and shard: requests used in the
# current window, and how long the provider asked everyone to wait after a 429.
request_budget = sa.Table(
    "request_budget",
    metadata,
    sa.Column("key", sa.String(256), primary_key=True),  # provider, or provider|user
    sa.Column("window_start_us", sa.BigInteger, nullable=False),
    sa.Column("used", sa.Integer, nullable=False),
    sa.Column("blocked_until_us", sa.BigInteger),
)

# -- aggregates -----------------------------------------------------------------------------------

aggregates = sa.Table(
    "aggregates",
    metadata,
    *_person(
        sa.Column("data_type", sa.String(TYPE_CHARS), primary_key=True),
        sa.Column("level", sa.String(16), primary_key=True),
        sa.Column("bucket_start_us", sa.BigInteger, primary_key=True),
        sa.Column("bucket_end_us", sa.BigInteger, nullable=False),
        sa.Column("utc_offset_min", sa.Integer, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("min", sa.Float),
        sa.Column("max", sa.Float),
        sa.Column("mean", sa.Float),
        sa.Column("sum", sa.Float),
        sa.Column("diastolic_min", sa.Float),
        sa.Column("diastolic_max", sa.Float),
        sa.Column("diastolic_mean", sa.Float),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("devices", sa.Text, nullable=False, default=""),  # the devices counted, sorted
        sa.Column("methods", sa.String(64), nullable=False, default=""),
    ),
)
# The columns of an aggregate row, in order (the statistics publish/aggregate.py computes).
AGGREGATE_COLUMNS: Final[list[str]] = [c.name for c in aggregates.columns]
sa.Index(
    "ix_aggregates_window", aggregates.c.provider, aggregates.c.level, aggregates.c.bucket_start_us
)

# -- webhooks -------------------------------------------------------------------------------------

INBOX_STATUSES: Final = ("pending", "dispatched", "ignored")

# Provider notifications, committed before they are acknowledged (ohx_dagster/sync/inbox.py).
webhook_inbox = sa.Table(
    "webhook_inbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("provider", sa.String(PROVIDER_CHARS), nullable=False),
    sa.Column("event_key", sa.String(512), nullable=False),
    sa.Column("user_id", sa.String(USER_CHARS), nullable=False),
    sa.Column("data_type", sa.String(TYPE_CHARS)),
    sa.Column("occurred_at_us", sa.BigInteger),
    sa.Column("received_at_us", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, default="pending"),
    sa.Column("reason", sa.Text),
    sa.Column("run_key", sa.String(256)),
    # Names kept from release 0.1, which created them.
    sa.UniqueConstraint("provider", "event_key", name=sa.schema.conv("uq_inbox_provider_event")),
    sa.CheckConstraint(f"status IN {INBOX_STATUSES!r}", name=sa.schema.conv("ck_inbox_status")),
    sqlite_autoincrement=True,
)
sa.Index("ix_inbox_status_id", webhook_inbox.c.status, webhook_inbox.c.id)
sa.Index(None, webhook_inbox.c.run_key)

webhook_subscriptions = sa.Table(
    "webhook_subscriptions",
    metadata,
    sa.Column("provider", sa.String(PROVIDER_CHARS), primary_key=True),
    sa.Column("user_id", sa.String(USER_CHARS), primary_key=True),  # "" for app-wide ones
    sa.Column("target", sa.String(128), primary_key=True),  # "appli=1", "update:sleep"
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("subscription_id", sa.String(256)),
    sa.Column("expires_at_us", sa.BigInteger),
    sa.Column("detail", sa.Text, nullable=False, default=""),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
)

# -- FHIR output and delivery ---------------------------------------------------------------------

# The files of each partition's current FHIR output (one per user bucket and resource type). The
# manifest is written from these rows, under the partition's lock, so it names exactly one
# consistent version of the partition.
fhir_files = sa.Table(
    "fhir_files",
    metadata,
    sa.Column("partition_key", sa.String(160), primary_key=True),
    sa.Column("bucket", sa.Integer, primary_key=True),
    sa.Column("resource_type", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("published_us", sa.BigInteger, nullable=False),
    sa.Column("enqueued", sa.Boolean, nullable=False, default=False),
)

fhir_outbox = sa.Table(
    "fhir_outbox",
    metadata,
    sa.Column("resource_type", sa.String(64), primary_key=True),
    sa.Column("resource_id", sa.String(64), primary_key=True),
    sa.Column("partition_key", sa.String(160), nullable=False),
    sa.Column("file", sa.String(256), nullable=False, default=""),  # the fhir_files name it is in
    # Whose data the resource holds ("" for shared ones): erasure deletes these on the server.
    sa.Column("provider", sa.String(PROVIDER_CHARS), nullable=False, default=""),
    sa.Column("user_id", sa.String(USER_CHARS), nullable=False, default=""),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("body_hash", sa.String(64), nullable=False),
    sa.Column("delivered_hash", sa.String(64)),
    # entered-in-error: the server is asked to delete it (conditional DELETE by identifier).
    sa.Column("withdrawn", sa.Boolean, nullable=False, default=False),
    # How the server finds it: the conditional URL by identifier (Type?identifier=system|value),
    # or Type/id for a resource without identifier (Provenance). References to it from resources
    # delivered in other transactions use this URL, which the server resolves.
    sa.Column("match_url", sa.Text, nullable=False, default=""),
    # Delivery order: what others reference goes first (Patient, Device, ... Provenance; deletes
    # last), so a conditional reference always finds its target on the server.
    sa.Column("rank", sa.SmallInteger, nullable=False, default=0),
    sa.Column("enqueued_at_us", sa.BigInteger, nullable=False),
    sa.Column("delivered_at_us", sa.BigInteger),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
)
sa.Index("ix_outbox_partition", fhir_outbox.c.partition_key)
sa.Index(None, fhir_outbox.c.provider, fhir_outbox.c.user_id)

# -- erasure --------------------------------------------------------------------------------------

# That a person was erased, when and how much, without anything that identifies them: the subject
# is a salted hash only the requester can recompute.
erasures = sa.Table(
    "erasures",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("subject_hash", sa.String(64), nullable=False),
    sa.Column("requested_by", sa.String(128), nullable=False, default=""),
    sa.Column("erased_at_us", sa.BigInteger, nullable=False),
    sa.Column("counts", sa.Text, nullable=False),
    # Empty: the row is a tombstone that keeps the subject out of every way in (sync discovery,
    # connect, webhooks); set by `ohx users readmit` (ohx_dagster/privacy/identity.py).
    sa.Column("readmitted_at_us", sa.BigInteger),
    sqlite_autoincrement=True,
)
sa.Index(None, erasures.c.subject_hash)

# -- audit ----------------------------------------------------------------------------------------

# Every staff action and data access, appended, never changed (ohx_dagster/privacy/audit.py;
# migration 0003 adds a trigger refusing UPDATE); the person only as their salted subject hash. Kept
# for OHX_AUDIT_RETENTION.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("at_us", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("subject", sa.String(64), nullable=False, default=""),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False, default=""),
    sqlite_autoincrement=True,
)
sa.Index(None, audit_log.c.at_us)

# -- staff ----------------------------------------------------------------------------------------

# One bearer token per staff member (ohx_dagster/privacy/staff.py, `ohx staff add`): the token's
# public id and the SHA-256 of its secret part, never the token itself.
staff_tokens = sa.Table(
    "staff_tokens",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("token_id", sa.String(16), nullable=False, unique=True),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
)

# Revoked staff tokens (`ohx staff remove`): the public id and whose it was, never a secret, so
# that a revoked token presented again is audited under its staff member's name (staff.py).
staff_revoked = sa.Table(
    "staff_revoked",
    metadata,
    sa.Column("token_id", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("revoked_at_us", sa.BigInteger, nullable=False),
    sa.Column("revoked_by", sa.String(128), nullable=False),
)

# The FHIR API's SMART Backend Services clients (ohx_dagster/fhirapi/clients.py): each client's
# public keys (a JWKS) and the system scopes staff allowed it; the assertions' ids seen, until
# they expire (a replayed one is refused); the access tokens issued, by the SHA-256 of the token.
fhir_clients = sa.Table(
    "fhir_clients",
    metadata,
    sa.Column("client_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("jwks", sa.Text, nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("added_at_us", sa.BigInteger, nullable=False),
    sa.Column("added_by", sa.String(128), nullable=False),
)

fhir_assertions = sa.Table(
    "fhir_assertions",
    metadata,
    sa.Column("client_id", sa.String(64), primary_key=True),
    sa.Column("jti", sa.String(256), primary_key=True),
    sa.Column("expires_us", sa.BigInteger, nullable=False),
)
sa.Index(None, fhir_assertions.c.expires_us)

fhir_tokens = sa.Table(
    "fhir_tokens",
    metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("expires_us", sa.BigInteger, nullable=False),
)
sa.Index(None, fhir_tokens.c.expires_us)

# When each published resource last changed, and where it is (publish.publish_partition upserts a
# row per resource a committed bucket creates or changes, in the commit's transaction; a
# re-render that changes nothing writes none): one row per resource, so it grows with what is
# published, not with how often. The FHIR API reads it for `meta.lastUpdated`, `_lastUpdated` and
# a read by id; the files stay byte-deterministic. Erased with the person (provider, user_id).
fhir_changes = sa.Table(
    "fhir_changes",
    metadata,
    sa.Column("resource_type", sa.String(64), primary_key=True),
    sa.Column("resource_id", sa.String(64), primary_key=True),
    sa.Column("provider", sa.String(PROVIDER_CHARS), nullable=False),
    sa.Column("user_id", sa.String(USER_CHARS), nullable=False),
    sa.Column("partition_key", sa.String(160), nullable=False),
    sa.Column("bucket", sa.Integer, nullable=False),
    sa.Column("at_us", sa.BigInteger, nullable=False),
    # SHA-256 of the resource as published: the same content published again on another day (a
    # Patient, a Device) moves the row to the newer file but keeps when it last changed.
    sa.Column("digest", sa.String(64)),
)
sa.Index(None, fhir_changes.c.provider, fhir_changes.c.user_id, fhir_changes.c.resource_type)
# A `_since` export reads a file's changes after a time (ohx_dagster/fhirapi/bulk.py).
sa.Index(None, fhir_changes.c.partition_key, fhir_changes.c.bucket, fhir_changes.c.resource_type)
sa.Index(None, fhir_changes.c.at_us)

# Bulk Data export (ohx_dagster/fhirapi/bulk.py). A group is a cohort staff define: everyone, the
# people of some providers, or a list of people (fhir_group_members, erased with each person).
# An export is a client's request and its progress; its files are in the output root under
# exports/<id>/ and hold people's data: an erasure deletes every export whose files hold the
# person (ohx_dagster/privacy/erasure.py), the rows themselves name no one.
GROUP_KINDS: Final = ("everyone", "providers", "people")
EXPORT_STATES: Final = ("accepted", "running", "complete", "failed", "cancelled", "withdrawn")

fhir_groups = sa.Table(
    "fhir_groups",
    metadata,
    sa.Column("group_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("providers", sa.Text, nullable=False, default="[]"),  # JSON list (kind providers)
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("added_at_us", sa.BigInteger, nullable=False),
    sa.Column("added_by", sa.String(128), nullable=False),
    sa.CheckConstraint(f"kind IN {GROUP_KINDS!r}", name="kind"),
)

fhir_group_members = sa.Table(
    "fhir_group_members",
    metadata,
    sa.Column("group_id", sa.String(64), primary_key=True),
    *_person(),
)

fhir_exports = sa.Table(
    "fhir_exports",
    metadata,
    sa.Column("export_id", sa.String(32), primary_key=True),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("group_id", sa.String(64)),  # None: Patient/$export (every person)
    sa.Column("types", sa.Text, nullable=False),  # JSON list of resource types
    sa.Column("since_us", sa.BigInteger),
    sa.Column("request", sa.Text, nullable=False),  # the kick-off URL, for the manifest
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("transaction_us", sa.BigInteger, nullable=False),
    sa.Column("started_us", sa.BigInteger),
    sa.Column("finished_us", sa.BigInteger),
    sa.Column("run_id", sa.String(64), nullable=False, default=""),
    sa.Column("output", sa.Text, nullable=False, default="[]"),  # JSON [{type, name, count}]
    sa.Column("progress", sa.String(128), nullable=False, default=""),
    sa.Column("error", sa.Text, nullable=False, default=""),
    sa.CheckConstraint(f"state IN {EXPORT_STATES!r}", name="state"),
)
sa.Index(None, fhir_exports.c.state)

# R5 topic-based Subscriptions (ohx_dagster/fhirapi/subscriptions.py): a client's subscription to
# one person's new or changed Observations (its filter names the person, so the row is erased with
# them), and its numbered events: recorded by publishing in the transaction that commits the
# changed resources (ohx_dagster/publish/subscription_events.py), delivered in order by the FHIR
# API process, kept SUBSCRIPTION_EVENTS_KEPT after delivery for `$events`.
SUBSCRIPTION_STATES: Final = ("requested", "active", "error", "off")

fhir_subscriptions = sa.Table(
    "fhir_subscriptions",
    metadata,
    sa.Column("subscription_id", sa.String(32), primary_key=True),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("provider", sa.String(PROVIDER_CHARS), nullable=False),
    sa.Column("user_id", sa.String(USER_CHARS), nullable=False),
    sa.Column("codes", sa.Text, nullable=False, default="[]"),  # JSON [[system or null, code]]
    sa.Column("endpoint", sa.Text, nullable=False),
    sa.Column("content", sa.String(16), nullable=False),
    sa.Column("heartbeat_s", sa.Integer, nullable=False, default=0),
    sa.Column("base", sa.Text, nullable=False),  # the API's base URL the client created it at
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text, nullable=False, default=""),
    sa.Column("events", sa.BigInteger, nullable=False, default=0),  # the last event number
    sa.Column("notifications", sa.BigInteger, nullable=False, default=0),  # the last batch
    sa.Column("delivered", sa.BigInteger, nullable=False, default=0),  # last event delivered
    sa.Column("last_sent_us", sa.BigInteger, nullable=False, default=0),
    sa.Column("retry_at_us", sa.BigInteger, nullable=False, default=0),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("lease_until_us", sa.BigInteger, nullable=False, default=0),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.CheckConstraint(f"status IN {SUBSCRIPTION_STATES!r}", name="status"),
)
sa.Index(None, fhir_subscriptions.c.provider, fhir_subscriptions.c.user_id)

fhir_subscription_events = sa.Table(
    "fhir_subscription_events",
    metadata,
    sa.Column("subscription_id", sa.String(32), primary_key=True),
    sa.Column("event_number", sa.BigInteger, primary_key=True),
    sa.Column("notification", sa.BigInteger, nullable=False),
    sa.Column("provider", sa.String(PROVIDER_CHARS), nullable=False),
    sa.Column("user_id", sa.String(USER_CHARS), nullable=False),
    sa.Column("resource_type", sa.String(64), nullable=False),
    sa.Column("resource_id", sa.String(64), nullable=False),
    sa.Column("at_us", sa.BigInteger, nullable=False),
)
