# Helpers shared by the benchmark scripts (sourced, not run). The script sets BENCH_NAME (for
# messages), WORK (its work dir) and PIDS (an array of processes its cleanup stops).

# free_port: a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND until it succeeds or SECONDS pass.
wait_for() {
    local what=$1 limit=$2 deadline
    shift 2
    deadline=$(($(date +%s) + limit))
    until "$@"; do
        if (($(date +%s) >= deadline)); then
            echo "$BENCH_NAME: timed out after ${limit}s waiting for $what" >&2
            return 1
        fi
        sleep 0.05
    done
}

port_open() {
    kill -0 "$SINK_PID" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
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
    echo "$BENCH_NAME: smtp-sink did not start" >&2
    exit 1
}

# start_gate SECONDS: runs "$GATE_BIN" serve with "${GATE_DIR:-$WORK/gate}/smtpgate.toml" in that directory and
# waits up to SECONDS for it to print `smtpgate ready`; sets GATE_PID.
start_gate() {
    (cd "${GATE_DIR:-$WORK/gate}" && exec "$GATE_BIN" serve --config "${GATE_DIR:-$WORK/gate}/smtpgate.toml") \
        >"${GATE_DIR:-$WORK/gate}/stdout.log" 2>"${GATE_DIR:-$WORK/gate}/stderr.log" &
    GATE_PID=$!
    PIDS+=("$GATE_PID")
    wait_for "smtpgate ready" "$1" gate_ready
}

gate_ready() {
    if ! kill -0 "$GATE_PID" 2>/dev/null; then
        echo "$BENCH_NAME: smtpgate exited before printing 'smtpgate ready':" >&2
        cat "${GATE_DIR:-$WORK/gate}/stdout.log" "${GATE_DIR:-$WORK/gate}/stderr.log" >&2
        exit 1
    fi
    grep -q '^smtpgate ready' "${GATE_DIR:-$WORK/gate}/stdout.log"
}

# listener_port NAME: the port smtpgate says its listener NAME listens on.
listener_port() {
    sed -n "s/^smtpgate listening: listener=$1 address=[^ ]*:\\([0-9]*\\) .*/\\1/p" "${GATE_DIR:-$WORK/gate}/stdout.log" | head -n 1
}
