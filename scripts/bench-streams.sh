#!/usr/bin/env bash
# Transactional mail under a bulk backlog: how long a transactional message takes to leave while
# BENCH_BACKLOG (default 100000) bulk messages wait for the same destination.
#
#   ./scripts/bench-streams.sh
#   BENCH_BACKLOG=20000 BENCH_TX=50 ./scripts/bench-streams.sh
#
# One smtpgate delivers by MX to the address literal [127.0.0.1] (queue.smtp_port points at a
# Postfix smtp-sink); a shaping file limits that destination to 60 messages a minute; a route puts
# mail from bulk@example.test in the "bulk" stream. Postfix's smtp-source queues the bulk backlog,
# then Python's smtplib sends BENCH_TX transactional messages, 1.1 s apart (the 60/min limit counts
# for each stream on its own). Each is timed from
# smtpgate's "message accepted" log line to its "delivery attempt ... delivered" line (both
# timestamped by smtpgate). Prints the median and the worst. Everything runs on 127.0.0.1 with
# time limits; every process is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BACKLOG=${BENCH_BACKLOG:-100000}
TX=${BENCH_TX:-20}
LIMIT=${BENCH_PHASE_TIMEOUT:-600}

for tool in /usr/sbin/smtp-sink /usr/sbin/smtp-source python3; do
    command -v "$tool" >/dev/null || { echo "bench-streams.sh: $tool missing (./scripts/test.sh installs it)" >&2; exit 1; }
done
WORK=$(mktemp -d "$ROOT/target/bench-streams.XXXXXX")
PIDS=()
BENCH_NAME=bench-streams.sh
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    [[ -n ${BENCH_KEEP:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== building smtpgate (release)" >&2
cargo build --release -p smtpgate >&2
GATE_BIN=${SMTPGATE_BIN:-$ROOT/target/release/smtpgate}

start_sink "$WORK/sink.log"

mkdir -p "$WORK/gate"
cat >"$WORK/gate/shaping.toml" <<TOML
[domain."[127.0.0.1]"]
max_message_rate = "60/min"
max_connections = 2
TOML
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

[shaping]
file = "shaping.toml"

[mta_sts]
enabled = false

[[stream]]
name = "bulk"

[[route]]
when = { sender = "bulk@example.test" }
stream = "bulk"

[queue]
retry = ["30s"]
smtp_port = $SINK_PORT
TOML
start_gate 30
PORT=$(listener_port inbound)

echo "== queueing $BACKLOG bulk messages (smtp-source)" >&2
start=$(date +%s.%N)
timeout "$LIMIT" /usr/sbin/smtp-source -s 20 -m "$BACKLOG" -l 1000 -d \
    -f bulk@example.test -t 'reader@[127.0.0.1]' "127.0.0.1:$PORT" >&2
end=$(date +%s.%N)
echo "   queued in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s" >&2

echo "== $TX transactional messages, one at a time" >&2
timeout "$LIMIT" python3 - "$PORT" "$TX" <<'PY'
import smtplib, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
s = smtplib.SMTP("127.0.0.1", port, timeout=30)
for i in range(n):
    s.sendmail("alice@example.test", ["user%d@[127.0.0.1]" % i], b"Subject: reset %d\r\n\r\nYour code.\r\n" % i)
    time.sleep(1.1)  # sparser than the destination's 60/min, which applies to every stream
s.quit()
PY

# Pair each transactional message's acceptance with its delivery, by queue id, from smtpgate's log.
# (The log's colour codes are stripped first.)
plain_log() { sed 's/\x1b\[[0-9;]*m//g' "$WORK/gate/stderr.log"; }
done_all() { [[ $(plain_log | grep -c 'recipient=user[0-9]*@\[127.0.0.1\].*result="delivered"' || true) -ge $TX ]]; }
wait_for "the transactional messages to leave" 60 done_all
python3 - "$WORK/gate/stderr.log" "$TX" "$BACKLOG" <<'PY'
import re, sys, datetime, statistics
log, n, backlog = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ts = lambda line: datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
accepted, delivered, bulk_delivered = {}, {}, 0
for line in open(log, errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    qid = re.search(r"queue_id=(\w+)", line)
    if not qid:
        continue
    if "message accepted" in line and "sender=alice@example.test" in line:
        accepted[qid.group(1)] = ts(line)
    elif "delivery attempt" in line and 'result="delivered"' in line:
        if "recipient=user" in line:
            delivered[qid.group(1)] = ts(line)
        else:
            bulk_delivered += 1
waits = sorted((delivered[q] - accepted[q]).total_seconds() * 1000 for q in accepted if q in delivered)
assert len(waits) == n, f"{len(waits)} of {n} transactional messages paired"
print(f"\nbulk backlog: {backlog} messages queued for [127.0.0.1] at 60/min ({bulk_delivered} delivered meanwhile)")
print(f"transactional, accepted -> delivered: median {statistics.median(waits):.1f} ms, worst {waits[-1]:.1f} ms ({n} messages)")
PY
