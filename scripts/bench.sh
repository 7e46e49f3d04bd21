#!/usr/bin/env bash
# Throughput of smtpgate against the same load sent straight to the destination.
#
#   ./scripts/bench.sh              # 20000 messages of 5000 bytes, 20 parallel sessions
#   BENCH_MESSAGES=2000 ./scripts/bench.sh
#   BENCH_POSTFIX=0 ./scripts/bench.sh  # skip phase 3 (the Postfix comparison)
#   BENCH_LATENCY_MESSAGES=500 ./scripts/bench.sh  # phase 4 sample size (default 2000 each way)
#   BENCH_EVENTS=1 ./scripts/bench.sh  # only with events recorded (0: only without; default both)
#   (also BENCH_SESSIONS, BENCH_SIZE, BENCH_PHASE_TIMEOUT seconds, SMTPGATE_BIN)
#
# Phase 1 sends the load with Postfix's smtp-source straight to smtp-sink; phase 2 sends the
# same load to smtpgate, whose pool points at a fresh smtp-sink: once without recording events
# and once with them (message history, JSON-lines file off), each with a fresh spool, so the
# cost of recording events is measured in the same run ("events on/off"). Phase 3 (on by default when
# Postfix is installed) sends it to a private Postfix instance relaying to a fresh smtp-sink
# (relayhost), so smtpgate and Postfix are measured in the same run. Each phase is timed from
# the first connection until the sink has counted every message (smtp-sink -c, no dump files,
# so the sink costs the same in every run). Prints the rates, their ratios and smtpgate's peak
# RSS. Everything listens on 127.0.0.1; every phase has a time limit; all processes are
# stopped on exit.
#
# The Postfix instance lives entirely under the bench's work dir (its own config, queue and
# data directories, started with `postfix -c DIR`); /etc/postfix is only read (postfix-files,
# the stock master.cf it is derived from) and the system's queue is never used. If it fails
# to start, phase 3 is skipped with the reason and phases 1-2 are still reported.
#
# Phase 4 measures the latency an inline proxy listener (mode = "proxy") adds: one Python smtplib
# session straight to the sink and one through smtpgate's proxy listener to the same sink send
# messages in turn, one at a time, and each message is timed from MAIL to the reply to the end of
# data. Prints the median and 99th percentile of both and the difference (the added latency).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
ROOT=$PWD

MESSAGES=${BENCH_MESSAGES:-20000}
SESSIONS=${BENCH_SESSIONS:-20}
SIZE=${BENCH_SIZE:-5000}
PHASE_TIMEOUT=${BENCH_PHASE_TIMEOUT:-600}
START_TIMEOUT=30
POSTFIX_PHASE=${BENCH_POSTFIX:-1}
EVENTS=${BENCH_EVENTS:-both}
[[ $EVENTS =~ ^(0|1|both)$ ]] || { echo "bench.sh: BENCH_EVENTS is 0, 1 or both" >&2; exit 1; }

for tool in /usr/sbin/smtp-sink /usr/sbin/smtp-source python3; do
    command -v "$tool" >/dev/null || { echo "bench.sh: $tool missing (./scripts/test.sh installs it)" >&2; exit 1; }
done

WORK=$(mktemp -d "$ROOT/target/bench.XXXXXX")   # same disk as the work tree
PIDS=()
BENCH_NAME=bench.sh
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
PF_CONF=""   # set once the private Postfix instance has been configured
cleanup() {
    local pid
    [[ -n $PF_CONF ]] && stop_postfix
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

# sink_count LOG: the sink's last `mesg=` counter (messages that reached end of data).
sink_count() {
    local last
    last=$(tr '\r' '\n' <"$1" | grep -o 'mesg=[0-9]*' | tail -n 1 || true)
    echo "${last#mesg=}" | sed 's/^$/0/'
}

sink_has_all() { [[ $(sink_count "$1") -ge $MESSAGES ]]; }

# run_load PORT SINK_LOG: sends the load to PORT and waits for the sink to count it all;
# prints the elapsed seconds.
run_load() {
    local port=$1 log=$2 start end
    start=$(now)
    timeout "$PHASE_TIMEOUT" /usr/sbin/smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -d \
        -f bench-from@example.test -t bench-to@example.test "127.0.0.1:$port" >&2 || return 1
    wait_for "the sink to count $MESSAGES messages" "$PHASE_TIMEOUT" sink_has_all "$log" >&2 \
        || return 1
    end=$(now)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}

rate() { awk -v n="$MESSAGES" -v s="$1" 'BEGIN { printf "%.1f", n / s }'; }

# --- phase 3: a private Postfix instance as the relay --------------------------------------
#
# Everything lives under $WORK/postfix: etc/ (main.cf, master.cf; `postfix -c`), spool/
# (queue_directory), data/ (data_directory) and maillog (written by postlogd, no syslog).
# Postfix runs as root with mail_owner=postfix and setgid_group=postdrop (created by the
# Debian package). Its only listener is smtpd on 127.0.0.1:$PF_PORT; it relays everything to
# relayhost = [127.0.0.1]:sink. No local delivery.
PF_BIN=/usr/sbin/postfix
PF_POSTCONF=/usr/sbin/postconf
PF_DIR=$WORK/postfix
PF_MASTER_PID=""
PF_WHY=""

# log_tail FILE...: the last lines of the files that exist, on one line (for error messages).
log_tail() {
    tail -q -n 5 "$@" 2>/dev/null | tr '\n' ' ' | sed 's/ *$//' || true
}

# postfix_available: whether phase 3 can be attempted; sets PF_WHY when it can't.
postfix_available() {
    local bin
    if [[ $POSTFIX_PHASE == 0 ]]; then
        PF_WHY="BENCH_POSTFIX=0"
        return 1
    fi
    for bin in "$PF_BIN" "$PF_POSTCONF" /etc/postfix/master.cf; do
        [[ -e $bin ]] || { PF_WHY="$bin missing (apt-get install postfix)"; return 1; }
    done
    id postfix >/dev/null 2>&1 || { PF_WHY="no 'postfix' user (mail_owner)"; return 1; }
    getent group postdrop >/dev/null 2>&1 || { PF_WHY="no 'postdrop' group (setgid_group)"; return 1; }
}

# our_postfix_master PID: whether PID is the master process of the private instance.
our_postfix_master() {
    local pid=$1
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == */master ]] || return 1
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "MAIL_CONFIG=$PF_DIR/etc"
}

# stop_postfix: `postfix stop`, then kills whatever is left of the instance's master and its
# process group (master runs setsid(), so its daemons share its process group).
stop_postfix() {
    local pid=$PF_MASTER_PID i
    if [[ -z $pid && -f $PF_DIR/spool/pid/master.pid ]]; then
        pid=$(awk '{ print $1; exit }' "$PF_DIR/spool/pid/master.pid" 2>/dev/null || true)
    fi
    PF_CONF=""
    timeout 20 "$PF_BIN" -c "$PF_DIR/etc" stop >>"$PF_DIR/stop.log" 2>&1 || true
    our_postfix_master "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in 1 2 3 4 5 6 7 8 9 10; do
        our_postfix_master "$pid" || return 0
        sleep 0.5
    done
    echo "bench.sh: postfix master $pid still running, killing its process group" >&2
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

# write_postfix_master_cf: the stock master.cf without chroot (the private queue has no
# chroot files), with the smtp/inet service renamed to 127.0.0.1:$PF_PORT and every other inet
# service (and the pipe(8) examples) dropped; refuses anything else that would listen.
write_postfix_master_cf() {
    local inet
    awk -v listen="127.0.0.1:$PF_PORT" '
        /^#/ || /^[[:space:]]*$/ { print; next }
        /^[[:space:]]/ { if (!skip) print; next }   # -o/argv continuation of the last service
        {
            skip = 0
            if ($2 == "inet" && $1 != "smtp") { skip = 1; print "# bench.sh dropped: " $1 " inet"; next }
            if ($8 == "pipe") { skip = 1; next }
            if ($2 == "inet") $1 = listen
            $5 = "n"
            print
        }' /etc/postfix/master.cf >"$PF_DIR/etc/master.cf" || { PF_WHY="cannot write master.cf"; return 1; }
    inet=$("$PF_POSTCONF" -c "$PF_DIR/etc" -M 2>&1 | awk '$2 == "inet" { print $1 }' | sort -u | tr '\n' ' ')
    if [[ $inet != "127.0.0.1:$PF_PORT " ]]; then
        PF_WHY="unexpected inet services in the generated master.cf: '${inet% }'"
        return 1
    fi
}

# start_postfix SINK_PORT: configures and starts the private instance relaying to
# 127.0.0.1:SINK_PORT; sets PF_PORT. On failure sets PF_WHY and returns 1 (never exits).
start_postfix() {
    local sink_port=$1 attempt
    mkdir -p "$PF_DIR/etc" "$PF_DIR/spool" || { PF_WHY="cannot create $PF_DIR"; return 1; }
    # mktemp made $WORK 0700; Postfix's unprivileged daemons (user postfix) must be able to
    # reach data_directory and the maillog by absolute path.
    chmod 755 "$WORK" "$PF_DIR" "$PF_DIR/etc" "$PF_DIR/spool" || { PF_WHY="chmod failed"; return 1; }
    cat >"$PF_DIR/etc/main.cf" <<MAINCF || { PF_WHY="cannot write main.cf"; return 1; }
# Private Postfix instance of scripts/bench.sh: relays everything to smtp-sink.
compatibility_level = 3.6
queue_directory = $PF_DIR/spool
data_directory = $PF_DIR/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = $PF_DIR/maillog
maillog_file_prefixes = $PF_DIR
myhostname = postfix-bench.example.test
mydomain = example.test
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relay_domains =
relayhost = [127.0.0.1]:$sink_port
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtputf8_enable = no
smtpd_peername_lookup = no
smtpd_tls_security_level = none
smtp_tls_security_level = none
# relay tuning: up to 20 parallel deliveries to the sink (smtp-source uses $SESSIONS sessions)
default_destination_concurrency_limit = 20
default_process_limit = 100
MAINCF
    PF_CONF=$PF_DIR/etc   # from here on, cleanup stops the instance
    for attempt in 1 2 3; do
        PF_PORT=$(free_port)
        write_postfix_master_cf || return 1
        if ((attempt == 1)); then
            if ! timeout "$START_TIMEOUT" "$PF_BIN" -c "$PF_DIR/etc" check >"$PF_DIR/check.log" 2>&1; then
                PF_WHY="postfix check failed: $(log_tail "$PF_DIR/check.log")"
                return 1
            fi
            [[ -s $PF_DIR/check.log ]] && sed 's/^/   postfix check: /' "$PF_DIR/check.log" >&2
        fi
        if timeout "$START_TIMEOUT" "$PF_BIN" -c "$PF_DIR/etc" start >"$PF_DIR/start.log" 2>&1; then
            break
        fi
        PF_WHY="postfix start failed: $(log_tail "$PF_DIR/start.log" "$PF_DIR/maillog")"
        # free_port races with other programs binding ports; retry on another one.
        if ((attempt == 3)) || ! grep -q 'Address already in use' "$PF_DIR/maillog" 2>/dev/null; then
            return 1
        fi
        echo "bench.sh: port $PF_PORT was taken before postfix bound it, retrying" >&2
    done
    PF_MASTER_PID=$(awk '{ print $1; exit }' "$PF_DIR/spool/pid/master.pid" 2>/dev/null || true)
    if ! our_postfix_master "$PF_MASTER_PID"; then
        PF_WHY="postfix master not running after start: $(log_tail "$PF_DIR/maillog")"
        return 1
    fi
    if ! wait_for "postfix smtpd on port $PF_PORT" "$START_TIMEOUT" postfix_port_open; then
        PF_WHY="smtpd not listening on 127.0.0.1:$PF_PORT: $(log_tail "$PF_DIR/maillog")"
        return 1
    fi
}

postfix_port_open() {
    our_postfix_master "$PF_MASTER_PID" && (exec 3<>"/dev/tcp/127.0.0.1/$PF_PORT") 2>/dev/null
}

echo "== building smtpgate (release)" >&2
cargo build --release -p smtpgate >&2
GATE_BIN=${SMTPGATE_BIN:-$ROOT/target/release/smtpgate}   # override to compare another build

echo "== phase 1: smtp-source -> smtp-sink ($MESSAGES messages, $SIZE bytes, $SESSIONS sessions)" >&2
start_sink "$WORK/sink-direct.log"
DIRECT_SECONDS=$(run_load "$SINK_PORT" "$WORK/sink-direct.log")
kill "$SINK_PID"
echo "   direct: $(rate "$DIRECT_SECONDS") msg/s ($DIRECT_SECONDS s)" >&2

# cpu_seconds PID: the user and system CPU time the process has used so far (less sensitive to
# other load on the machine than the elapsed time).
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"
}

# settled_cpu_seconds PID: cpu_seconds once the process is idle (what it still does for the load
# after the sink counted it, such as writing events, counts too); waits at most 10 s.
settled_cpu_seconds() {
    local before after i
    before=$(cpu_seconds "$1")
    for ((i = 0; i < 20; i++)); do
        sleep 0.5
        after=$(cpu_seconds "$1")
        awk -v a="$before" -v b="$after" 'BEGIN { exit !(b - a < 0.02) }' && break
        before=$after
    done
    echo "$after"
}

# gate_phase EVENTS NAME: starts smtpgate (events recorded when EVENTS is 1) with a fresh spool
# and sink in $WORK/gate-NAME, sends the load through it and sets GATE_SECONDS, GATE_CPU and GATE_PEAK_RSS.
# The gate is left running (GATE_PID) for phase 4.
gate_phase() {
    local events=$1 name=$2 section=""
    [[ $events == 0 ]] && section=$'[events]\nenabled = false'
    echo "== phase 2 ($name): smtp-source -> smtpgate -> smtp-sink" >&2
    start_sink "$WORK/sink-$name.log"
    GATE_DIR=$WORK/gate-$name
    mkdir -p "$GATE_DIR"
    cat >"$GATE_DIR/smtpgate.toml" <<TOML
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

[[listener]]
name = "proxy"
address = "127.0.0.1:0"
relay_networks = ["127.0.0.0/8"]
mode = "proxy"

[[pool]]
name = "sink"
servers = ["127.0.0.1:$SINK_PORT"]
tls = "none"

[[route]]
pool = "sink"

[queue]
retry = ["1s"]

$section
TOML
    start_gate "$START_TIMEOUT"
    GATE_PORT=$(listener_port inbound)
    PROXY_PORT=$(listener_port proxy)
    [[ -n $GATE_PORT && -n $PROXY_PORT ]] || { echo "bench.sh: no listener address in smtpgate's stdout" >&2; exit 1; }
    GATE_SECONDS=$(run_load "$GATE_PORT" "$WORK/sink-$name.log")
    GATE_PEAK_RSS=$(awk '/^VmHWM:/ {print $2, $3}' "/proc/$GATE_PID/status")
    GATE_CPU=$(settled_cpu_seconds "$GATE_PID")
    echo "   smtpgate ($name): $(rate "$GATE_SECONDS") msg/s ($GATE_SECONDS s), CPU $GATE_CPU s, peak RSS $GATE_PEAK_RSS" >&2
}

# Without events, when they are compared (the default) or switched off; the CPU is left to the
# next phase.
OFF_SECONDS=""
if [[ $EVENTS != 1 ]]; then
    gate_phase 0 events-off
    OFF_SECONDS=$GATE_SECONDS OFF_PEAK_RSS=$GATE_PEAK_RSS OFF_CPU=$GATE_CPU
    [[ $EVENTS == 0 ]] || kill "$GATE_PID" "$SINK_PID" 2>/dev/null || true
fi
ON_SECONDS=""
if [[ $EVENTS != 0 ]]; then
    gate_phase 1 events-on
    ON_SECONDS=$GATE_SECONDS ON_PEAK_RSS=$GATE_PEAK_RSS ON_CPU=$GATE_CPU
fi

LATENCY_MESSAGES=${BENCH_LATENCY_MESSAGES:-2000}
echo "== phase 4: latency, smtplib -> smtp-sink vs smtplib -> smtpgate (proxy listener) -> smtp-sink ($LATENCY_MESSAGES messages each)" >&2
LATENCY=$(timeout "$PHASE_TIMEOUT" python3 - "$SINK_PORT" "$PROXY_PORT" "$LATENCY_MESSAGES" "$SIZE" <<'PY'
import smtplib, sys, time
direct_port, proxy_port, n, size = (int(a) for a in sys.argv[1:5])
warmup = 50
line = b"x" * 76 + b"\r\n"
body = b"Subject: latency\r\n\r\n" + line * max(1, size // len(line))
def session(port):
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.ehlo("bench.example.test")
    return s
sessions = {"direct": session(direct_port), "proxy": session(proxy_port)}
times = {"direct": [], "proxy": []}
for i in range(warmup + n):
    order = ("direct", "proxy") if i % 2 == 0 else ("proxy", "direct")
    for name in order:
        start = time.perf_counter()
        sessions[name].sendmail("bench-from@example.test", ["bench-to@example.test"], body)
        if i >= warmup:
            times[name].append(time.perf_counter() - start)
for s in sessions.values():
    s.quit()
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] * 1000
d50, d99 = pct(times["direct"], 0.5), pct(times["direct"], 0.99)
p50, p99 = pct(times["proxy"], 0.5), pct(times["proxy"], 0.99)
print(f"latency direct:      median {d50:.3f} ms, p99 {d99:.3f} ms")
print(f"latency via proxy:   median {p50:.3f} ms, p99 {p99:.3f} ms")
print(f"added by the proxy:  median {p50 - d50:.3f} ms, p99 {p99 - d99:.3f} ms")
PY
) || { echo "bench.sh: phase 4 failed" >&2; exit 1; }
echo "$LATENCY" | sed 's/^/   /' >&2
kill "$GATE_PID" "$SINK_PID" 2>/dev/null || true   # leave the CPU to phase 3

PF_SECONDS=""
if postfix_available; then
    echo "== phase 3: smtp-source -> postfix (private instance, relayhost) -> smtp-sink" >&2
    start_sink "$WORK/sink-postfix.log"
    if ! start_postfix "$SINK_PORT"; then
        echo "bench.sh: skipping phase 3: $PF_WHY" >&2
        PF_WHY="postfix did not start: $PF_WHY"
    elif PF_SECONDS=$(run_load "$PF_PORT" "$WORK/sink-postfix.log"); then
        echo "   postfix: $(rate "$PF_SECONDS") msg/s ($PF_SECONDS s)" >&2
    else
        PF_SECONDS=""
        PF_WHY="phase 3 failed (sink counted $(sink_count "$WORK/sink-postfix.log") of $MESSAGES)"
        echo "bench.sh: $PF_WHY; last lines of postfix's log:" >&2
        tail -n 20 "$PF_DIR/maillog" >&2 2>/dev/null || true
    fi
    [[ -n $PF_CONF ]] && stop_postfix
    kill "$SINK_PID" 2>/dev/null || true
else
    echo "== phase 3 skipped: $PF_WHY" >&2
fi

DIRECT_RATE=$(rate "$DIRECT_SECONDS")
ratio() { awk -v g="$1" -v d="$2" 'BEGIN { printf "%.3f", g / d }'; }
printf '\nmessages: %d x %d bytes, %d sessions\n' "$MESSAGES" "$SIZE" "$SESSIONS"
printf 'direct:   %8.1f msg/s (%.2f s)\n' "$DIRECT_RATE" "$DIRECT_SECONDS"
GATE_RATE=""
if [[ -n $OFF_SECONDS ]]; then
    GATE_RATE=$(rate "$OFF_SECONDS")
    printf 'smtpgate, events off: %8.1f msg/s (%.2f s), ratio gate/direct %s, CPU %s s, peak RSS %s\n' \
        "$GATE_RATE" "$OFF_SECONDS" "$(ratio "$GATE_RATE" "$DIRECT_RATE")" "$OFF_CPU" "$OFF_PEAK_RSS"
fi
if [[ -n $ON_SECONDS ]]; then
    ON_RATE=$(rate "$ON_SECONDS")
    printf 'smtpgate, events on:  %8.1f msg/s (%.2f s), ratio gate/direct %s, CPU %s s, peak RSS %s\n' \
        "$ON_RATE" "$ON_SECONDS" "$(ratio "$ON_RATE" "$DIRECT_RATE")" "$ON_CPU" "$ON_PEAK_RSS"
    if [[ -n $GATE_RATE ]]; then
        printf 'events on/off: rate %s, CPU %s (rate 1.000 = recording events costs nothing)\n' \
            "$(ratio "$ON_RATE" "$GATE_RATE")" "$(ratio "$ON_CPU" "$OFF_CPU")"
    fi
    GATE_RATE=$ON_RATE
fi
printf 'ratio gate/direct: %s\n' "$(ratio "$GATE_RATE" "$DIRECT_RATE")"
if [[ -n $PF_SECONDS ]]; then
    PF_RATE=$(rate "$PF_SECONDS")
    printf 'postfix:  %8.1f msg/s (%.2f s)\n' "$PF_RATE" "$PF_SECONDS"
    printf 'ratio smtpgate/postfix: %s\n' "$(ratio "$GATE_RATE" "$PF_RATE")"
else
    printf 'postfix:  skipped (%s)\n' "$PF_WHY"
fi
printf '%s\n' "$LATENCY"
