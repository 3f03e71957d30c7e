#!/usr/bin/env bash
# A throwaway PostgreSQL server from Debian's package, for the tests and local trials of
# a shared catalogue. It runs as a non-root user (PostgreSQL refuses root) in its own
# data folder, listens on 127.0.0.1 only and requires a password (scram-sha-256).
#
#   scripts/postgres.sh install                      # apt-get install postgresql if missing
#   scripts/postgres.sh start DIR PORT PASSWORD      # initdb on first use; database+user "facestream"
#   scripts/postgres.sh stop DIR | restart DIR | status DIR
set -euo pipefail

pg_bin() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
  [[ -n "$d" && -x "$d/initdb" ]] && echo "$d"
}

install() {
  if pg_bin >/dev/null; then return 0; fi
  if [[ "$(id -u)" != 0 ]]; then
    echo "postgres.sh: PostgreSQL is not installed (apt-get install postgresql, as root)" >&2
    exit 1
  fi
  echo "[postgres] installing Debian's postgresql package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null
  pg_bin >/dev/null
}

# The unprivileged account the server runs as: the package's "postgres", else ourselves.
run_as() {
  if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
  install) install ;;
  start)
    dir="$1"; port="$2"; password="$3"
    install
    bin="$(pg_bin)"
    mkdir -p "$dir"
    if [[ "$(id -u)" == 0 ]]; then chown postgres: "$dir"; chmod 700 "$dir"; fi
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
      pw="$(mktemp)"; printf '%s\n' "$password" > "$pw"; chmod 644 "$pw"
      run_as "$bin/initdb" -D "$dir/data" -U facestream --pwfile="$pw" \
        --auth=scram-sha-256 -E UTF8 >"$dir/initdb.log" 2>&1 || { rm -f "$pw"; cat "$dir/initdb.log" >&2; exit 1; }
      rm -f "$pw"
      fresh=1
    fi
    run_as "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
    if [[ -n "${fresh:-}" ]]; then
      PGPASSWORD="$password" "$bin/createdb" -h 127.0.0.1 -p "$port" -U facestream facestream
    fi
    echo "postgresql+psycopg://facestream@127.0.0.1:$port/facestream"
    ;;
  stop)
    bin="$(pg_bin)"; dir="$1"
    [[ -f "$dir/data/postmaster.pid" ]] && run_as "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  restart)
    bin="$(pg_bin)"; dir="$1"
    run_as "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 restart >/dev/null
    ;;
  status)
    bin="$(pg_bin)"; dir="$1"
    run_as "$bin/pg_ctl" -D "$dir/data" status
    ;;
  *) echo "usage: $0 install | start DIR PORT PASSWORD | stop DIR | restart DIR | status DIR" >&2; exit 2 ;;
esac
