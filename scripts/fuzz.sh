#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for its share of SECONDS and prints the executions of each and
# the total:
#
#   ./scripts/fuzz.sh SECONDS [TARGET...]
#
# Each target starts from its seeds (fuzz/seeds/<target>/) and the corpus earlier runs left
# (fuzz/corpus/<target>/, not committed); the SMTP dictionary (fuzz/dict/smtp.dict) goes to the
# targets that read SMTP. The time is split evenly between the targets; parse_command is the
# fastest by far, session (a whole SMTP session per input) the slowest. A crash (panic, failed
# check, sanitizer report, out of memory or an input that takes over 10 s) stops that target,
# leaves the input under fuzz/artifacts/<target>/, and makes the script exit 1 once every target
# has run. Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ || $1 -lt 1 ]]; then
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
fi
seconds=$1
shift
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
share=$((seconds / ${#targets[@]}))
((share >= 1)) || share=1

uses_dict() {
    [[ $1 == parse_command || $1 == session ]]
}

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
if ! cargo +nightly fuzz build >"$logs/build" 2>&1; then
    cat "$logs/build" >&2
    exit 2
fi
total=0
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    args=(-max_total_time="$share" -timeout=10 -print_final_stats=1)
    if uses_dict "$t"; then
        args+=(-dict=dict/smtp.dict)
    fi
    if [[ $t == session ]]; then
        # The gate (spool, queue, runtime) outlives each input by design: not a leak.
        args+=(-detect_leaks=0)
    fi
    echo "== $t: ${share}s" >&2
    status=ok
    if ! cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- "${args[@]}" >"$logs/$t" 2>&1; then
        status=CRASH
        failed+=("$t")
        grep -E "^(==[0-9]+==|thread '|SUMMARY|artifact_prefix|Test unit written)" "$logs/$t" >&2 || tail -20 "$logs/$t" >&2
    fi
    # libFuzzer's final count; after a crash, its last progress line.
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t" | tail -1)
    [[ -n $execs ]] || execs=$(sed -n 's/^#\([0-9]\+\).*/\1/p' "$logs/$t" | tail -1)
    execs=${execs:-0}
    total=$((total + execs))
    printf '%-16s %12d execs  %8d/s  %s\n' "$t" "$execs" $((execs / share)) "$status"
done
printf '%-16s %12d execs in %ds\n' total "$total" "$((share * ${#targets[@]}))"
if ((${#failed[@]})); then
    echo "crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
