#!/usr/bin/env bash
# Holds a live HTTP API to its OpenAPI document (api/openapi.json, served at /openapi.json)
# with schemathesis: every documented operation, with valid and invalid inputs, must never
# answer a 5xx (`not_a_server_error`) and must answer only the status codes the document
# lists (`status_code_conformance`), in the shape it gives them
# (`response_schema_conformance`). Exits non-zero on any failure.
#
# Usage: scripts/api-fuzz.sh [SECONDS]           time budget of the run (default 60)
#        scripts/api-fuzz.sh --examples N        at most N test cases per operation
#
# By default it starts its own pipeline: a fresh database (dropped afterwards), an
# organization with an admin key, a development payment gateway, and `dhanman up` (API,
# relay and processors, so balances, statements and entries have rows to show) on a free
# port with topics under a random prefix (deleted afterwards), the per-key rate limit off
# and consistency waits short. Set DHANMAN_API_URL and DHANMAN_API_KEY to fuzz an API that
# is already running instead (nothing is started or cleaned up then, and keys are not
# revoked): a throwaway one, as the run creates thousands of customers, invoices and users.
#
# The document is checked first with openapi-spec-validator. /schema-registry (Confluent's
# API, only a tag of the document) is not fuzzed; /metrics and the /dashboard assets are
# text, not JSON, and are left out too, and so is `POST /v1/keys/{id}/rotate`: stateful
# testing finds the fuzzer's own key in `GET /v1/keys`, and rotating it revokes it, after
# which every request is 401 (revoking it is refused: it is the last admin key). The key
# is an administrator's, so approving and rejecting purchase orders only ever gets 403
# (tests/pipeline/purchase.rs covers them). The Python tools come from the venv of
# scripts/python-env.sh (versions pinned in scripts/python-requirements.txt).
#
# Environment:
#   DHANMAN_API_URL, DHANMAN_API_KEY   an API to use instead of starting one
#   DHANMAN_FUZZ_SEED                  schemathesis' seed (default: random, printed)
#   DHANMAN_FUZZ_CHECKS                schemathesis' checks (default: the three above)
#   DHANMAN_FUZZ_REPORTS               its report formats (default `junit`; `junit,har`
#                                      keeps every request and response)
#   DHANMAN_FUZZ_REPORT                directory for the reports and the processes' logs
#                                      (default: a temporary one, kept on failure)
#   DHANMAN_VENV                       the Python venv (see scripts/python-env.sh)
#   CARGO_TARGET_DIR                   where the binary is built (cargo's default otherwise)
set -euo pipefail

usage() {
	sed -n '8,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}
budget=(--max-time 60)
case "${1:-}" in
"") ;;
--examples)
	[[ ${2:-} =~ ^[1-9][0-9]*$ ]] || usage
	budget=(--max-examples "$2")
	;;
*)
	[[ $1 =~ ^[1-9][0-9]*$ ]] || usage
	budget=(--max-time "$1")
	;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
log() { printf 'api-fuzz: %s\n' "$*" >&2; }

eval "$(scripts/python-env.sh)"
venv_bin=$(dirname "$DHANMAN_PYTHON")

log "validating api/openapi.json"
"$venv_bin/openapi-spec-validator" api/openapi.json >&2

report=${DHANMAN_FUZZ_REPORT:-$(mktemp -d -t dhanman-api-fuzz.XXXXXX)}
mkdir -p "$report"
pids=()
skip=(--exclude-operation-id rotate_key)
database=""
admin_url=""
prefix=""

cleanup() {
	local status=$?
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [ -n "$database" ]; then
		dropdb --force --if-exists --maintenance-db="$admin_url" "$database" 2>/dev/null ||
			log "could not drop the database $database"
	fi
	if [ -n "$prefix" ]; then
		scripts/kafka-tools.sh topics --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" \
			--delete --topic "${prefix//./\\.}.*" >/dev/null 2>&1 ||
			log "could not delete the topics ${prefix}*"
	fi
	if [ "$status" -eq 0 ] && [ -z "${DHANMAN_FUZZ_REPORT:-}" ]; then
		rm -rf "$report"
	else
		log "report and logs kept in $report"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
	"$DHANMAN_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

if [ -n "${DHANMAN_API_URL:-}" ]; then
	[ -n "${DHANMAN_API_KEY:-}" ] || {
		echo "api-fuzz: DHANMAN_API_URL needs DHANMAN_API_KEY" >&2
		exit 2
	}
	url=${DHANMAN_API_URL%/}
	key=$DHANMAN_API_KEY
	# Stateful testing would revoke the first key `GET /v1/keys` lists: someone's real key.
	skip+=(--exclude-operation-id revoke_key)
else
	dev_env="$(scripts/dev-services.sh)"
	eval "$dev_env"
	log "building dhanman"
	cargo build --quiet --bin dhanman >&2
	bin="${CARGO_TARGET_DIR:-$REPO/target}/debug/dhanman"

	suffix=$("$DHANMAN_PYTHON" -c 'import secrets; print(secrets.token_hex(5))')
	database="dhanman_fuzz_$suffix"
	prefix="fuzz$suffix."
	admin_url=$DATABASE_URL
	createdb --maintenance-db="$admin_url" "$database"
	export DATABASE_URL="${admin_url%/*}/$database"
	"$bin" migrate 2>/dev/null
	key=$("$bin" orgs create --name "Fuzz Society" | "$DHANMAN_PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')

	"$bin" gateway --addr 127.0.0.1:0 >"$report/gateway.out" 2>"$report/gateway.log" &
	pids+=($!)
	for _ in $(seq 100); do
		[ -s "$report/gateway.out" ] && break
		sleep 0.1
	done
	gateway=$("$DHANMAN_PYTHON" -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["addr"])' "$report/gateway.out")

	port=$(free_port)
	url="http://127.0.0.1:$port"
	DHANMAN_HTTP_ADDR="127.0.0.1:$port" \
		DHANMAN_TOPIC_PREFIX="$prefix" \
		DHANMAN_GATEWAY_URL="http://$gateway" \
		DHANMAN_API_RATE_LIMIT=0 \
		DHANMAN_CONSISTENCY_WAIT_MS=200 \
		RUST_LOG="${RUST_LOG:-warn}" \
		"$bin" up >"$report/api.log" 2>&1 &
	pids+=($!)
	log "waiting for the API on $url (database $database, topics ${prefix}*)"
	for _ in $(seq 600); do
		curl -sf "$url/readyz" >/dev/null 2>&1 && break
		kill -0 "${pids[-1]}" 2>/dev/null || {
			tail -20 "$report/api.log" >&2
			echo "api-fuzz: the API exited" >&2
			exit 1
		}
		sleep 0.1
	done
	curl -sf "$url/readyz" >/dev/null || {
		echo "api-fuzz: the API did not get ready" >&2
		exit 1
	}
fi

# Schemathesis draws `Idempotency-Key` values from a small space ("0", "!", ...), so most
# commands would replay or conflict with an earlier command's key (409) instead of running.
# A key the API would accept is suffixed with a digest of the body: the same key with the
# same body still replays, and another body gets its own key. Invalid keys are left as
# generated, to be refused.
cat >"$report/dhanman_fuzz_hooks.py" <<'PY'
import hashlib

import schemathesis


@schemathesis.hook
def map_case(context, case):
    key = case.headers.get("Idempotency-Key") if case.headers else None
    if isinstance(key, str) and 1 <= len(key.strip()) <= 240 and key.isascii() and key.isprintable():
        digest = hashlib.sha256(repr(case.body).encode()).hexdigest()[:12]
        case.headers["Idempotency-Key"] = f"{key.strip()}-{digest}"
    return case
PY

seed=${DHANMAN_FUZZ_SEED:-$RANDOM$RANDOM}
log "schemathesis against $url/openapi.json (${budget[*]}, seed $seed)"
started=$SECONDS
status=0
# From the report directory: schemathesis keeps a cache (.schemathesis/) where it runs.
(cd "$report" && PYTHONPATH="$report" SCHEMATHESIS_HOOKS=dhanman_fuzz_hooks "$venv_bin/st" run "$url/openapi.json" \
	--header "Authorization: Bearer $key" \
	--checks "${DHANMAN_FUZZ_CHECKS:-not_a_server_error,status_code_conformance,response_schema_conformance}" \
	--exclude-path-regex '^/(schema-registry|metrics|dashboard)' \
	"${skip[@]}" \
	"${budget[@]}" \
	--seed "$seed" \
	--generation-database none \
	--report "${DHANMAN_FUZZ_REPORTS:-junit}" --report-dir "$report" \
	--no-color) || status=$?
log "schemathesis finished in $((SECONDS - started)) s with exit code $status"
exit "$status"
