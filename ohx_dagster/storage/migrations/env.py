"""Alembic environment: runs on the connection ohx_dagster.storage.migrate hands over (never a URL
from a
file), against the one schema module, ohx_dagster.storage.schema."""

from alembic import context

from ohx_dagster.storage.schema import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
