#!/bin/sh
# The compose stack's one-shot `secrets` service: makes each deployment's own secrets, once, in
# the `secrets` volume (mounted read-only by every other service), before anything else starts.
#
#   decouple-secrets init            (the service's command) make what is missing, keep the rest
#   decouple-secrets show NAME       print one secret: postgres-password, ray-auth-token, admin-token
#
# `init` writes, in $DECOUPLE_SECRETS_DIR (default /run/decouple-secrets):
#   postgres-password  48 hex digits (URL-safe)       POSTGRES_PASSWORD_FILE of postgres and the app
#   ray-auth-token     64 hex digits                  RAY_AUTH_TOKEN_PATH of the Ray head and workers
#   admin-token        like `decouple token create`   DECOUPLE_ADMIN_TOKEN_FILE: `decouple migrate`
#                                                     stores it as the token of the admin 'admin'
# A secret given in the environment (POSTGRES_PASSWORD, RAY_AUTH_TOKEN, DECOUPLE_ADMIN_TOKEN, e.g.
# from a `.env`) is written instead of a random one. A new admin token is printed once, here, in
# this service's log; `docker compose run --rm secrets show admin-token` prints it again.
#
# The files are readable by every user of the containers that mount the volume (the postgres
# image reads its password file as its own user, the app as `decouple`); nothing else mounts it.
set -eu
umask 022
dir="${DECOUPLE_SECRETS_DIR:-/run/decouple-secrets}"
names="postgres-password ray-auth-token admin-token"

case "${1:-init}" in
  init) ;;
  show)
    name="${2:-}"
    case " $names " in
      *" $name "*) ;;
      *) echo "usage: decouple-secrets show {postgres-password|ray-auth-token|admin-token}" >&2; exit 2 ;;
    esac
    [ -s "$dir/$name" ] || { echo "decouple-secrets: no $name yet: run \`docker compose up\` first" >&2; exit 1; }
    cat "$dir/$name"
    echo
    exit 0
    ;;
  *) echo "usage: decouple-secrets [init | show NAME]" >&2; exit 2 ;;
esac

[ -w "$dir" ] || { echo "decouple-secrets: $dir is not writable" >&2; exit 1; }

# put NAME GIVEN MAKE [sticky]: write GIVEN if not empty and different, else keep the file, else
# the value of the Python expression MAKE. Prints "new" when it wrote the file. A sticky secret is
# never replaced once written: PostgreSQL takes its password when it creates its data folder, so a
# new value in the file would lock every service out of the existing database (change it with
# ALTER USER, then in the file).
put() {
  name=$1 given=$2 make=$3 sticky=${4:-}
  if [ -n "$given" ]; then
    if [ -s "$dir/$name" ] && [ "$(cat "$dir/$name")" = "$given" ]; then
      return 0
    fi
    if [ -n "$sticky" ] && [ -s "$dir/$name" ]; then
      echo "decouple-secrets: $name already set; the new value is ignored (the database keeps the one it was created with)" >&2
      return 0
    fi
    value=$given
  elif [ -s "$dir/$name" ]; then
    return 0
  else
    value=$(python -c "import secrets; print($make)")
  fi
  printf '%s' "$value" > "$dir/.$name.tmp"
  chmod 0444 "$dir/.$name.tmp"
  mv -f "$dir/.$name.tmp" "$dir/$name"
  echo new
}

pg=$(put postgres-password "${POSTGRES_PASSWORD:-}" "secrets.token_hex(24)" sticky)
ray=$(put ray-auth-token "${RAY_AUTH_TOKEN:-}" "secrets.token_hex(32)")
admin=$(put admin-token "${DECOUPLE_ADMIN_TOKEN:-}" "'dl_' + secrets.token_urlsafe(32)")

[ -z "$pg" ] || echo "decouple-secrets: wrote a new PostgreSQL password"
[ -z "$ray" ] || echo "decouple-secrets: wrote a new Ray cluster token"
if [ -n "$admin" ]; then
  echo "decouple-secrets: the admin token (user 'admin'), shown here once:"
  echo
  echo "    $(cat "$dir/admin-token")"
  echo
  echo "decouple-secrets: print it again with: docker compose run --rm secrets show admin-token"
else
  echo "decouple-secrets: secrets kept; print the admin token with: docker compose run --rm secrets show admin-token"
fi
