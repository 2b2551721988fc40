#!/usr/bin/env bash
# Stop the Kafka-protocol broker (tansu) that scripts/dev-services.sh started, using its pid file.
# PostgreSQL is left alone: it is the machine's own cluster.
set -euo pipefail

DATA=${DHANMAN_DATA_DIR:-$HOME/.local/state/dhanman}
PIDFILE="$DATA/tansu.pid"

log() { printf 'stop-dev-services: %s\n' "$*" >&2; }

if [ ! -f "$PIDFILE" ]; then
	log "no $PIDFILE: no broker started by dev-services.sh"
	exit 0
fi

pid=$(cat "$PIDFILE" 2>/dev/null || true)
is_ours() { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q tansu; }

if ! is_ours; then
	log "broker (pid ${pid:-?}) is not running; removing stale $PIDFILE"
	rm -f "$PIDFILE"
	exit 0
fi

log "stopping tansu (pid $pid)"
kill -TERM "$pid" 2>/dev/null || true
for _ in $(seq 100); do
	is_ours || break
	sleep 0.1
done
if is_ours; then
	log "tansu (pid $pid) did not stop within 10s; sending SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
	sleep 0.5
fi
rm -f "$PIDFILE"
log "stopped"
