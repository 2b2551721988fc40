#!/usr/bin/env bash
# Stop the Apache Kafka node that scripts/dev-services.sh started, using its pid file (SIGTERM:
# a controlled shutdown that closes the logs cleanly; SIGKILL after 60 s). PostgreSQL is left
# alone: it is the machine's own cluster.
#
#   scripts/stop-dev-services.sh           stop the broker (`make stop`)
#   scripts/stop-dev-services.sh --wipe    stop it and delete its storage: every topic, record,
#                                          group and committed offset (`make reset-broker`)
set -euo pipefail

DATA=${DHANMAN_DATA_DIR:-$HOME/.local/state/dhanman}
KAFKA_DATA="$DATA/kafka"
PIDFILE="$KAFKA_DATA/kafka.pid"
wipe=0
case "${1:-}" in
--wipe) wipe=1 ;;
"") ;;
*)
	sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac

log() { printf 'stop-dev-services: %s\n' "$*" >&2; }

pid=$(cat "$PIDFILE" 2>/dev/null || true)
is_ours() { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'; }

if is_ours; then
	log "stopping kafka (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 600); do
		is_ours || break
		sleep 0.1
	done
	if is_ours; then
		log "kafka (pid $pid) did not stop within 60 s; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		sleep 0.5
	fi
	log "stopped"
elif [ -n "$pid" ]; then
	log "kafka (pid $pid) is not running"
else
	log "no broker started by dev-services.sh is running"
fi
rm -f "$PIDFILE"

if [ "$wipe" -eq 1 ]; then
	log "deleting the broker's storage ($KAFKA_DATA); the next start formats a new cluster"
	rm -rf "$KAFKA_DATA"
	log "stored offsets in Postgres now point past the new, empty logs: the processors say so at"
	log "start; move them with 'dhanman offsets reset --group G --to-earliest --execute' or drop the database"
fi
