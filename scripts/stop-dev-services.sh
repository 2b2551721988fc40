#!/usr/bin/env bash
# Stop the Apache Kafka node(s) that scripts/dev-services.sh started, using their pid files
# (SIGTERM: a controlled shutdown that closes the logs cleanly; SIGKILL after 60 s), and its
# RabbitMQ node (`rabbitmqctl stop`; with --wipe its queues go too).
# PostgreSQL is left alone: it is the machine's own cluster.
#
#   scripts/stop-dev-services.sh             stop the broker (`make stop`)
#   scripts/stop-dev-services.sh --wipe      stop it and delete its storage: every topic, record,
#                                            group and committed offset (`make reset-broker`)
#   scripts/stop-dev-services.sh --node N    stop only node N (of a DHANMAN_KAFKA_NODES=3 cluster)
#   scripts/stop-dev-services.sh --kill      SIGKILL instead of a controlled shutdown (a crash)
#
# DHANMAN_KAFKA_NODES=3 acts on the three-node cluster instead of the single node.
set -euo pipefail

DATA=${DHANMAN_DATA_DIR:-$HOME/.local/state/dhanman}
NODES=${DHANMAN_KAFKA_NODES:-1}
if [ "$NODES" -eq 1 ]; then KAFKA_DATA="$DATA/kafka"; else KAFKA_DATA="$DATA/kafka-cluster"; fi
wipe=0
only=""
signal=TERM
while [ $# -gt 0 ]; do
	case "$1" in
	--wipe) wipe=1 ;;
	--node)
		only=$2
		shift
		;;
	--kill) signal=KILL ;;
	*)
		sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
		exit 2
		;;
	esac
	shift
done

log() { printf 'stop-dev-services: %s\n' "$*" >&2; }

node_dir() { if [ "$NODES" -eq 1 ]; then printf '%s\n' "$KAFKA_DATA"; else printf '%s/node-%s\n' "$KAFKA_DATA" "$1"; fi; }

node_pid() { cat "$(node_dir "$1")/kafka.pid" 2>/dev/null || true; }

alive() { # pid
	[ -n "$1" ] && kill -0 "$1" 2>/dev/null && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'
}

# The nodes are signalled together, then waited for: a cluster node shutting down in a
# controlled way needs its controller quorum, which is gone if its peers stopped first.
nodes=$(if [ -n "$only" ]; then echo "$only"; else seq "$NODES"; fi)
pids=()
for n in $nodes; do
	pid=$(node_pid "$n")
	if alive "$pid"; then
		log "stopping kafka node $n (pid $pid, SIG$signal)"
		kill -"$signal" "$pid" 2>/dev/null || true
		pids+=("$pid")
	elif [ -n "$pid" ]; then
		log "kafka node $n (pid $pid) is not running"
	else
		log "no kafka node $n started by dev-services.sh is running"
	fi
done
for pid in "${pids[@]}"; do
	for _ in $(seq 600); do
		alive "$pid" || break
		sleep 0.1
	done
	if alive "$pid"; then
		log "kafka (pid $pid) did not stop within 60 s; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		sleep 0.5
	fi
done
for n in $nodes; do rm -f "$(node_dir "$n")/kafka.pid"; done
[ ${#pids[@]} -gt 0 ] && log "stopped"

# RabbitMQ: only when no single Kafka node was named, and not when told to leave it alone.
if [ -z "$only" ] && [ "${DHANMAN_RABBITMQ:-on}" != off ]; then
	# shellcheck source=scripts/rabbitmq-env.sh
	. "$(dirname "${BASH_SOURCE[0]}")/rabbitmq-env.sh"
	rabbit_pid=$(cat "$RABBITMQ_PID_FILE" 2>/dev/null || true)
	if [ -n "$rabbit_pid" ] && kill -0 "$rabbit_pid" 2>/dev/null; then
		log "stopping rabbitmq $RABBITMQ_NODENAME (pid $rabbit_pid)"
		if [ "$signal" = KILL ]; then
			kill -KILL "$rabbit_pid" 2>/dev/null || true
		else
			timeout 60 "$(dirname "${BASH_SOURCE[0]}")/rabbitmqctl.sh" stop "$RABBITMQ_PID_FILE" >&2 ||
				kill -KILL "$rabbit_pid" 2>/dev/null || true
		fi
	fi
	rm -f "$RABBITMQ_PID_FILE"
	if [ "$wipe" -eq 1 ]; then
		log "deleting RabbitMQ's storage ($RABBITMQ_MNESIA_BASE)"
		rm -rf "$RABBITMQ_MNESIA_BASE"
	fi
fi

if [ "$wipe" -eq 1 ]; then
	log "deleting the broker's storage ($KAFKA_DATA); the next start formats a new cluster"
	rm -rf "$KAFKA_DATA"
	log "stored offsets in Postgres now point past the new, empty logs: a processor assigned such a"
	log "partition reads it from the start and moves its offset back; drop the database to start over"
fi
