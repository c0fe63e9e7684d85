#!/usr/bin/env bash
# Fuzz smoke run for CI: builds the cargo-fuzz targets in fuzz/ and runs each one for a short
# while (FUZZ_SECONDS, default 20), one after another. Exits non-zero if any target crashes,
# fails an invariant, leaks, times out or does not build; libFuzzer leaves the input that did
# it in fuzz/artifacts/<target>/ (see fuzz/README.md for how to reproduce and minimise it).
#
# Needs only a stable Rust toolchain: RUSTC_BOOTSTRAP=1 lets the stable compiler take the
# -Zsanitizer=address flag cargo-fuzz passes. cargo-fuzz itself is installed into
# ~/.cargo/bin when missing (and stays there, so CI caches it with the cargo home).
#
#   deploy/fuzz-smoke.sh                       # every target, 20 s each
#   FUZZ_SECONDS=60 deploy/fuzz-smoke.sh codec_decode topic_parser
#   FUZZ_SANITIZER=none deploy/fuzz-smoke.sh   # without AddressSanitizer (faster)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SECONDS:-20}
sanitizer=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
if [[ ${#targets[@]} -eq 0 ]]; then
    echo "no fuzz targets found" >&2
    exit 1
fi

# Release with debug assertions (-a): integer overflows and debug_assert!s count as crashes.
echo "== cargo fuzz build (sanitizer: $sanitizer)"
cargo fuzz build -a --sanitizer "$sanitizer"

failed=()
for target in "${targets[@]}"; do
    echo "== fuzzing $target for ${seconds}s"
    # The corpus (fuzz/corpus/<target>, not in git) carries over between runs on one machine.
    if ! cargo fuzz run -a --sanitizer "$sanitizer" "$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1; then
        failed+=("$target")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzzing found failures in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "== fuzz smoke run passed: ${targets[*]}"
