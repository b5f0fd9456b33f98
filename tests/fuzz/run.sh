#!/usr/bin/env bash
# Fuzzes every target in tests/fuzz for a bounded time; CI calls it.
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET]    (default 30)
#
# Works on the stable toolchain: the targets are built with cargo-fuzz's
# coverage instrumentation but no sanitizer (`--sanitizer none`; AddressSanitizer
# needs nightly rustc flags, and the library forbids unsafe code anyway), so a
# finding is a panic, an overflow (debug assertions are on), a timeout or an
# out-of-memory. cargo-fuzz is installed at a pinned version when missing.
#
# Each target fuzzes a scratch corpus (a temp dir, deleted at the end) with the
# checked-in seeds of corpus/<target>/ as a second, read-only input, so the
# seeds never change by themselves. The logs and crash inputs of a failed run
# are kept in tests/fuzz/artifacts/run-<time>/ (git-ignored); a crash input is
# also printed as base64, for runs whose machine is gone. Replay one with
#   tests/fuzz/target/<host>/release/<target> <crash file>
#
# Exits non-zero if any target crashed, timed out or ran out of memory.
# Environment: FUZZ_TARGET_DIR (build dir, default tests/fuzz/target),
# FUZZ_TARGETS (space-separated subset, default all), FUZZ_KEEP_LOGS=1 (keep
# the logs of a run that found nothing), FUZZ_PROFILE=dev (build without
# optimizations: about half the build time of the default, release, for
# 8 to 18 times fewer executions a second; CI's smoke run uses it).
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
# The largest body the server reads (MAX_BODY in src/http/token.rs); config
# files are not capped, but nothing is gained by fuzzing larger ones.
MAX_LEN=65536
# Seconds one input may take before it counts as a hang.
INPUT_TIMEOUT=10
RSS_LIMIT_MB=2048

seconds=${1:-30}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET]  (a positive whole number; got '$seconds')" >&2
    exit 2
fi

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
cd "$fuzz_dir/../.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export RUST_BACKTRACE=1
started=$SECONDS
phase() { printf '\n== fuzz: %s (%ss)\n' "$*" "$((SECONDS - started))"; }

phase "cargo-fuzz"
if ! installed=$(cargo fuzz --version 2>/dev/null); then
    echo "cargo-fuzz is missing; installing $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
    installed=$(cargo fuzz --version)
fi
echo "$installed; $(rustc --version)"

host=$(rustc -vV | sed -n 's/^host: //p')
target_dir=${FUZZ_TARGET_DIR:-$fuzz_dir/target}
build_args=(--fuzz-dir "$fuzz_dir" --sanitizer none --target "$host" --target-dir "$target_dir")
case ${FUZZ_PROFILE:-release} in
release) bin_dir=$target_dir/$host/release ;;
dev)
    bin_dir=$target_dir/$host/debug
    build_args+=(--dev)
    ;;
*)
    echo "FUZZ_PROFILE must be release or dev; got '$FUZZ_PROFILE'" >&2
    exit 2
    ;;
esac

phase "build all targets (${FUZZ_PROFILE:-release})"
cargo fuzz build "${build_args[@]}"

if [[ -n ${FUZZ_TARGETS:-} ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir "$fuzz_dir")
fi
if ((${#targets[@]} == 0)); then
    echo "no fuzz targets found" >&2
    exit 1
fi

run_dir=$fuzz_dir/artifacts/run-$(date -u +%Y%m%dT%H%M%SZ)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/workload-issuer-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$run_dir"

final_stat() { # final_stat NAME LOG: a figure of libFuzzer's -print_final_stats
    sed -n "s/^stat::$1: *//p" "$2" | tail -n 1
}

failed=()
summary=()
for t in "${targets[@]}"; do
    phase "$t for ${seconds}s"
    seeds=$fuzz_dir/corpus/$t
    mkdir -p "$scratch/$t" "$run_dir/$t"
    inputs=("$scratch/$t")
    if [[ -d $seeds ]]; then
        inputs+=("$seeds")
    else
        echo "warning: no seeds in $seeds"
    fi
    log=$run_dir/$t.log
    rc=0
    "$bin_dir/$t" \
        -max_total_time="$seconds" \
        -max_len="$MAX_LEN" \
        -timeout="$INPUT_TIMEOUT" \
        -rss_limit_mb="$RSS_LIMIT_MB" \
        -print_final_stats=1 \
        -artifact_prefix="$run_dir/$t/" \
        "${inputs[@]}" >"$log" 2>&1 || rc=$?
    execs=$(final_stat number_of_executed_units "$log")
    rate=$(final_stat average_exec_per_sec "$log")
    added=$(final_stat new_units_added "$log")
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2 || true)
    seeds_n=$(find "$seeds" -type f 2>/dev/null | wc -l)
    if ((rc == 0)); then
        result=ok
        rmdir "$run_dir/$t" 2>/dev/null || true
    else
        result="FAILED (exit $rc)"
        failed+=("$t")
        echo "$t failed; its log is $log"
        # The panic message and backtrace, or libFuzzer's own report.
        line=$(grep -n -m1 -E 'panicked at|ERROR: libFuzzer|ALARM: working on the last Unit' "$log" |
            cut -d: -f1 || true)
        if [[ -n $line ]]; then
            sed -n "$((line > 1 ? line - 1 : 1)),$((line + 60))p" "$log"
        else
            tail -n 60 "$log"
        fi
        for f in "$run_dir/$t"/*; do
            [[ -f $f ]] || continue
            echo "input kept in $f ($(wc -c <"$f") bytes); base64:"
            base64 -w 0 "$f"
            echo
            echo "replay: $bin_dir/$t $f"
        done
    fi
    summary+=("$(printf '%-24s %-18s %12s %9s %6s %9s %6s' "$t" "$result" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${added:-?}" "$seeds_n")")
done

phase "summary (${seconds}s per target)"
printf '%-24s %-18s %12s %9s %6s %9s %6s\n' target result executions exec/s cov new_units seeds
printf '%s\n' "${summary[@]}"
echo "logs: $run_dir$( ((${#failed[@]})) || [[ -n ${FUZZ_KEEP_LOGS:-} ]] || echo ' (deleted: nothing failed; FUZZ_KEEP_LOGS=1 keeps them)')"
if ((${#failed[@]})); then
    echo "fuzzing found problems in: ${failed[*]} (inputs under $run_dir/<target>/)" >&2
    exit 1
fi
if [[ -z ${FUZZ_KEEP_LOGS:-} ]]; then
    rm -rf "$run_dir"
fi
echo "fuzz: ${#targets[@]} passed, 0 failed"
