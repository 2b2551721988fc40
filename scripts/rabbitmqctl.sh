#!/usr/bin/env bash
# rabbitmqctl for the RabbitMQ node scripts/dev-services.sh started, e.g.
#   scripts/rabbitmqctl.sh list_queues name messages
#   scripts/rabbitmqctl.sh stop_app && scripts/rabbitmqctl.sh start_app   (a broker restart: every
#                                        connection dropped, durable queues and persistent messages kept)
# DHANMAN_RABBITMQ_PORT and DHANMAN_DATA_DIR name the node as for scripts/dev-services.sh.
set -euo pipefail
# shellcheck source=scripts/rabbitmq-env.sh
. "$(dirname "${BASH_SOURCE[0]}")/rabbitmq-env.sh"
# No inherited descriptor but 0-2: if epmd is not running, rabbitmqctl starts it, and a daemon
# must not hold our caller's pipes.
# shellcheck disable=SC2016 # expanded by the inner bash
exec bash -c 'for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; exec "$@"' \
	_ /usr/lib/rabbitmq/bin/rabbitmqctl -n "$RABBITMQ_NODENAME" "$@"
