#!/usr/bin/env bash
# Creates (once) and prints the path of the Python virtualenv the tests use as references:
#   avro            - Apache Avro's own ReaderWriterCompatibilityChecker (the compatibility oracle)
#   confluent-kafka - Confluent's client, serializers and registry client (the interop peer)
#   pika            - a RabbitMQ client, publishing as the .NET services do (the bridge's peer)
# Versions are pinned in scripts/python-requirements.txt. Idempotent: a venv whose
# requirements stamp matches is reused. Prints `DHANMAN_PYTHON=<venv>/bin/python`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv="${DHANMAN_VENV:-$HOME/.cache/dhanman/venv}"
requirements=scripts/python-requirements.txt
stamp="$venv/.requirements"

mkdir -p "$(dirname "$venv")"
# Tests call this concurrently: one creates the venv, the others wait for it.
exec 9>"$venv.lock"
flock 9
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$stamp"; then
	command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }
	if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
		echo "installing python3-venv" >&2
		apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >&2
	fi
	rm -rf "$venv"
	python3 -m venv "$venv" >&2
	"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
	cp "$requirements" "$stamp"
fi
echo "DHANMAN_PYTHON=$venv/bin/python"
