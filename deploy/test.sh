#!/usr/bin/env bash
# Runs the whole test suite from a clean checkout: formatting, lints, then every test
# (unit, property, in-process gRPC and end-to-end tests with real MQTT clients against
# `fleetcmd serve` on the embedded adapters).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
