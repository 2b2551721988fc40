#!/usr/bin/env bash
# Installs (once) and prints the path of the headless browser the dashboard test drives:
# Debian's `chromium` package. `$DHANMAN_CHROMIUM`, or a `chromium` already on PATH, is used
# as is. Idempotent; tests call it concurrently, so apt runs under a lock. Prints
# `DHANMAN_CHROMIUM=<path>` on stdout; apt's output goes to stderr.
set -euo pipefail

if [ -n "${DHANMAN_CHROMIUM:-}" ]; then
	echo "DHANMAN_CHROMIUM=$DHANMAN_CHROMIUM"
	exit 0
fi

found() { command -v chromium || command -v chromium-browser || true; }

lock="${XDG_CACHE_HOME:-$HOME/.cache}/dhanman/chromium.lock"
mkdir -p "$(dirname "$lock")"
exec 9>"$lock"
flock 9
chromium=$(found)
if [ -z "$chromium" ]; then
	echo "installing Debian's chromium package" >&2
	sudo=()
	[ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
	export DEBIAN_FRONTEND=noninteractive
	"${sudo[@]}" apt-get update -qq >&2
	"${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
	chromium=$(found)
	[ -n "$chromium" ] || { echo "chromium is still not on PATH after apt-get install" >&2; exit 1; }
fi
echo "DHANMAN_CHROMIUM=$chromium"
