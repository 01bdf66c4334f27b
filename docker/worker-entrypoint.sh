#!/bin/sh
# A worker container: join the Ray cluster at $RAY_ADDRESS as a node, so that this container's
# CPUs and GPU are Ray's to schedule, then exec the given command (`decouple worker`), which claims
# studies from the database and drives them as a Ray driver on this node.
#
# Why each replica picks its own GPU: `docker compose up --scale worker=N` gives every replica the
# same device request, and Docker cannot hand a different GPU to each one (docker/compose#11863),
# so with `count: all` every replica sees every GPU of the host. Each replica therefore claims one
# GPU slot: an exclusive flock on $DECOUPLE_DATA_DIR/.gpu-slots/<i> on the data volume that all
# replicas share, held by this process and, after exec, by `decouple worker` until the container
# stops. Ray is then shown only that GPU (CUDA_VISIBLE_DEVICES=<i>, --num-gpus=1), so N replicas
# on a host with G >= N GPUs use N different GPUs, and a replica beyond G exits with a message.
#
# DECOUPLE_GPU_COUNT overrides the detected GPU count (0 turns the GPU off for this worker).
# DECOUPLE_RAY_START_ARGS adds `ray start` options for this node, e.g. `--num-cpus=8` when several
# replicas share a host (each would otherwise offer Ray every CPU of the host).
set -eu

: "${RAY_ADDRESS:?RAY_ADDRESS must name the Ray head to join, e.g. ray-head:6379}"
[ "$#" -gt 0 ] || { echo "usage: decouple-worker-entrypoint COMMAND [ARG...]" >&2; exit 2; }

gpus="${DECOUPLE_GPU_COUNT:-}"
if [ -z "$gpus" ]; then
  gpus=$(python -c 'import torch; print(torch.cuda.device_count())')
fi

ray_gpus=0
if [ "$gpus" -gt 0 ]; then
  slots="${DECOUPLE_DATA_DIR:-/data}/.gpu-slots"
  mkdir -p "$slots"
  i=0
  slot=""
  while [ "$i" -lt "$gpus" ]; do
    exec 9>"$slots/$i"
    if flock --nonblock 9; then
      slot=$i
      break
    fi
    exec 9>&-
    i=$((i + 1))
  done
  if [ -z "$slot" ]; then
    echo "decouple-worker-entrypoint: all $gpus GPUs of this host are taken by other worker containers; scale the workers to at most $gpus per host" >&2
    exit 1
  fi
  export CUDA_VISIBLE_DEVICES="$slot"
  ray_gpus=1
  echo "decouple-worker-entrypoint: this worker uses GPU $slot of $gpus"
fi

# The Ray daemons started here outlive `ray start`; they must not hold the GPU slot lock.
# $HOME/.decouple-ray-joined exists once this node has joined (the compose healthcheck reads it);
# it is removed first, since a restarted container keeps its files.
#
# Replicas sharing a data volume join one at a time (a lock on the volume), and a failed join is
# tried again (DECOUPLE_RAY_START_ATTEMPTS, default 5): `ray start` gives a new node's agents about
# 30 s to come up, which several nodes starting at once on a small, busy host can miss.
joined="${HOME:-/tmp}/.decouple-ray-joined"
rm -f "$joined"
data="${DECOUPLE_DATA_DIR:-/data}"
mkdir -p "$data" 2>/dev/null || true
attempt=1
attempts="${DECOUPLE_RAY_START_ATTEMPTS:-5}"
while :; do
  # shellcheck disable=SC2086 # DECOUPLE_RAY_START_ARGS is a list of options, split on purpose
  if flock "$data/.ray-join.lock" ray start --address="$RAY_ADDRESS" --num-gpus="$ray_gpus" --disable-usage-stats \
      ${DECOUPLE_RAY_START_ARGS:-} 9>&-; then
    break
  fi
  if [ "$attempt" -ge "$attempts" ]; then
    echo "decouple-worker-entrypoint: could not join the Ray cluster at $RAY_ADDRESS ($attempt attempts)" >&2
    exit 1
  fi
  attempt=$((attempt + 1))
  echo "decouple-worker-entrypoint: joining the Ray cluster again (attempt $attempt of $attempts)" >&2
done
touch "$joined"
exec "$@"
