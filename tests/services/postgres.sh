#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests (recipe: shared/docs/test-services.md).
#   postgres.sh start DIR [PORT]   prints the SQLAlchemy URL of a fresh database on stdout
#   postgres.sh stop DIR
# As root (CI), initdb and pg_ctl run as the `postgres` user, which initdb requires.
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?directory}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bin" ] || { echo "postgres.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 3; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case $cmd in
start)
  port=${3:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$dir"
    chmod o+x "$(dirname "$dir")"   # the postgres user must reach DIR (mktemp -d makes it 0700)
  fi
  as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log"
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null
  as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres ecoq_test
  echo "postgresql+psycopg://postgres@127.0.0.1:$port/ecoq_test"
  ;;
stop)
  [ -d "$dir/data" ] && as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
  ;;
*) echo "usage: postgres.sh start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
