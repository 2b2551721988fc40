#!/usr/bin/env bash
# Apache Kafka's own command-line tools, run from the jars scripts/dev-services.sh installed
# (the version pinned in deploy/kafka/pom.xml). The first argument names the tool as Kafka's
# bin/ scripts do, without the `kafka-` prefix and `.sh`:
#
#   scripts/kafka-tools.sh consumer-groups --bootstrap-server 127.0.0.1:19092 --describe --group G
#   scripts/kafka-tools.sh get-offsets --bootstrap-server 127.0.0.1:19092 --topic dhanman.sales.invoices
#   scripts/kafka-tools.sh topics --bootstrap-server 127.0.0.1:19092 --list
#
# Tools: consumer-groups, get-offsets, topics, configs, metadata-quorum, broker-api-versions,
# console-consumer, console-producer, producer-perf-test, consumer-perf-test, storage.
# Warnings go to stderr; stdout is exactly what the tool prints. The tests use this as the
# referee of `dhanman lag` and `dhanman offsets`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/deploy/kafka/pom.xml")
TOOLS=${DHANMAN_TOOLS_DIR:-$HOME/.local/share/dhanman}
LIBS="$TOOLS/kafka-${KAFKA_VERSION}/libs"

usage() {
	sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}
[ $# -ge 1 ] || usage
tool=$1
shift
case "$tool" in
consumer-groups) class=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
get-offsets) class=org.apache.kafka.tools.GetOffsetShell ;;
topics) class=org.apache.kafka.tools.TopicCommand ;;
configs) class=kafka.admin.ConfigCommand ;;
metadata-quorum) class=org.apache.kafka.tools.MetadataQuorumCommand ;;
broker-api-versions) class=org.apache.kafka.tools.BrokerApiVersionsCommand ;;
console-consumer) class=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
console-producer) class=org.apache.kafka.tools.ConsoleProducer ;;
producer-perf-test) class=org.apache.kafka.tools.ProducerPerformance ;;
consumer-perf-test) class=org.apache.kafka.tools.ConsumerPerformance ;;
storage) class=kafka.tools.StorageTool ;;
-h | --help) usage ;;
*)
	printf 'kafka-tools: unknown tool %s\n' "$tool" >&2
	usage
	;;
esac
[ -f "$LIBS/.complete" ] || {
	printf 'kafka-tools: Apache Kafka %s is not installed in %s; run scripts/dev-services.sh first\n' "$KAFKA_VERSION" "$LIBS" >&2
	exit 1
}
# A short-lived JVM: the client compiler only and the serial collector start it fastest.
exec java -Xshare:auto -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xmx512m \
	-Dlog4j2.configurationFile="$ROOT/deploy/kafka/tools-log4j2.xml" \
	-cp "$LIBS/*" "$class" "$@"
