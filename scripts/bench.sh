#!/usr/bin/env bash
# Throughput of smtpgate against the same load sent straight to the destination.
#
#   ./scripts/bench.sh              # 20000 messages of 5000 bytes, 20 parallel sessions
#   BENCH_MESSAGES=2000 ./scripts/bench.sh
#   (also BENCH_SESSIONS, BENCH_SIZE, BENCH_PHASE_TIMEOUT seconds, SMTPGATE_BIN)
#
# Phase 1 sends the load with Postfix's smtp-source straight to smtp-sink; phase 2 sends the
# same load to smtpgate, whose pool points at a fresh smtp-sink. Each phase is timed from the
# first connection until the sink has counted every message (smtp-sink -c, no dump files, so
# the sink costs the same in both runs). Prints both rates, their ratio and smtpgate's peak
# RSS. Everything listens on 127.0.0.1; every phase has a time limit; all processes are
# stopped on exit.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
ROOT=$PWD

MESSAGES=${BENCH_MESSAGES:-20000}
SESSIONS=${BENCH_SESSIONS:-20}
SIZE=${BENCH_SIZE:-5000}
PHASE_TIMEOUT=${BENCH_PHASE_TIMEOUT:-600}
START_TIMEOUT=30

for tool in /usr/sbin/smtp-sink /usr/sbin/smtp-source python3; do
    command -v "$tool" >/dev/null || { echo "bench.sh: $tool missing (./scripts/test.sh installs it)" >&2; exit 1; }
done

WORK=$(mktemp -d "$ROOT/target/bench.XXXXXX")   # same disk as the work tree
PIDS=()
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

now() { date +%s.%N; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_sink LOG: starts smtp-sink -c on a free port; sets SINK_PID and SINK_PORT.
start_sink() {
    local log=$1 user_args=() attempt
    [[ $(id -u) -eq 0 ]] && user_args=(-u root)
    for attempt in 1 2 3 4 5; do
        SINK_PORT=$(free_port)
        /usr/sbin/smtp-sink -c "${user_args[@]}" "127.0.0.1:$SINK_PORT" 1024 >"$log" 2>&1 &
        SINK_PID=$!
        PIDS+=("$SINK_PID")
        if wait_for "smtp-sink on port $SINK_PORT" 10 port_open "$SINK_PORT"; then
            return 0
        fi
        kill "$SINK_PID" 2>/dev/null || true
    done
    echo "bench.sh: smtp-sink did not start" >&2
    exit 1
}

port_open() {
    kill -0 "$SINK_PID" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# sink_count LOG: the sink's last `mesg=` counter (messages that reached end of data).
sink_count() {
    local last
    last=$(tr '\r' '\n' <"$1" | grep -o 'mesg=[0-9]*' | tail -n 1 || true)
    echo "${last#mesg=}" | sed 's/^$/0/'
}

sink_has_all() { [[ $(sink_count "$1") -ge $MESSAGES ]]; }

# wait_for WHAT SECONDS COMMAND...: polls COMMAND until it succeeds or SECONDS pass.
wait_for() {
    local what=$1 limit=$2 deadline
    shift 2
    deadline=$(($(date +%s) + limit))
    until "$@"; do
        if (($(date +%s) >= deadline)); then
            echo "bench.sh: timed out after ${limit}s waiting for $what" >&2
            return 1
        fi
        sleep 0.05
    done
}

# run_load PORT SINK_LOG: sends the load to PORT and waits for the sink to count it all;
# prints the elapsed seconds.
run_load() {
    local port=$1 log=$2 start end
    start=$(now)
    timeout "$PHASE_TIMEOUT" /usr/sbin/smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -d \
        -f bench-from@example.test -t bench-to@example.test "127.0.0.1:$port" >&2
    wait_for "the sink to count $MESSAGES messages" "$PHASE_TIMEOUT" sink_has_all "$log" >&2
    end=$(now)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}

rate() { awk -v n="$MESSAGES" -v s="$1" 'BEGIN { printf "%.1f", n / s }'; }

echo "== building smtpgate (release)" >&2
cargo build --release -p smtpgate >&2
GATE_BIN=${SMTPGATE_BIN:-$ROOT/target/release/smtpgate}   # override to compare another build

echo "== phase 1: smtp-source -> smtp-sink ($MESSAGES messages, $SIZE bytes, $SESSIONS sessions)" >&2
start_sink "$WORK/sink-direct.log"
DIRECT_SECONDS=$(run_load "$SINK_PORT" "$WORK/sink-direct.log")
kill "$SINK_PID"
echo "   direct: $(rate "$DIRECT_SECONDS") msg/s ($DIRECT_SECONDS s)" >&2

echo "== phase 2: smtp-source -> smtpgate -> smtp-sink" >&2
start_sink "$WORK/sink-gate.log"
mkdir -p "$WORK/gate"
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
max_connections = 1000
max_connections_per_ip = 1000

[[pool]]
name = "sink"
servers = ["127.0.0.1:$SINK_PORT"]
tls = "none"

[[route]]
pool = "sink"

[queue]
retry = ["1s"]
TOML
(cd "$WORK/gate" && exec "$GATE_BIN" serve --config "$WORK/gate/smtpgate.toml") \
    >"$WORK/gate/stdout.log" 2>"$WORK/gate/stderr.log" &
GATE_PID=$!
PIDS+=("$GATE_PID")
gate_ready() {
    if ! kill -0 "$GATE_PID" 2>/dev/null; then
        echo "bench.sh: smtpgate exited before printing 'smtpgate ready':" >&2
        cat "$WORK/gate/stdout.log" "$WORK/gate/stderr.log" >&2
        exit 1
    fi
    grep -q '^smtpgate ready' "$WORK/gate/stdout.log"
}
wait_for "smtpgate ready" "$START_TIMEOUT" gate_ready
GATE_PORT=$(sed -n 's/^smtpgate listening: .*address=[^ ]*:\([0-9]*\) .*/\1/p' "$WORK/gate/stdout.log" | head -n 1)
[[ -n $GATE_PORT ]] || { echo "bench.sh: no listener address in smtpgate's stdout" >&2; exit 1; }
GATE_SECONDS=$(run_load "$GATE_PORT" "$WORK/sink-gate.log")
GATE_PEAK_RSS=$(awk '/^VmHWM:/ {print $2, $3}' "/proc/$GATE_PID/status")

DIRECT_RATE=$(rate "$DIRECT_SECONDS")
GATE_RATE=$(rate "$GATE_SECONDS")
printf '\nmessages: %d x %d bytes, %d sessions\n' "$MESSAGES" "$SIZE" "$SESSIONS"
printf 'direct:   %8.1f msg/s (%.2f s)\n' "$DIRECT_RATE" "$DIRECT_SECONDS"
printf 'smtpgate: %8.1f msg/s (%.2f s)\n' "$GATE_RATE" "$GATE_SECONDS"
printf 'ratio gate/direct: %s\n' "$(awk -v g="$GATE_RATE" -v d="$DIRECT_RATE" 'BEGIN { printf "%.3f", g / d }')"
printf 'smtpgate peak RSS (VmHWM): %s\n' "$GATE_PEAK_RSS"
