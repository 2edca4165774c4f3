#!/bin/sh
# Runs once, when the postgres service initialises its data directory (the image runs every
# script of /docker-entrypoint-initdb.d): lets a standby stream from it with the app's
# password, and gives the app's role the statement timeout that PgBouncer keeps it from
# setting per session (the app sets it itself when it connects directly).
set -eu
echo "host replication ${POSTGRES_USER} all scram-sha-256" >>"$PGDATA/pg_hba.conf"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "ALTER ROLE \"${POSTGRES_USER}\" SET statement_timeout = '1s'"
