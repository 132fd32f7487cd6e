#!/bin/sh
# First start of the postgres service only (empty data volume): one database and one owner role
# each for the Dagster instance (dagster) and the record store (ohx). The superuser (postgres)
# stays with this container; the applications get only their own role.
set -e
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
  --set dagster_password="$DAGSTER_DB_PASSWORD" --set ohx_password="$OHX_DB_PASSWORD" <<'SQL'
CREATE ROLE dagster LOGIN PASSWORD :'dagster_password';
CREATE DATABASE dagster OWNER dagster;
CREATE ROLE ohx LOGIN PASSWORD :'ohx_password';
CREATE DATABASE ohx OWNER ohx;
REVOKE ALL ON DATABASE dagster FROM PUBLIC;
REVOKE ALL ON DATABASE ohx FROM PUBLIC;
SQL
