#!/bin/sh
# Every container of the Decouple Lab image starts here (the image's ENTRYPOINT), then execs its
# command. It reads the deployment's secrets from files, so that no secret needs to sit in the
# compose file, the environment of `docker inspect`, or a `.env`:
#
# * POSTGRES_PASSWORD_FILE: the database password, exported as PGPASSWORD, which libpq (psycopg)
#   uses whenever DECOUPLE_DATABASE_URL names no password. Ray's worker processes inherit it from
#   the `ray start` that docker/worker-entrypoint.sh runs, so trials reach the database as well.
#
# Ray reads its token from RAY_AUTH_TOKEN_PATH by itself, which also covers `docker exec` (the
# ray-head healthcheck), where this script does not run.
set -eu

if [ -n "${POSTGRES_PASSWORD_FILE:-}" ] && [ -z "${PGPASSWORD:-}" ]; then
  if [ ! -r "$POSTGRES_PASSWORD_FILE" ]; then
    echo "decouple-entrypoint: cannot read POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE (did the secrets service run?)" >&2
    exit 1
  fi
  PGPASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
  export PGPASSWORD
fi
[ "$#" -gt 0 ] || { echo "usage: decouple-entrypoint COMMAND [ARG...]" >&2; exit 2; }
exec "$@"
