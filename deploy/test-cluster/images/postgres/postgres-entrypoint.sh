#!/bin/bash
# Initialise PGDATA on first start (POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB), then
# run the server in the foreground. Passwords are scram-sha-256 for every host; the
# server listens on the pod's addresses (the Service is the only way in).
set -euo pipefail
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
user="${POSTGRES_USER:-facestream}"
db="${POSTGRES_DB:-$user}"
# The volume's folder may be root-owned (a hostPath/local-path volume); PGDATA is a
# subfolder that this user creates and owns, mode 0700 as initdb requires.
export PGDATA="${PGDATA:-/var/lib/postgresql/data/pgdata}"
mkdir -p "$PGDATA"
chmod 700 "$PGDATA"
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  pw="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pw"
  initdb -D "$PGDATA" -U "$user" --pwfile="$pw" --auth=scram-sha-256 -E UTF8 >/dev/null
  rm -f "$pw"
  printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  # Create the database with a server on the socket only, then stop it.
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -k /tmp" start >/dev/null
  PGPASSWORD="$POSTGRES_PASSWORD" psql -h /tmp -U "$user" -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE DATABASE \"$db\" OWNER \"$user\"" >/dev/null || true
  pg_ctl -D "$PGDATA" -w -m fast stop >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -k /tmp
