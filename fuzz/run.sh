#!/usr/bin/env bash
# Runs Meridian's fuzz targets (see fuzz/README.md) for a bounded time, on the stable toolchain.
#
#   fuzz/run.sh TARGET SECONDS    one target, coverage-guided, for SECONDS
#   fuzz/run.sh all SECONDS       every target in turn, SECONDS each
#   fuzz/run.sh --ci [SECONDS]    CI: every target for SECONDS each (default 15, at most 20),
#                                 after replaying the committed seeds; fails on any finding
#   fuzz/run.sh --replay          replay seeds and the local corpus through every target, once
#   fuzz/run.sh --list            the targets
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). libFuzzer's coverage instrumentation uses only
# stable rustc flags; the one nightly-only part of cargo-fuzz is the AddressSanitizer, which the
# `--sanitizer none` below turns off (Meridian's code is safe Rust: overflow and bounds checks
# are on through -Cdebug-assertions, which cargo-fuzz sets).
#
# Inputs that crash land in fuzz/artifacts/TARGET/; reproduce one with
#   cargo fuzz run --sanitizer none TARGET fuzz/artifacts/TARGET/crash-...
# New interesting inputs accumulate in fuzz/corpus/TARGET/ (local, not committed); the
# committed seeds are in fuzz/seeds/TARGET/ (regenerate with fuzz/make_seeds.py).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

targets=(dns_respond dns_ecs health_frame dns_config relay_config relay_request)
fuzz_flags=(--sanitizer none)
# -timeout: one input taking this long is a finding (a hang); -rss_limit_mb: so is this much
# memory. Both well above what any single input should need.
libfuzzer_flags=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 64
}

require_cargo_fuzz() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
        exit 69
    fi
}

is_target() {
    local t
    for t in "${targets[@]}"; do [[ "$t" == "$1" ]] && return 0; done
    return 1
}

build() {
    nice -n 10 cargo fuzz build "${fuzz_flags[@]}" "$@"
}

# run TARGET SECONDS: fuzz one target; prints one summary line.
run() {
    local target="$1" seconds="$2" log
    mkdir -p "corpus/$target" "artifacts/$target"
    log="$(mktemp)"
    local status=0
    nice -n 10 cargo fuzz run "${fuzz_flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
        "${libfuzzer_flags[@]}" -max_total_time="$seconds" >"$log" 2>&1 || status=$?
    local execs
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    if [[ $status -ne 0 ]]; then
        tail -n 60 "$log" >&2
        echo "$target: FAILED after ${execs:-?} executions (exit $status); see fuzz/artifacts/$target/" >&2
        rm -f "$log"
        return 1
    fi
    echo "$target: ${execs:-?} executions in ${seconds}s, corpus $(ls "corpus/$target" | wc -l) inputs, no findings"
    rm -f "$log"
}

# replay TARGET: every seed and corpus input once.
replay() {
    local target="$1" log status=0
    mkdir -p "corpus/$target"
    log="$(mktemp)"
    nice -n 10 cargo fuzz run "${fuzz_flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
        "${libfuzzer_flags[@]}" -runs=0 >"$log" 2>&1 || status=$?
    if [[ $status -ne 0 ]]; then
        tail -n 60 "$log" >&2
        echo "$target: replay FAILED (exit $status)" >&2
        rm -f "$log"
        return 1
    fi
    echo "$target: replayed $(($(ls "seeds/$target" | wc -l) + $(ls "corpus/$target" | wc -l))) inputs, no findings"
    rm -f "$log"
}

[[ $# -ge 1 ]] || usage
case "$1" in
    --list)
        printf '%s\n' "${targets[@]}"
        ;;
    --replay)
        require_cargo_fuzz
        build
        failed=0
        for t in "${targets[@]}"; do replay "$t" || failed=1; done
        exit $failed
        ;;
    --ci)
        require_cargo_fuzz
        seconds="${2:-15}"
        [[ "$seconds" =~ ^[0-9]+$ ]] || usage
        (( seconds > 20 )) && seconds=20
        build
        failed=0
        for t in "${targets[@]}"; do replay "$t" || failed=1; done
        for t in "${targets[@]}"; do run "$t" "$seconds" || failed=1; done
        exit $failed
        ;;
    all)
        [[ $# -eq 2 && "$2" =~ ^[0-9]+$ ]] || usage
        require_cargo_fuzz
        build
        failed=0
        for t in "${targets[@]}"; do run "$t" "$2" || failed=1; done
        exit $failed
        ;;
    *)
        [[ $# -eq 2 && "$2" =~ ^[0-9]+$ ]] || usage
        is_target "$1" || { echo "unknown target $1 (fuzz/run.sh --list)" >&2; exit 64; }
        require_cargo_fuzz
        build "$1"
        run "$1" "$2"
        ;;
esac
