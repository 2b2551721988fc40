#!/usr/bin/env bash
# Checks the Avro contracts in schemas/avro/ against every version this project has released
# (schemas/released/), the way a registry holding them would judge a new version:
#
#   1. a scratch database, migrated, and `dhanman api` on a free port serving the embedded
#      registry from it (the API needs no Kafka);
#   2. `dhanman schemas register --dir schemas/released`: the released versions, oldest first;
#   3. the global level set to what the project promises, BACKWARD_TRANSITIVE (see
#      schemas/released/README.md): the newest schema reads every released version;
#   4. `dhanman schemas check --dir schemas/avro`, whose exit code this script exits with:
#      0 compatible, 1 a schema breaks its subject, 2 an error.
#
# The API is stopped and the scratch database dropped however the script ends.
#
# Usage: scripts/check-schemas.sh [path/to/dhanman]
#   default binary: $CARGO_TARGET_DIR/debug/dhanman, else <repository>/target/debug/dhanman
# Environment:
#   DATABASE_URL   Postgres whose role may create databases (e.g. from scripts/dev-services.sh)
# Needs psql and python3.
set -euo pipefail

LEVEL=BACKWARD_TRANSITIVE

log() { printf 'check-schemas: %s\n' "$*" >&2; }
die() {
	printf 'check-schemas: error: %s\n' "$*" >&2
	exit 2
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Resolved before the cd below: a relative path (argument or CARGO_TARGET_DIR, as cargo reads
# it) is relative to the caller's directory.
BIN=${1:-${CARGO_TARGET_DIR:-$REPO/target}/debug/dhanman}
[ -x "$BIN" ] || die "no dhanman binary at $BIN (build it with: cargo build -p dhanman)"
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
cd "$REPO"

# A released version is immutable: its file in schemas/avro/ must still be byte for byte the
# released one (a registry would see any change, even to a doc, as a new schema).
changed=0
while IFS= read -r released; do
	current="schemas/avro/${released#schemas/released/}"
	if ! cmp -s "$released" "$current"; then
		log "BREAKS $current: released version changed or removed (compare with $released)"
		changed=1
	fi
done < <(find schemas/released -name '*.avsc' | sort)
[ "$changed" = 0 ] || exit 1

[ -n "${DATABASE_URL:-}" ] || die 'DATABASE_URL is not set (eval "$(scripts/dev-services.sh)")'
command -v psql >/dev/null 2>&1 || die "psql is needed (apt-get install postgresql-client)"
command -v python3 >/dev/null 2>&1 || die "python3 is needed"

DB_NAME="dhanman_schemas_$(date +%s)_$$"
[[ $DATABASE_URL =~ ^([a-z]+://[^/?]*)(/[^?]*)?(\?.*)?$ ]] ||
	die "DATABASE_URL is not a postgres://host/database URL"
SCRATCH_URL="${BASH_REMATCH[1]}/$DB_NAME${BASH_REMATCH[3]}"
API_LOG=$(mktemp)
API_PID=""
DB_CREATED=""

pg() { psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" "$@" </dev/null; }

cleanup() {
	local rc=$?
	if [ -n "$API_PID" ]; then
		kill "$API_PID" 2>/dev/null || true
		wait "$API_PID" 2>/dev/null || true
	fi
	if [ -n "$DB_CREATED" ]; then
		pg -c "drop database if exists $DB_NAME with (force)" >/dev/null ||
			log "could not drop the scratch database $DB_NAME"
	fi
	rm -f "$API_LOG"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pg -c "create database $DB_NAME" >/dev/null || die "could not create the scratch database $DB_NAME"
DB_CREATED=1
DATABASE_URL=$SCRATCH_URL "$BIN" migrate </dev/null || die "dhanman migrate failed (see above)"

# Writes to the registry need a registry user.
USER_INFO=$(DATABASE_URL=$SCRATCH_URL "$BIN" registry users add check-schemas 2>/dev/null </dev/null) ||
	die "could not add a registry user"

# Port 0: the API binds a free port and logs it (JSON log: "addr":"127.0.0.1:NNNNN"). The API
# registers the local schemas under its own topics' subjects when it starts: under a prefix
# of its own, so that the subjects checked here hold only the released versions.
DATABASE_URL=$SCRATCH_URL DHANMAN_HTTP_ADDR=127.0.0.1:0 DHANMAN_LOG_FORMAT=json \
	DHANMAN_TOPIC_PREFIX=check-schemas-api. \
	RUST_LOG=info,sqlx=warn "$BIN" api </dev/null >/dev/null 2>>"$API_LOG" &
API_PID=$!
ADDR=""
for _ in $(seq 150); do
	ADDR=$(grep -o '"addr":"[^"]*"' "$API_LOG" | head -n 1 | cut -d'"' -f4) || true
	[ -n "$ADDR" ] && break
	kill -0 "$API_PID" 2>/dev/null || die "dhanman api stopped: $(cat "$API_LOG")"
	sleep 0.2
done
[ -n "$ADDR" ] || die "dhanman api did not report its address within 30 s: $(cat "$API_LOG")"
REGISTRY="http://$ADDR/schema-registry"
log "scratch registry at $REGISTRY (database $DB_NAME)"

# The caller's registry settings must not leak in: this registry is the scratch one.
schemas() {
	env -u SCHEMA_REGISTRY_URL -u DHANMAN_TOPIC_PREFIX SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO="$USER_INFO" \
		"$BIN" schemas "$1" --registry "$REGISTRY" "${@:2}" </dev/null
}

log "registering the released versions (schemas/released)"
schemas register --dir schemas/released >&2 ||
	die "the released versions do not register cleanly (see above)"

log "global level: $LEVEL"
USER_INFO=$USER_INFO python3 - "$REGISTRY/config" "$LEVEL" <<'EOF' || die "could not set the global level"
import base64, json, os, sys, urllib.request
auth = base64.b64encode(os.environ["USER_INFO"].encode()).decode()
request = urllib.request.Request(
    sys.argv[1],
    method="PUT",
    data=json.dumps({"compatibility": sys.argv[2]}).encode(),
    headers={"Content-Type": "application/vnd.schemaregistry.v1+json",
             "Authorization": "Basic " + auth},
)
urllib.request.urlopen(request, timeout=10).read()
EOF

log "checking schemas/avro against them"
rc=0
schemas check --dir schemas/avro || rc=$?
exit "$rc"
