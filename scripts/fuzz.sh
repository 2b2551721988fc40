#!/usr/bin/env bash
# Fuzzes the code that reads hostile bytes (see docs/fuzzing.md): builds every cargo-fuzz
# target in fuzz/ once, then runs each for SECONDS over a copy of its committed corpus
# (fuzz/corpus/<target>), so a run never changes the working tree. Exits 1 if any target
# crashes (panic, sanitizer error, timeout, out of memory), naming the input that did it.
#
# Usage: scripts/fuzz.sh [SECONDS]     (default 30 per target)
#
# stdout carries only this script's progress and results (runs and time per target); cargo's
# output and, on a crash, the tail of libFuzzer's log go to stderr.
#
# Needs: Rust stable and a C++ compiler. cargo-fuzz is installed into ~/.cargo/bin when missing
# (`cargo install cargo-fuzz --locked`); RUSTC_BOOTSTRAP=1 lets stable take the sanitizer
# flags. Targets are built as cargo-fuzz does by default: release, with debug assertions,
# overflow checks and AddressSanitizer.
#
# Environment:
#   DHANMAN_FUZZ_TARGET_DIR   build directory, kept between runs
#                             (default ~/.cache/dhanman/fuzz-target; not the main build's)
set -euo pipefail

SECS=${1:-30}
[[ $SECS =~ ^[1-9][0-9]*$ ]] || {
	echo "usage: $0 [SECONDS]" >&2
	exit 2
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

log() { printf 'fuzz: %s\n' "$*"; }

export PATH="$HOME/.cargo/bin:$PATH"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${DHANMAN_FUZZ_TARGET_DIR:-$HOME/.cache/dhanman/fuzz-target}"
mkdir -p "$CARGO_TARGET_DIR"

if ! cargo fuzz --version >/dev/null 2>&1; then
	log "installing cargo-fuzz"
	cargo install cargo-fuzz --locked >&2
fi

start=$SECONDS
log "building the targets ($(cargo fuzz --version), target dir $CARGO_TARGET_DIR)"
cargo fuzz build >&2
log "built in $((SECONDS - start)) s"

mapfile -t targets < <(cargo fuzz list)
[ "${#targets[@]}" -gt 0 ] || {
	echo "fuzz: cargo fuzz list found no targets in fuzz/" >&2
	exit 2
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=()
for target in "${targets[@]}"; do
	corpus="$work/corpus/$target"
	mkdir -p "$corpus"
	if [ -d "fuzz/corpus/$target" ]; then
		cp -R "fuzz/corpus/$target/." "$corpus/"
	fi
	log "$target: ${SECS} s over $(find "$corpus" -type f | wc -l) corpus inputs"
	out="$work/$target.log"
	start=$SECONDS
	status=0
	cargo fuzz run "$target" "$corpus" -- \
		-max_total_time="$SECS" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
		>"$out" 2>&1 || status=$?
	took=$((SECONDS - start))
	runs=$(sed -n 's/^Done \([0-9]*\) runs in .*/\1/p' "$out" | tail -n 1)
	final=$(sed -n -E 's/^#[0-9]+[[:space:]]+DONE .*(cov: [0-9]+ ft: [0-9]+ corp: [^ ]+).*/\1/p' "$out" | tail -n 1)
	if [ "$status" -eq 0 ] && [ -n "$runs" ]; then
		log "$target: ok, $runs runs in ${took} s (${final:-no stats})"
	else
		artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$out" | tail -n 1)
		tail -n 40 "$out" >&2
		log "$target: FAILED (exit $status) after ${runs:-?} runs in ${took} s; input: ${artifact:-none written}"
		failed+=("$target")
	fi
done

if [ "${#failed[@]}" -gt 0 ]; then
	log "crashed: ${failed[*]} (reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <input>)"
	exit 1
fi
log "no crash in ${#targets[@]} targets (${SECS} s each)"
