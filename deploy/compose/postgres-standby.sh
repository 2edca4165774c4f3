#!/bin/sh
# The postgres-standby service: on its first start a base backup of the postgres service,
# then a hot standby streaming from it as "standby" (the name postgres lists in
# synchronous_standby_names under the ha profile). Promote it with
#   docker compose exec -u postgres postgres-standby pg_ctl promote
set -eu
mkdir -p "$PGDATA"
chown postgres:postgres "$PGDATA"
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  password="$(cat /run/secrets/postgres_password)"
  until pg_isready -q -h postgres -U shortener; do sleep 1; done
  PGPASSWORD="$password" gosu postgres pg_basebackup --host=postgres --username=shortener \
    --pgdata="$PGDATA" --wal-method=stream --checkpoint=fast --write-recovery-conf
  echo "primary_conninfo = 'host=postgres user=shortener password=$password application_name=standby'" \
    >>"$PGDATA/postgresql.auto.conf"
fi
exec gosu postgres postgres -c max_connections=200
