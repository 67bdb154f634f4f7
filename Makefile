# Ferry's task runner. `make ci` is what CI runs (through tests/test-all.sh).
SHELL := bash
.SHELLFLAGS := -o pipefail -c
TEST_LOG ?= $(FERRY_CACHE)/test-rust.log
export FERRY_CACHE ?= $(HOME)/.cache/ferry
export CARGO_TARGET_DIR ?= $(FERRY_CACHE)/target
export CARGO_TERM_COLOR ?= never
# cargo-deny, cargo-cyclonedx, helm and kubectl, installed by tests/bootstrap.sh install.
export PATH := $(FERRY_CACHE)/tools/bin:$(FERRY_CACHE)/bin:$(PATH)

.PHONY: help fmt fmt-check lint deny deny-advisories generate generate-check test test-rust test-chart test-e2e test-images image release services-up services-down demo bench ci

help:
	@echo "make fmt | fmt-check | lint | deny | deny-advisories | generate | generate-check | test | test-chart | test-e2e | test-images | image | release | demo | bench | ci"

fmt:
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check

lint:
	cargo clippy --workspace --all-targets --locked -- -D warnings

## The dependency policy (deny.toml) that needs no network: licences, banned
## and duplicate crates, sources.
deny:
	cargo deny --locked check licenses bans sources

## Known vulnerabilities: fetches the RustSec advisory database from GitHub, so
## it runs where the network allows (CI cannot reach GitHub).
deny-advisories:
	cargo deny --locked check advisories

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

## End to end: the operator and runner binaries, installed with the chart on a
## real Kubernetes control plane (tests/k8s, built by tests/bootstrap.sh
## install) that the suite starts and stops, driven by kubectl (tests/e2e). The
## services must be running. The binaries are the ones `cargo test` builds for
## the integration tests (same profile, same features): after test-rust this
## builds nothing. (`cargo build -p ... --bins` would resolve other features
## without the dev-dependencies and compile aws-sdk-s3 and others again.)
test-e2e:
	cargo test -q --workspace --locked --no-run
	source $(FERRY_CACHE)/services/env && cd tests/e2e && "$$FERRY_PYTHON" -m pytest -q -x

## The two images built from the test binaries (images/build.sh), then run
## from their unpacked roots (tests/images). Needs root: mount namespaces.
test-images:
	bash images/build.sh --profile test
	source $(FERRY_CACHE)/services/env && cd tests/images && "$$FERRY_PYTHON" -m pytest -q

## The release images (static binaries, release profile) and their SBOMs, in
## $(FERRY_CACHE)/images/release.
image:
	bash images/build.sh --profile release

## A release in dist/: the images as OCI archives, their SBOMs and digests, and
## the chart packaged with those digests.
release:
	bash images/build.sh --profile release --out dist
	bash charts/package.sh --digests dist/digests --out dist

## Everything, with the services started and stopped around it.
test:
	bash tests/test-all.sh

demo:
	bash examples/demo.sh

bench:
	bash docs/bench/run.sh

ci: fmt-check generate-check lint deny test-rust test-chart test-e2e test-images
