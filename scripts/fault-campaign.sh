#!/usr/bin/env bash
# The fault campaign: the pipeline as separate processes (two API processes, two relays, two
# of each processor) under a steady load of commands; each round kills one process with
# SIGKILL at a random moment (in some rounds restarts Postgres or the Kafka broker instead)
# and starts it again; at the end the books are checked against the commands the load saw
# acknowledged. Prints one summary line, e.g.
#
#   rounds 20, commands 2410, lost 0, doubled 0, receivables off 0, emails doubled 0, audit violations 0
#
# and exits 1 when any of them is not 0.
#
#   scripts/fault-campaign.sh [ROUNDS] [dhanman campaign options...]
#
# ROUNDS defaults to 20. Broker and Postgres restarts are on when this script started the
# broker and Postgres is the machine's own (they are restarted with the same scripts);
# DHANMAN_FAULT_SEED picks another campaign (default 1). The binary is the release build
# (built if missing or stale); DHANMAN_BIN names another one.
#
# DHANMAN_KAFKA_NODES=3 runs the campaign against three Kafka brokers on this machine
# (replication factor 3, min.insync.replicas 2, started by scripts/dev-services.sh), and a
# broker fault SIGKILLs one node (the active controller the first time) and starts it again.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROUNDS=${1:-20}
shift || true

log() { printf 'fault-campaign: %s\n' "$*" >&2; }

NODES=${DHANMAN_KAFKA_NODES:-1}
if [ "$NODES" -gt 1 ]; then
	# The three-node cluster of scripts/dev-services.sh, not a broker of the caller's.
	unset KAFKA_BOOTSTRAP_SERVERS
fi
dev_env=$(scripts/dev-services.sh)
eval "$dev_env"

if [ -n "${DHANMAN_BIN:-}" ]; then
	bin=$DHANMAN_BIN
else
	log "building the release binary"
	cargo build --release --bin dhanman >&2
	bin="${CARGO_TARGET_DIR:-$ROOT/target}/release/dhanman"
fi

faults=(--kafka-nodes "$NODES")
DATA=${DHANMAN_DATA_DIR:-$HOME/.local/state/dhanman}
if [ "$NODES" -gt 1 ] || { [ "$KAFKA_BOOTSTRAP_SERVERS" = "127.0.0.1:${DHANMAN_KAFKA_PORT:-19092}" ] && [ -f "$DATA/kafka/kafka.pid" ]; }; then
	faults+=(--broker-faults)
fi
if [[ "$DATABASE_URL" == postgres://postgres@127.0.0.1:5432/* ]] && command -v pg_ctlcluster >/dev/null 2>&1; then
	faults+=(--postgres-faults)
fi
log "$ROUNDS rounds, faults: kill ${faults[*]:-}"
exec "$bin" campaign --rounds "$ROUNDS" --seed "${DHANMAN_FAULT_SEED:-1}" "${faults[@]}" "$@"
