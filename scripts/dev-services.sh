#!/usr/bin/env bash
# Start the services dhanman-stream needs for development and tests, without Docker:
#
#   * PostgreSQL on 127.0.0.1:5432 (the machine's own cluster; installed from Debian if missing)
#   * Apache Kafka (the version pinned in deploy/kafka/pom.xml), one KRaft node acting as broker
#     and controller, on 127.0.0.1:19092 (controller 127.0.0.1:19093); resolved by Maven from
#     Maven Central into the tools directory once per machine (about a minute) and run with the
#     machine's Java 17+ (Debian's openjdk-17-jre-headless is installed when there is none)
#   * RabbitMQ on 127.0.0.1:5672 (Debian's rabbitmq-server, installed if missing: the broker the
#     .NET services publish to, for `dhanman bridge rabbitmq`); a node of its own, its data under
#     the data directory, no plugins
#
# Usage:
#   eval "$(scripts/dev-services.sh)"
#
# stdout carries ONLY `export KEY=value` lines; all progress and errors go to stderr.
# Safe to run many times, and concurrently: locks guard the install and the broker start.
# Stop the broker with scripts/stop-dev-services.sh (`make stop`); start over with an empty
# log with `make reset-broker`.
#
# Environment:
#   DATABASE_URL                    if set, it is checked and printed unchanged (no Postgres is started)
#   KAFKA_BOOTSTRAP_SERVERS         if set, it is checked and printed unchanged (no broker is started)
#   DHANMAN_KAFKA_PORT              broker port (default 19092)
#   DHANMAN_KAFKA_CONTROLLER_PORT   controller port (default: the broker port + 1)
#   DHANMAN_PG_PORT                 Postgres port (default 5432)
#   DHANMAN_TOOLS_DIR               where tools are installed (default ~/.local/share/dhanman)
#   DHANMAN_DATA_DIR                broker data, logs and pid file (default ~/.local/state/dhanman)
#   DHANMAN_KAFKA_NODES             1 (default) or 3: a cluster of three nodes on 29092, 29094 and
#                                   29096 (controllers one port above each), every topic's
#                                   internal replicas on all three, min.insync.replicas 2; its
#                                   data in $DHANMAN_DATA_DIR/kafka-cluster
#   DHANMAN_KAFKA_HEAP              the broker's Java heap (default 1g)
#   DHANMAN_RABBITMQ                on (default) or off: off neither checks nor starts RabbitMQ
#                                   (a test's private Kafka node, say)
#   DHANMAN_WAIT_SECS               readiness timeout per service in seconds (default 90)
#   RABBITMQ_URL                    if set, it is checked and printed unchanged (no RabbitMQ is started)
#   DHANMAN_RABBITMQ_PORT           RabbitMQ's AMQP port (default 5672; Erlang distribution on the
#                                   port + 20000)
# shellcheck disable=SC2012 # `ls` of version-named directories is fine here
set -euo pipefail

# Keep the caller's stdout on fd 3 for the final KEY=value lines; everything else goes to stderr.
exec 3>&1 1>&2

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/deploy/kafka/pom.xml")
TOOLS=${DHANMAN_TOOLS_DIR:-$HOME/.local/share/dhanman}
DATA=${DHANMAN_DATA_DIR:-$HOME/.local/state/dhanman}
KAFKA_NODES=${DHANMAN_KAFKA_NODES:-1}
case "$KAFKA_NODES" in 1) default_port=19092 ;; 3) default_port=29092 ;; *) printf 'dev-services: error: DHANMAN_KAFKA_NODES is 1 or 3\n' >&2; exit 1 ;; esac
KAFKA_PORT=${DHANMAN_KAFKA_PORT:-$default_port}
KAFKA_CONTROLLER_PORT=${DHANMAN_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
PG_PORT=${DHANMAN_PG_PORT:-5432}
PG_DB=dhanman
WAIT_SECS=${DHANMAN_WAIT_SECS:-90}
KAFKA_HEAP=${DHANMAN_KAFKA_HEAP:-1g}
KAFKA_LIBS="$TOOLS/kafka-${KAFKA_VERSION}/libs"
if [ "$KAFKA_NODES" -eq 1 ]; then KAFKA_DATA="$DATA/kafka"; else KAFKA_DATA="$DATA/kafka-cluster"; fi

case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) PATH="$HOME/.cargo/bin:$PATH" ;; esac
export PATH

log() { printf 'dev-services: %s\n' "$*" >&2; }
die() {
	printf 'dev-services: error: %s\n' "$*" >&2
	exit 1
}

# Runs "$@" holding no descriptor but 0-2: a daemon started from here must not keep our caller's
# pipes open (fd 3 is the `$(...)` that reads our output; a CI runner or a shell may pass others),
# or that caller waits for the daemon's exit instead of ours.
# Use: bash -c "$CLOSE_FDS" _ command args...
# shellcheck disable=SC2016 # expanded by the inner bash
CLOSE_FDS='for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; exec "$@"'

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

# Postgres settings for this workload (docs/operations.md, "Postgres settings"): the ledger
# writes in large transactions, so WAL volume and checkpoints matter more than connection
# count. Written with ALTER SYSTEM (postgresql.auto.conf) and applied by a reload; those that
# need a restart (shared_buffers) take effect at once when this script started Postgres, else
# at its next start. Durability is untouched: synchronous_commit and fsync stay on.
# DHANMAN_PG_SETTINGS=off leaves the server's configuration alone.
pg_workload_settings() { # started-by-this-run
	[ "${DHANMAN_PG_SETTINGS:-on}" = off ] && return 0
	# Written and reloaded only when postgresql.auto.conf does not hold them yet.
	local written
	written=$(pg_psql -d postgres -tAc "select string_agg(name || '=' || setting, ' ' order by name)
		from pg_file_settings where sourcefile like '%postgresql.auto.conf'
		and name in ('checkpoint_timeout', 'max_wal_size', 'random_page_cost', 'shared_buffers')" </dev/null)
	if [ "$written" != "checkpoint_timeout=15min max_wal_size=8GB random_page_cost=1.1 shared_buffers=1GB" ]; then
		pg_psql -d postgres </dev/null >/dev/null <<-SQL
			alter system set shared_buffers = '1GB';
			alter system set max_wal_size = '8GB';
			alter system set checkpoint_timeout = '15min';
			alter system set random_page_cost = 1.1;
			select pg_reload_conf();
		SQL
	fi
	if [ "$(pg_psql -d postgres -tAc 'select count(*) from pg_settings where pending_restart' </dev/null)" != 0 ]; then
		local cluster ver name
		cluster=$(pg_cluster || true)
		if [ "$1" -eq 1 ] && [ -n "$cluster" ]; then
			read -r ver name <<<"$cluster"
			log "restarting PostgreSQL $ver/$name for its workload settings"
			run_as_root bash -c "$CLOSE_FDS" _ pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" restart
			wait_for_pg || die "PostgreSQL did not come back after its restart"
		else
			log "PostgreSQL has settings that take effect at its next restart (shared_buffers)"
		fi
	fi
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

	local fresh=0 started=0 cluster ver name
	if ! pg_ready; then
		started=1
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
		run_as_root bash -c "$CLOSE_FDS" _ pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start ||
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

	pg_workload_settings "$started"

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
# Apache Kafka: the artifacts pinned in deploy/kafka/pom.xml, resolved by Maven into the tools
# directory once per machine, run with `java -cp` as one KRaft node (broker + controller).

java_major() { # the major version of `java` on PATH, or 0
	local v
	v=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
	printf '%s\n' "${v:-0}"
}

ensure_java() {
	if command -v java >/dev/null 2>&1 && [ "$(java_major)" -ge 17 ]; then return 0; fi
	log "no Java 17 or newer on PATH; installing Debian's openjdk-17-jre-headless"
	apt_install openjdk-17-jre-headless
	[ "$(java_major)" -ge 17 ] || die "java on PATH is $(java_major), Kafka ${KAFKA_VERSION} needs 17 or newer"
}

ensure_kafka_install() {
	[ -f "$KAFKA_LIBS/.complete" ] && return 0
	mkdir -p "$TOOLS"
	(
		flock 9
		[ -f "$KAFKA_LIBS/.complete" ] && exit 0
		command -v mvn >/dev/null 2>&1 || apt_install maven
		log "resolving Apache Kafka ${KAFKA_VERSION} from Maven Central into $KAFKA_LIBS (once per machine)"
		rm -rf "$KAFKA_LIBS.partial"
		mvn -B -q -Dstyle.color=never -f "$ROOT/deploy/kafka/pom.xml" dependency:copy-dependencies \
			-DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS.partial" </dev/null >&2 ||
			die "mvn could not resolve deploy/kafka/pom.xml (is Maven Central reachable?)"
		ls "$KAFKA_LIBS.partial"/kafka_2.13-"${KAFKA_VERSION}".jar >/dev/null ||
			die "Maven resolved no kafka_2.13-${KAFKA_VERSION}.jar"
		rm -rf "$KAFKA_LIBS"
		mv "$KAFKA_LIBS.partial" "$KAFKA_LIBS"
		touch "$KAFKA_LIBS/.complete"
		log "Apache Kafka ${KAFKA_VERSION}: $(ls "$KAFKA_LIBS" | wc -l) jars in $KAFKA_LIBS"
	) 9>"$TOOLS/kafka.install.lock"
}

# Java for a short-lived tool (storage format): quick start, warnings on stderr.
kafka_tool() {
	java -Xshare:auto -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xmx256m \
		-Dlog4j2.configurationFile="$ROOT/deploy/kafka/tools-log4j2.xml" -cp "$KAFKA_LIBS/*" "$@"
}

# The nodes: one by default (KRaft, broker and controller in one process, a dynamic quorum
# of one); DHANMAN_KAFKA_NODES=3 runs a cluster of three such nodes on ports of its own
# (29092, 29094, 29096; controllers one above each) with three replicas of every internal
# topic and min.insync.replicas 2, for the fault campaign's broker failovers.
# node_vars N sets NODE_ID, NODE_PORT, NODE_CTRL_PORT and NODE_DATA for node N.
node_vars() {
	NODE_ID=$1
	NODE_PORT=$((KAFKA_PORT + 2 * (NODE_ID - 1)))
	NODE_CTRL_PORT=$((KAFKA_CONTROLLER_PORT + 2 * (NODE_ID - 1)))
	if [ "$KAFKA_NODES" -eq 1 ]; then
		NODE_DATA=$KAFKA_DATA
	else
		NODE_DATA="$KAFKA_DATA/node-$NODE_ID"
	fi
}

# The node's configuration. Written at every start from what this script knows, so a changed
# port or setting takes effect with a restart (the storage and its cluster id stay).
write_server_properties() {
	local quorum replicas=1 min_isr=1 voters="" n
	if [ "$KAFKA_NODES" -eq 1 ]; then
		quorum="controller.quorum.bootstrap.servers=127.0.0.1:$NODE_CTRL_PORT"
	else
		for n in $(seq "$KAFKA_NODES"); do
			voters="${voters:+$voters,}$n@127.0.0.1:$((KAFKA_CONTROLLER_PORT + 2 * (n - 1)))"
		done
		quorum="controller.quorum.voters=$voters"
		replicas=3
		min_isr=2
	fi
	cat >"$NODE_DATA/server.properties" <<PROPS
# Written by scripts/dev-services.sh at every start; edit the script, not this file.
process.roles=broker,controller
node.id=$NODE_ID
$quorum
listeners=PLAINTEXT://127.0.0.1:$NODE_PORT,CONTROLLER://127.0.0.1:$NODE_CTRL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$NODE_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$NODE_DATA/data
# The internal topics have a replica on every node (one node: one replica).
offsets.topic.replication.factor=$replicas
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
default.replication.factor=$replicas
min.insync.replicas=$min_isr
# A group's first member is assigned at once instead of after 3 s of waiting for others.
group.initial.rebalance.delay.ms=0
# Topics are created by the pipeline (with their partition count), never by a typo.
auto.create.topics.enable=false
# Tests create and delete many short-lived topics: keep what they leave small.
offsets.topic.num.partitions=10
log.segment.bytes=104857600
log.retention.hours=168
num.network.threads=2
num.io.threads=4
PROPS
}

kafka_pid_alive() {
	local pid
	[ -f "$NODE_DATA/kafka.pid" ] || return 1
	pid=$(cat "$NODE_DATA/kafka.pid" 2>/dev/null) || return 1
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'
}

# The cluster's id: made once, kept beside the nodes (every node is formatted with it).
cluster_id() {
	local file="$KAFKA_DATA/cluster.id"
	if [ ! -s "$file" ]; then
		kafka_tool kafka.tools.StorageTool random-uuid | tail -n1 >"$file.tmp"
		mv "$file.tmp" "$file"
	fi
	cat "$file"
}

start_kafka() {
	mkdir -p "$NODE_DATA/logs"
	(
		flock 9
		# Re-check under the lock: a concurrent run may have started it meanwhile.
		if tcp_open 127.0.0.1 "$NODE_PORT"; then exit 0; fi
		if kafka_pid_alive; then
			log "kafka node $NODE_ID (pid $(cat "$NODE_DATA/kafka.pid")) is starting; waiting for it"
			exit 0
		fi
		write_server_properties
		if [ ! -f "$NODE_DATA/data/meta.properties" ]; then
			local id
			id=$(cluster_id)
			log "formatting the storage of node $NODE_ID of cluster $id in $NODE_DATA/data"
			if [ "$KAFKA_NODES" -eq 1 ]; then
				kafka_tool kafka.tools.StorageTool format --standalone --cluster-id "$id" \
					--config "$NODE_DATA/server.properties" >&2 || die "kafka-storage format failed"
			else
				kafka_tool kafka.tools.StorageTool format --cluster-id "$id" \
					--config "$NODE_DATA/server.properties" >&2 || die "kafka-storage format failed"
			fi
		fi
		log "starting Apache Kafka ${KAFKA_VERSION} node $NODE_ID on 127.0.0.1:$NODE_PORT (controller :$NODE_CTRL_PORT, data $NODE_DATA/data, log $NODE_DATA/logs/server.log)"
		cd "$NODE_DATA"
		rm -f kafka.pid
		# The heap Kafka's own start script uses (1 GiB, fixed: no resizing pauses), G1 with its
		# pause target; the other 23 GiB stay for Postgres, the page cache (where Kafka's
		# logs really live) and the pipeline.
		# Every inherited descriptor but 0-2 is closed (fd 3, our caller's stdout, and fd 9, the
		# lock, among them) so `$(...)` returns and the lock frees.
		# shellcheck disable=SC2016 # expanded by the inner bash
		setsid bash -c 'echo $$ >kafka.pid; '"$CLOSE_FDS" _ \
			nohup java -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
			-XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
			-XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
			-Dkafka.logs.dir="$NODE_DATA/logs" \
			-Dlog4j2.configurationFile="$ROOT/deploy/kafka/log4j2.xml" \
			-cp "$KAFKA_LIBS/*" kafka.Kafka "$NODE_DATA/server.properties" \
			</dev/null >>"$NODE_DATA/logs/stdout.log" 2>&1 3>&- 9>&- &
		for _ in $(seq 50); do
			[ -s "$NODE_DATA/kafka.pid" ] && break
			sleep 0.1
		done
	) 9>"$NODE_DATA.start.lock"
}

wait_for_kafka() { # host port
	local waited=0 start=$SECONDS
	until kafka_ready "$1" "$2"; do
		if [ "$waited" -ge "$WAIT_SECS" ]; then
			return 1
		fi
		if [ "$1:$2" = "127.0.0.1:$NODE_PORT" ] && [ -f "$NODE_DATA/kafka.pid" ] && ! kafka_pid_alive && ! tcp_open "$1" "$2"; then
			log "kafka node $NODE_ID exited; last lines of its logs:"
			tail -n 20 "$NODE_DATA/logs/stdout.log" "$NODE_DATA/logs/server.log" >&2 || true
			die "the broker exited during startup; see $NODE_DATA/logs/server.log"
		fi
		sleep 1
		waited=$((waited + 1))
	done
	log "kafka broker ready on $1:$2 (waited $((SECONDS - start))s)"
}

ensure_kafka() {
	local host port n bootstrap=""
	if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
		read -r host port <<<"$(first_host_port "$KAFKA_BOOTSTRAP_SERVERS")"
		node_vars 1
		wait_for_kafka "$host" "$port" ||
			die "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS is set but $host:$port does not answer the Kafka protocol"
		log "using the caller's KAFKA_BOOTSTRAP_SERVERS"
		return 0
	fi
	mkdir -p "$KAFKA_DATA"
	# Every node is started before any is waited for: a cluster's controllers need a
	# majority of each other to elect a leader.
	for n in $(seq "$KAFKA_NODES"); do
		node_vars "$n"
		if ! tcp_open 127.0.0.1 "$NODE_PORT"; then
			start_kafka
		elif kafka_pid_alive; then
			log "kafka node $n already running (pid $(cat "$NODE_DATA/kafka.pid")) on 127.0.0.1:$NODE_PORT"
		else
			log "something already listens on 127.0.0.1:$NODE_PORT; using it"
		fi
	done
	for n in $(seq "$KAFKA_NODES"); do
		node_vars "$n"
		wait_for_kafka 127.0.0.1 "$NODE_PORT" ||
			die "no Kafka broker answered on 127.0.0.1:$NODE_PORT within ${WAIT_SECS}s; see $NODE_DATA/logs/server.log"
		bootstrap="${bootstrap:+$bootstrap,}127.0.0.1:$NODE_PORT"
	done
	KAFKA_BOOTSTRAP_SERVERS=$bootstrap
}

# ---------------------------------------------------------------------------------------------
# RabbitMQ: Debian's rabbitmq-server run as a node of its own (scripts/rabbitmq-env.sh names it
# and its directories), so `scripts/rabbitmqctl.sh` reaches it and nothing of the system's
# service is touched.

# amqp_ready host port: the port answers the AMQP 0-9-1 protocol header with a Connection.Start
# frame (type 1, channel 0): a broker is serving, not just a socket bound.
amqp_ready() {
	local reply
	# shellcheck disable=SC2016 # expanded by the inner bash
	reply=$(timeout 3 bash -c '
		exec 4<>"/dev/tcp/$1/$2" || exit 1
		printf "AMQP\x00\x00\x09\x01" >&4
		head -c 3 <&4 | od -An -tx1
	' _ "$1" "$2" 2>/dev/null) || return 1
	reply=${reply//[[:space:]]/}
	[ "$reply" = 010000 ]
}

rabbitmq_pid_alive() {
	local pid
	pid=$(cat "$RABBITMQ_PID_FILE" 2>/dev/null) || return 1
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'rabbit'
}

ensure_rabbitmq() {
	if [ -n "${RABBITMQ_URL:-}" ]; then
		local rest host port
		rest=${RABBITMQ_URL#*://}
		rest=${rest#*@}
		rest=${rest%%/*}
		host=${rest%%:*}
		port=5672
		[ "$rest" != "$host" ] && port=${rest##*:}
		amqp_ready "$host" "$port" || die "RABBITMQ_URL is set but $host:$port does not answer AMQP"
		log "using the caller's RABBITMQ_URL"
		return 0
	fi
	# shellcheck source=scripts/rabbitmq-env.sh
	. "$ROOT/scripts/rabbitmq-env.sh"
	if amqp_ready 127.0.0.1 "$RABBITMQ_NODE_PORT"; then
		log "rabbitmq already running on 127.0.0.1:$RABBITMQ_NODE_PORT"
	else
		[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || apt_install rabbitmq-server
		mkdir -p "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
		(
			flock 9
			if amqp_ready 127.0.0.1 "$RABBITMQ_NODE_PORT" || rabbitmq_pid_alive; then exit 0; fi
			# No plugins: a quicker start, and nothing listens but AMQP on 127.0.0.1.
			[ -f "$RABBITMQ_ENABLED_PLUGINS_FILE" ] || echo '[].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
			log "starting RabbitMQ $RABBITMQ_NODENAME on 127.0.0.1:$RABBITMQ_NODE_PORT (data $RABBITMQ_MNESIA_BASE, logs $RABBITMQ_LOG_BASE)"
			rm -f "$RABBITMQ_PID_FILE"
			# Like the broker: no inherited descriptor but 0-2, so `$(...)` returns and the
			# lock frees (epmd, which the node starts, inherits from it). Run from its data
			# directory, not the caller's: a node outlives the checkout that started it, and
			# one whose working directory is gone cannot stop (its plugin look-up fails).
			# shellcheck disable=SC2016 # expanded by the inner bash
			setsid bash -c 'cd "$0" || exit 1; '"$CLOSE_FDS" "$RABBITMQ_MNESIA_BASE" \
				nohup /usr/lib/rabbitmq/bin/rabbitmq-server \
				</dev/null >>"$RABBITMQ_LOG_BASE/stdout.log" 2>&1 3>&- 9>&- &
		) 9>"$DATA/rabbitmq.start.lock"
		local waited=0 start=$SECONDS
		until amqp_ready 127.0.0.1 "$RABBITMQ_NODE_PORT"; do
			if [ "$waited" -ge "$WAIT_SECS" ]; then
				tail -n 20 "$RABBITMQ_LOG_BASE/stdout.log" >&2 || true
				die "RabbitMQ did not answer on 127.0.0.1:$RABBITMQ_NODE_PORT within ${WAIT_SECS}s; see $RABBITMQ_LOG_BASE"
			fi
			sleep 1
			waited=$((waited + 1))
		done
		log "rabbitmq ready on 127.0.0.1:$RABBITMQ_NODE_PORT (waited $((SECONDS - start))s)"
	fi
	RABBITMQ_URL="amqp://guest:guest@127.0.0.1:$RABBITMQ_NODE_PORT/%2f"
}

# ---------------------------------------------------------------------------------------------

ensure_postgres
# Kafka's jars are installed even for a broker of the caller's: its tools referee the tests.
ensure_java
ensure_kafka_install
ensure_kafka
mkdir -p "$DATA"
[ "${DHANMAN_RABBITMQ:-on}" = off ] || ensure_rabbitmq

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
[ "${DHANMAN_RABBITMQ:-on}" = off ] || emit RABBITMQ_URL "$RABBITMQ_URL"
