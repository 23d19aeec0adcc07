#!/bin/sh
# First start of the compose PostgreSQL: an `example` database with a small table, and a read-only role
# `reader` for the provisioned PostgreSQL data source. gateway's own database stays out of its reach.
set -eu
psql -v ON_ERROR_STOP=1 -v reader_password="$EXAMPLE_READER_PASSWORD" \
     --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE reader LOGIN PASSWORD :'reader_password';
REVOKE CONNECT ON DATABASE gateway FROM PUBLIC;
CREATE DATABASE example;
\connect example
CREATE TABLE sample (time timestamptz NOT NULL, host text NOT NULL, value double precision NOT NULL);
INSERT INTO sample
SELECT t, 'host-' || h, 50 + 40 * sin(extract(epoch FROM t) / 600 + h)
FROM generate_series(now() - interval '7 days', now(), interval '1 minute') AS t, generate_series(1, 3) AS h;
GRANT SELECT ON sample TO reader;
SQL
