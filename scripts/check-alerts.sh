#!/usr/bin/env bash
# Checks the Prometheus alert rules of deploy/prometheus/: `promtool check rules` (syntax,
# PromQL, templates) on alerts.yml, then `promtool test rules` on alerts_test.yml (each alert
# fires on the series that should raise it and stays quiet on the others).
#
# promtool comes from Debian's `prometheus` package, installed when missing (as root, or
# through sudo), serialised by a lock so concurrent runs do not race on dpkg. The package's
# service is kept from starting (a policy-rc.d answering "denied" while apt runs, and the
# unit disabled and stopped after): nothing listens on :9090 because of this script.
#
# Usage: scripts/check-alerts.sh
# Environment:
#   PROMTOOL           promtool to use (default: the one on PATH, else installed)
#   DHANMAN_TOOLS_DIR  where the apt lock lives (default ~/.local/share/dhanman)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${DHANMAN_TOOLS_DIR:-$HOME/.local/share/dhanman}

log() { printf 'check-alerts: %s\n' "$*" >&2; }
die() {
	printf 'check-alerts: error: %s\n' "$*" >&2
	exit 2
}

run_as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo -n "$@"
	else
		die "installing promtool needs root (or sudo): $*"
	fi
}

# Debian's prometheus package, without its daemon running afterwards.
install_promtool() {
	mkdir -p "$TOOLS"
	(
		flock 8
		command -v promtool >/dev/null 2>&1 && exit 0
		log "installing Debian's prometheus package (for promtool)"
		export DEBIAN_FRONTEND=noninteractive
		local policy=/usr/sbin/policy-rc.d had_policy=0
		[ -e "$policy" ] && had_policy=1
		if [ "$had_policy" -eq 0 ]; then
			# 101: "action not allowed": invoke-rc.d starts no service while this exists.
			run_as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
		fi
		status=0
		{
			run_as_root apt-get update -qq &&
				run_as_root apt-get install -y -qq --no-install-recommends prometheus
		} || status=$?
		if [ "$had_policy" -eq 0 ]; then
			run_as_root rm -f "$policy"
		fi
		[ "$status" -eq 0 ] || die "apt-get install prometheus failed ($status)"
		if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
			run_as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
		fi
	) 8>"$TOOLS/apt.lock"
}

PROMTOOL=${PROMTOOL:-}
if [ -z "$PROMTOOL" ]; then
	command -v promtool >/dev/null 2>&1 || install_promtool
	PROMTOOL=$(command -v promtool) || die "promtool not found after installing prometheus"
fi
log "$("$PROMTOOL" --version 2>&1 | head -n1)"

cd "$REPO/deploy/prometheus"
"$PROMTOOL" check rules alerts.yml
"$PROMTOOL" test rules alerts_test.yml
log "alert rules valid and their tests pass"
