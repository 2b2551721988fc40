#!/usr/bin/env bash
# Start the services dhanman-stream needs for development and tests, without Docker:
#
#   * PostgreSQL on 127.0.0.1:5432 (the machine's own cluster; installed from Debian if missing)
#   * a Kafka-protocol broker: Tansu (https://crates.io/crates/tansu) with its SQLite storage
#     engine, on 127.0.0.1:19092 (built once per machine with `cargo install`, ~12 min on 2 cores)
#
# Usage:
#   eval "$(scripts/dev-services.sh)"
#
# stdout carries ONLY `export KEY=value` lines; all progress and errors go to stderr.
# Safe to run many times, and concurrently: locks guard the install and the broker start.
#
# Environment:
#   DATABASE_URL              if set, it is checked and printed unchanged (no Postgres is started)
#   KAFKA_BOOTSTRAP_SERVERS   if set, it is checked and printed unchanged (no broker is started)
#   DHANMAN_KAFKA_PORT        broker port (default 19092)
#   DHANMAN_PG_PORT           Postgres port (default 5432)
#   DHANMAN_TOOLS_DIR         where tools are installed (default ~/.local/share/dhanman)
#   DHANMAN_DATA_DIR          broker data, log and pid file (default ~/.local/state/dhanman)
#   DHANMAN_TANSU_LOG         RUST_LOG filter for the broker (default: warn)
#   DHANMAN_WAIT_SECS         readiness timeout per service in seconds (default 60)
# shellcheck disable=SC2012 # `ls` of version-named directories is fine here
set -euo pipefail

# Keep the caller's stdout on fd 3 for the final KEY=value lines; everything else goes to stderr.
exec 3>&1 1>&2

TANSU_VERSION=0.6.0
TOOLS=${DHANMAN_TOOLS_DIR:-$HOME/.local/share/dhanman}
DATA=${DHANMAN_DATA_DIR:-$HOME/.local/state/dhanman}
KAFKA_PORT=${DHANMAN_KAFKA_PORT:-19092}
PG_PORT=${DHANMAN_PG_PORT:-5432}
PG_DB=dhanman
WAIT_SECS=${DHANMAN_WAIT_SECS:-60}
TANSU_ROOT="$TOOLS/tansu-${TANSU_VERSION}"
TANSU_BIN="$TANSU_ROOT/bin/tansu"

case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) PATH="$HOME/.cargo/bin:$PATH" ;; esac
export PATH

log() { printf 'dev-services: %s\n' "$*" >&2; }
die() {
	printf 'dev-services: error: %s\n' "$*" >&2
	exit 1
}

# run_as_root CMD...: run directly when root, else through sudo (non-interactive).
run_as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo -n "$@"
	else
		die "need root to run: $*"
	fi
}

# apt_install PKG...: install Debian packages, serialised by a lock so that concurrent runs don't race on dpkg.
apt_install() {
	mkdir -p "$TOOLS"
	(
		flock 8
		log "installing Debian packages: $*"
		export DEBIAN_FRONTEND=noninteractive
		run_as_root apt-get update -qq
		run_as_root apt-get install -y -qq --no-install-recommends "$@"
	) 8>"$TOOLS/apt.lock"
}

# ---------------------------------------------------------------------------------------------
# TCP and Kafka probes (bash /dev/tcp, no extra tools)

tcp_open() { # host port
	# shellcheck disable=SC2016 # expanded by the inner bash
	timeout 3 bash -c 'exec 4<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# kafka_ready host port: the port answers a Kafka ApiVersions v0 request with correlation id 1
# and error code NONE. Proves a Kafka-protocol broker is serving, not just that a socket is bound.
kafka_ready() {
	local reply
	# shellcheck disable=SC2016 # expanded by the inner bash
	reply=$(timeout 3 bash -c '
		exec 4<>"/dev/tcp/$1/$2" || exit 1
		# size=13 | api_key=18 (ApiVersions) | api_version=0 | correlation_id=1 | client_id="dev"
		printf "\x00\x00\x00\x0d\x00\x12\x00\x00\x00\x00\x00\x01\x00\x03dev" >&4
		head -c 10 <&4 | od -An -tx1
	' _ "$1" "$2" 2>/dev/null) || return 1
	reply=${reply//[[:space:]]/}
	# 4 bytes size, 4 bytes correlation id (=1), 2 bytes error code (=0 NONE)
	[[ "$reply" =~ ^[0-9a-f]{8}000000010000$ ]]
}

# first_host_port "h1:p1,h2:p2" -> "h1 p1" (IPv6 "[::1]:9092" supported)
first_host_port() {
	local first=${1%%,*}
	first=${first#*://}
	if [[ "$first" =~ ^\[([^]]+)\]:([0-9]+)$ ]] || [[ "$first" =~ ^([^:]+):([0-9]+)$ ]]; then
		printf '%s %s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
	else
		printf '%s 9092\n' "$first"
	fi
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

pg_ready() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; }

pg_psql() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }

pg_can_login() { pg_psql -d postgres -tAc 'select 1' </dev/null >/dev/null 2>&1; }

# The installed cluster to use: the one configured on $PG_PORT, else the newest version's `main`.
pg_cluster() {
	local ver name port line
	if command -v pg_lsclusters >/dev/null 2>&1; then
		while read -r ver name port _; do
			if [ "$port" = "$PG_PORT" ]; then
				printf '%s %s\n' "$ver" "$name"
				return 0
			fi
		done < <(pg_lsclusters -h 2>/dev/null)
	fi
	line=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1 || true)
	[ -n "$line" ] && [ -d "/etc/postgresql/$line/main" ] && printf '%s main\n' "$line"
}

pg_trust_localhost() { # ver name
	local hba="/etc/postgresql/$1/$2/pg_hba.conf" marker='# dhanman dev-services: trust local connections'
	[ -f "$hba" ] || die "no $hba"
	if ! grep -qF "$marker" "$hba"; then
		log "setting trust auth for local and 127.0.0.1 connections in $hba"
		local tmp
		tmp=$(mktemp)
		{
			echo "$marker"
			echo 'local   all   all                 trust'
			echo 'host    all   all   127.0.0.1/32  trust'
			echo 'host    all   all   ::1/128       trust'
			echo
			cat "$hba"
		} >"$tmp"
		run_as_root cp "$tmp" "$hba"
		rm -f "$tmp"
	fi
	run_as_root pg_ctlcluster --skip-systemctl-redirect "$1" "$2" reload || true
}

wait_for_pg() {
	local waited=0
	until pg_ready; do
		[ "$waited" -ge "$WAIT_SECS" ] && return 1
		sleep 1
		waited=$((waited + 1))
	done
	log "postgres ready on 127.0.0.1:$PG_PORT"
}

ensure_postgres() {
	if [ -n "${DATABASE_URL:-}" ]; then
		command -v psql >/dev/null 2>&1 || apt_install postgresql-client
		psql -X "$DATABASE_URL" -tAc 'select 1' </dev/null >/dev/null ||
			die "DATABASE_URL is set but 'select 1' failed on it"
		log "using the caller's DATABASE_URL"
		return 0
	fi

	command -v pg_isready >/dev/null 2>&1 || apt_install postgresql-client

	local fresh=0 cluster ver name
	if ! pg_ready; then
		cluster=$(pg_cluster || true)
		if [ -z "$cluster" ]; then
			log "PostgreSQL is not installed; installing it from Debian"
			apt_install postgresql
			fresh=1
			cluster=$(pg_cluster || true)
			if [ -z "$cluster" ]; then
				ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1 || true)
				[ -n "$ver" ] || ver=$(ls /usr/lib/postgresql | sort -V | tail -n1)
				log "creating cluster $ver/main on port $PG_PORT"
				run_as_root pg_createcluster -p "$PG_PORT" "$ver" main
				cluster="$ver main"
			fi
		fi
		read -r ver name <<<"$cluster"
		log "starting PostgreSQL cluster $ver/$name"
		run_as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start ||
			log "pg_ctlcluster start failed (maybe already starting); waiting for it"
		wait_for_pg || die "PostgreSQL did not become ready on 127.0.0.1:$PG_PORT within ${WAIT_SECS}s; see /var/log/postgresql/postgresql-$ver-$name.log"
		if [ "$fresh" -eq 1 ]; then pg_trust_localhost "$ver" "$name"; fi
	fi

	if ! pg_can_login; then
		cluster=$(pg_cluster || true)
		[ -n "$cluster" ] || die "cannot log in as postgres on 127.0.0.1:$PG_PORT without a password, and no local cluster to configure; set DATABASE_URL"
		read -r ver name <<<"$cluster"
		pg_trust_localhost "$ver" "$name"
		local waited=0
		until pg_can_login; do
			[ "$waited" -ge 10 ] && die "cannot log in as postgres on 127.0.0.1:$PG_PORT without a password (pg_hba.conf?); set DATABASE_URL"
			sleep 1
			waited=$((waited + 1))
		done
	fi

	if [ "$(pg_psql -d postgres -tAc "select 1 from pg_database where datname='$PG_DB'" </dev/null)" != 1 ]; then
		log "creating database $PG_DB"
		# A concurrent run may create it first: re-check instead of failing.
		pg_psql -d postgres -c "create database $PG_DB" </dev/null 2>/dev/null ||
			[ "$(pg_psql -d postgres -tAc "select 1 from pg_database where datname='$PG_DB'" </dev/null)" = 1 ] ||
			die "could not create database $PG_DB"
	fi
	DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/$PG_DB"
}

# ---------------------------------------------------------------------------------------------
# Tansu (Kafka-protocol broker)

# A `cargo install tansu@VERSION --root $TANSU_ROOT` started by something that doesn't take our lock.
foreign_tansu_build() {
	pgrep -f "cargo install tansu@${TANSU_VERSION} .*--root ${TANSU_ROOT}( |\$)" >/dev/null 2>&1
}

ensure_tansu() {
	[ -x "$TANSU_BIN" ] && return 0
	mkdir -p "$TOOLS"
	(
		if ! flock -n 9; then
			log "another run is installing tansu ${TANSU_VERSION}; waiting for its lock ($TOOLS/tansu.install.lock)"
			flock 9
		fi
		# Someone else may have finished it while we waited, or be building without our lock.
		while [ ! -x "$TANSU_BIN" ] && foreign_tansu_build; do
			log "a 'cargo install tansu@${TANSU_VERSION}' into $TANSU_ROOT is already running; waiting for it"
			sleep 15
		done
		[ -x "$TANSU_BIN" ] && exit 0
		command -v cargo >/dev/null 2>&1 || die "cargo not found: a Rust toolchain is needed to build tansu"
		command -v cc >/dev/null 2>&1 || apt_install build-essential pkg-config
		log "NOTE: building the Kafka-protocol broker tansu ${TANSU_VERSION} with cargo install;"
		log "      this takes ~12 minutes on 2 cores and happens once per machine (into $TANSU_ROOT)"
		# Own target dir: don't mix tansu's build into the project's CARGO_TARGET_DIR.
		env -u CARGO_TARGET_DIR cargo install "tansu@${TANSU_VERSION}" --locked \
			--features dynostore,libsql --root "$TANSU_ROOT" >&2
		[ -x "$TANSU_BIN" ] || die "cargo install finished but $TANSU_BIN is missing"
		log "tansu installed: $TANSU_BIN"
	) 9>"$TOOLS/tansu.install.lock"
}

tansu_pid_alive() {
	local pid
	[ -f "$DATA/tansu.pid" ] || return 1
	pid=$(cat "$DATA/tansu.pid" 2>/dev/null) || return 1
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q tansu
}

start_tansu() {
	mkdir -p "$DATA"
	(
		flock 9
		# Re-check under the lock: a concurrent run may have started it meanwhile.
		if tcp_open 127.0.0.1 "$KAFKA_PORT"; then exit 0; fi
		if tansu_pid_alive; then
			log "tansu (pid $(cat "$DATA/tansu.pid")) is starting; waiting for it"
			exit 0
		fi
		local url="tcp://127.0.0.1:$KAFKA_PORT"
		log "starting tansu ${TANSU_VERSION} on $url (storage $DATA/tansu.db, log $DATA/tansu.log)"
		printf '\n=== %s dev-services: starting tansu %s on %s\n' "$(date -u +%FT%TZ)" "$TANSU_VERSION" "$url" >>"$DATA/tansu.log"
		# The sqlite:// URL is resolved against the working directory, hence `cd` and a relative path.
		# fds 3 (our caller's stdout) and 9 (the lock) are closed so `$(...)` returns and the lock frees.
		cd "$DATA"
		rm -f tansu.pid
		# tansu also reads CLUSTER_ID, SCHEMA_REGISTRY, ... from the environment: don't inherit those.
		env -u CLUSTER_ID -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT -u DATA_LAKE \
			RUST_LOG="${DHANMAN_TANSU_LOG:-warn}" setsid bash -c 'echo $$ >tansu.pid; exec "$@"' _ \
			nohup "$TANSU_BIN" broker \
			--listener-url "$url" \
			--advertised-listener-url "$url" \
			--storage-engine "sqlite://tansu.db" \
			</dev/null >>"$DATA/tansu.log" 2>&1 3>&- 9>&- &
		# wait until the pid file is written
		for _ in $(seq 50); do
			[ -s "$DATA/tansu.pid" ] && break
			sleep 0.1
		done
	) 9>"$DATA/tansu.start.lock"
}

wait_for_kafka() { # host port
	local waited=0 start=$SECONDS
	until kafka_ready "$1" "$2"; do
		if [ "$waited" -ge "$WAIT_SECS" ]; then
			return 1
		fi
		if [ "$1:$2" = "127.0.0.1:$KAFKA_PORT" ] && [ -f "$DATA/tansu.pid" ] && ! tansu_pid_alive && ! tcp_open "$1" "$2"; then
			log "tansu exited; last lines of $DATA/tansu.log:"
			tail -n 20 "$DATA/tansu.log" >&2 || true
			die "the broker exited during startup; see $DATA/tansu.log"
		fi
		sleep 1
		waited=$((waited + 1))
	done
	log "kafka broker ready on $1:$2 (waited $((SECONDS - start))s)"
}

ensure_kafka() {
	local host port
	if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
		read -r host port <<<"$(first_host_port "$KAFKA_BOOTSTRAP_SERVERS")"
		wait_for_kafka "$host" "$port" ||
			die "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS is set but $host:$port does not answer the Kafka protocol"
		log "using the caller's KAFKA_BOOTSTRAP_SERVERS"
		return 0
	fi
	if ! tcp_open 127.0.0.1 "$KAFKA_PORT"; then
		ensure_tansu
		start_tansu
	elif tansu_pid_alive; then
		log "tansu already running (pid $(cat "$DATA/tansu.pid")) on 127.0.0.1:$KAFKA_PORT"
	else
		log "something already listens on 127.0.0.1:$KAFKA_PORT; using it"
	fi
	wait_for_kafka 127.0.0.1 "$KAFKA_PORT" ||
		die "no Kafka broker answered on 127.0.0.1:$KAFKA_PORT within ${WAIT_SECS}s; see $DATA/tansu.log"
	KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
}

# ---------------------------------------------------------------------------------------------

ensure_postgres
ensure_kafka

# `export KEY=value`, quoted only when the value holds characters the shell would interpret.
emit() {
	if [[ "$2" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
		printf 'export %s=%s\n' "$1" "$2" >&3
	else
		printf 'export %s=%q\n' "$1" "$2" >&3
	fi
}
emit DATABASE_URL "$DATABASE_URL"
emit KAFKA_BOOTSTRAP_SERVERS "$KAFKA_BOOTSTRAP_SERVERS"
