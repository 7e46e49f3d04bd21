#!/usr/bin/env bash
# Memory of smtpgate relaying large messages: a plain relay (no content filters) should not grow
# with message size, since bodies go to disk as they arrive ([spool] spill_size).
#
#   ./scripts/bench-large.sh          # 1 x 100 MB, then 20 x 20 MB (20 sessions at once)
#   BENCH_LARGE_ONE=50000000 BENCH_LARGE_MANY=10 ./scripts/bench-large.sh
#   (also BENCH_LARGE_EACH bytes for the concurrent case, BENCH_PHASE_TIMEOUT seconds, SMTPGATE_BIN)
#
# Each case runs a fresh smtpgate relaying to smtp-sink and sends with Postfix's smtp-source.
# It prints smtpgate's resident memory when ready (VmRSS) and its peak (VmHWM) once the sink
# has counted every message, and the growth between them. This is a benchmark, not a test:
# it reports, it does not judge.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
ROOT=$PWD

ONE=${BENCH_LARGE_ONE:-100000000}
MANY=${BENCH_LARGE_MANY:-20}
EACH=${BENCH_LARGE_EACH:-20000000}
PHASE_TIMEOUT=${BENCH_PHASE_TIMEOUT:-600}
START_TIMEOUT=30

for tool in /usr/sbin/smtp-sink /usr/sbin/smtp-source python3; do
    command -v "$tool" >/dev/null || { echo "bench-large.sh: $tool missing (./scripts/test.sh installs it)" >&2; exit 1; }
done

mkdir -p "$ROOT/target"
WORK=$(mktemp -d "$ROOT/target/bench-large.XXXXXX")
PIDS=()
BENCH_NAME=bench-large.sh
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== building smtpgate (release)" >&2
cargo build --release -p smtpgate >&2
GATE_BIN=${SMTPGATE_BIN:-$ROOT/target/release/smtpgate}

# kib FIELD: a field of the gate's /proc status, in KiB.
kib() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$GATE_PID/status"; }

sink_count() {
    local last
    last=$(tr '\r' '\n' <"$1" | grep -o 'mesg=[0-9]*' | tail -n 1 || true)
    echo "${last#mesg=}" | sed 's/^$/0/'
}
sink_has() { [[ $(sink_count "$1") -ge $2 ]]; }

# run_case NAME SESSIONS MESSAGES SIZE: one fresh gate, one load; prints a result line.
run_case() {
    local name=$1 sessions=$2 messages=$3 size=$4 before peak start end
    rm -rf "$WORK/gate"
    mkdir -p "$WORK/gate"
    start_sink "$WORK/sink-$name.log"
    cat >"$WORK/gate/smtpgate.toml" <<TOML
hostname = "bench.example.test"

[spool]
dir = "spool"

[admin]
address = "127.0.0.1:0"

[[listener]]
name = "inbound"
address = "127.0.0.1:0"
relay_networks = ["127.0.0.0/8"]
max_message_size = "$((size * 2))"

[[pool]]
name = "sink"
servers = ["127.0.0.1:$SINK_PORT"]
tls = "none"

[[route]]
pool = "sink"

[queue]
retry = ["1s"]
TOML
    start_gate "$START_TIMEOUT"
    local port
    port=$(listener_port inbound)
    [[ -n $port ]] || { echo "bench-large.sh: no listener address in smtpgate's stdout" >&2; exit 1; }
    before=$(kib VmRSS)
    start=$(date +%s.%N)
    timeout "$PHASE_TIMEOUT" /usr/sbin/smtp-source -s "$sessions" -m "$messages" -l "$size" -d \
        -f bench-from@example.test -t bench-to@example.test "127.0.0.1:$port" >&2
    wait_for "the sink to count $messages messages" "$PHASE_TIMEOUT" sink_has "$WORK/sink-$name.log" "$messages" >&2
    end=$(date +%s.%N)
    peak=$(kib VmHWM)
    kill "$GATE_PID" "$SINK_PID" 2>/dev/null || true
    wait "$GATE_PID" 2>/dev/null || true
    printf '%-10s %3d x %9d bytes, %2d sessions: %6.1f s; RSS at start %6.1f MiB, peak %6.1f MiB, growth %6.1f MiB\n' \
        "$name" "$messages" "$size" "$sessions" "$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')" \
        "$(awk -v k="$before" 'BEGIN {print k / 1024}')" "$(awk -v k="$peak" 'BEGIN {print k / 1024}')" \
        "$(awk -v a="$before" -v b="$peak" 'BEGIN {print (b - a) / 1024}')"
}

echo "== one large message" >&2
ONE_LINE=$(run_case one 1 1 "$ONE")
echo "== $MANY large messages at once" >&2
MANY_LINE=$(run_case many "$MANY" "$MANY" "$EACH")
printf '\n%s\n%s\n' "$ONE_LINE" "$MANY_LINE"
