# shellcheck shell=bash
# The RabbitMQ node scripts/dev-services.sh runs: its name, port and directories, exported for
# rabbitmq-server and rabbitmqctl. Sourced by scripts/dev-services.sh, scripts/rabbitmqctl.sh and
# scripts/stop-dev-services.sh.
#
#   DHANMAN_RABBITMQ_PORT   AMQP port (default 5672); Erlang distribution on the port + 20000
#   DHANMAN_DATA_DIR        the node's data and logs go to $DHANMAN_DATA_DIR/rabbitmq
_dhanman_data=${DHANMAN_DATA_DIR:-$HOME/.local/state/dhanman}/rabbitmq
export RABBITMQ_NODE_PORT=${DHANMAN_RABBITMQ_PORT:-5672}
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_DIST_PORT=$((RABBITMQ_NODE_PORT + 20000))
export RABBITMQ_NODENAME=dhanman-$RABBITMQ_NODE_PORT@localhost
export RABBITMQ_MNESIA_BASE=$_dhanman_data/mnesia
export RABBITMQ_LOG_BASE=$_dhanman_data/log
export RABBITMQ_PID_FILE=$_dhanman_data/rabbitmq.pid
export RABBITMQ_ENABLED_PLUGINS_FILE=$_dhanman_data/enabled_plugins
# A config file of the node's own that does not exist: Debian's /etc/rabbitmq is not read.
export RABBITMQ_CONFIG_FILE=$_dhanman_data/rabbitmq
export RABBITMQ_ADVANCED_CONFIG_FILE=$_dhanman_data/advanced.config
# epmd (the Erlang port mapper the node starts) listens on loopback only.
export ERL_EPMD_ADDRESS=127.0.0.1
unset _dhanman_data
