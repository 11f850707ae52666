#!/bin/sh
# The stand-in postgres:17's entrypoint: what docker-compose.yml uses of the
# official one. On an empty $PGDATA: initdb as POSTGRES_USER (default
# postgres), with POSTGRES_PASSWORD if given, connections from anywhere
# with POSTGRES_HOST_AUTH_METHOD (default scram-sha-256, which then needs
# POSTGRES_PASSWORD), and the database POSTGRES_DB (default the user's name).
# Then runs the command (postgres) as the postgres user.
set -eu

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  user="${POSTGRES_USER:-postgres}"
  db="${POSTGRES_DB:-$user}"
  auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
    echo "stand-in postgres: set POSTGRES_PASSWORD, or POSTGRES_HOST_AUTH_METHOD=trust" >&2
    exit 1
  fi
  pwfile=/tmp/pgpass.$$
  printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
  pwopt=""
  [ -z "${POSTGRES_PASSWORD:-}" ] || pwopt="--pwfile=$pwfile"
  initdb -D "$PGDATA" -U "$user" -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host="$auth" ${pwopt:+"$pwopt"}
  rm -f "$pwfile"
  echo "host all all all $auth" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  if [ "$db" != postgres ]; then
    echo "CREATE DATABASE \"$db\";" | postgres --single -j -D "$PGDATA" postgres >/dev/null
  fi
  echo "stand-in postgres: initialised $PGDATA (user $user, database $db, host auth $auth)"
fi

exec "$@"
