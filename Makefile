# Ferry's task runner. `make ci` is what CI runs (through tests/test-all.sh).
SHELL := bash
.SHELLFLAGS := -o pipefail -c
TEST_LOG ?= $(FERRY_CACHE)/test-rust.log
export FERRY_CACHE ?= $(HOME)/.cache/ferry
export CARGO_TARGET_DIR ?= $(FERRY_CACHE)/target
export CARGO_TERM_COLOR ?= never

.PHONY: help fmt fmt-check lint generate generate-check test test-rust test-chart test-e2e services-up services-down demo bench ci

help:
	@echo "make fmt | fmt-check | lint | generate | generate-check | test | test-chart | test-e2e | demo | bench | ci"

fmt:
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check

lint:
	cargo clippy --workspace --all-targets --locked -- -D warnings

## Regenerate the CRDs under charts/ferry/crds from the Rust types.
generate:
	cargo run -q --locked -p ferry-crds --bin crdgen

## Fail when the committed CRDs are stale.
generate-check:
	cargo run -q --locked -p ferry-crds --bin crdgen -- --check

## All Rust tests; the services must be running (tests/bootstrap.sh start).
test-rust:
	source $(FERRY_CACHE)/services/env && cargo test --workspace --lib --bins --tests --locked --no-fail-fast 2>&1 | tee $(TEST_LOG)

## The Helm chart, alert rules and Argo CD health checks (helm, promtool, lua5.4).
test-chart:
	bash tests/chart/run.sh

## End to end: the test Kubernetes API (tests/kapi) checked by itself, then the
## operator and runner binaries driven by kubectl over it (tests/e2e). The
## services must be running. The binaries are built with the test profile, as
## `cargo test` builds them, so neither build repeats the other.
test-e2e:
	cargo build -q --locked --profile test -p ferry-operator -p ferry-job-runner --bins
	source $(FERRY_CACHE)/services/env && cd tests/kapi && "$$FERRY_PYTHON" -m pytest -q
	source $(FERRY_CACHE)/services/env && cd tests/e2e && "$$FERRY_PYTHON" -m pytest -q -x

## Everything, with the services started and stopped around it.
test:
	bash tests/test-all.sh

demo:
	bash examples/demo.sh

bench:
	bash docs/bench/run.sh

ci: fmt-check generate-check lint test-rust test-chart test-e2e
