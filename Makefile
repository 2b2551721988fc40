# dhanman-stream developer commands. Services (Postgres, Apache Kafka) come from
# scripts/dev-services.sh, which prints `export KEY=value` lines; make runs each recipe line in
# its own shell, so every line that needs them evaluates that output on the same line.
# (Captured first, then eval'd: a bare `eval "$(scripts/dev-services.sh)"` would hide the
# script's failure, since eval of an empty string succeeds.)

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

DEV_ENV := dev_env="$$(scripts/dev-services.sh)" && eval "$$dev_env"
BENCH_ARGS ?=

.PHONY: help demo test lint bench services stop reset-broker sqlx

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-9s %s\n", $$1, $$2}'

demo: ## start the services and run the in-process demo (society, residents, invoices, payments)
	$(DEV_ENV) && cargo run --bin dhanman -- demo

test: ## start the services and run every test of the workspace
	$(DEV_ENV) && cargo test --workspace

lint: ## rustfmt check and clippy with warnings as errors
	cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings

# The checked queries' data is written by the query macros themselves when they build
# online (SQLX_OFFLINE=false) with SQLX_OFFLINE_DIR set; the crates that hold checked
# queries are touched so that their macros run again. The migrations are applied with psql,
# each in one transaction as `dhanman migrate` does, so a query without data yet does not
# stop the build that would migrate.
SQLX_DB := dhanman_sqlx
SQLX_CRATES := processors/src/lib.rs api/src/lib.rs

sqlx: ## refresh .sqlx/ (offline data of the checked queries) from a freshly migrated database
	$(DEV_ENV) && db="$${DATABASE_URL%/*}/$(SQLX_DB)" \
	  && psql -q "$$DATABASE_URL" -c 'drop database if exists $(SQLX_DB)' -c 'create database $(SQLX_DB)' \
	  && for f in migrations/*.sql; do psql -q -1 -v ON_ERROR_STOP=1 "$$db" -f "$$f" >/dev/null; done \
	  && rm -rf .sqlx && mkdir .sqlx && touch $(SQLX_CRATES) \
	  && SQLX_OFFLINE=false DATABASE_URL="$$db" SQLX_OFFLINE_DIR="$$PWD/.sqlx" \
	     cargo check --workspace --all-targets

bench: ## start the services and run the benchmark (extra arguments: BENCH_ARGS="...")
	$(DEV_ENV) && cargo run --release --bin dhanman -- bench $(BENCH_ARGS)

services: ## start Postgres and the broker; prints the exports: eval "$(make -s services)"
	@scripts/dev-services.sh

stop: ## stop the broker started by `make services` (Postgres is left running)
	@scripts/stop-dev-services.sh

reset-broker: ## start over with an empty broker: stop it, delete its storage, format and start a new one
	@scripts/stop-dev-services.sh --wipe && scripts/dev-services.sh >/dev/null
