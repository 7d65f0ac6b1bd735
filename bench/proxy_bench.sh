#!/usr/bin/env bash
# Three single-threaded TCP forwarders side by side: ours (crates/proxy/src/bin/proxy.rs
# --upstream), HAProxy (mode tcp, nbthread 1) and tokio copy_bidirectional
# (crates/proxy/examples/tokio_forward.rs). Bulk throughput with iperf3 as client and server;
# small-message request/response latency and connection rate with
# crates/proxy/examples/proxy_probe.rs against our echo server (crates/examples/src/bin/echo.rs).
# Everything on 127.0.0.1. Usage: bench/proxy_bench.sh [SECONDS] [STREAMS] [ROUNDS]
# Needs iperf3 and haproxy (apt-get install iperf3 haproxy). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
STREAMS=${2:-1}
ROUNDS=${3:-3}
IPERF_PORT=${IPERF_PORT:-15201}
HAPROXY_PORT=${HAPROXY_PORT:-15202}
command -v iperf3 >/dev/null || { echo "iperf3 is required" >&2; exit 1; }
command -v haproxy >/dev/null || { echo "haproxy is required" >&2; exit 1; }

cargo build -q --release --example proxy --example tokio_forward --example proxy_probe --example echo
BIN="${CARGO_TARGET_DIR:-target}/release/examples"
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >/dev/null 2>&1 & PIDS+=($!)

# Starts a binary that prints `listening on IP:PORT`; sets PORT and PID.
start_listening() {
    local out="$TMP/$1.out"; shift
    RUST_LOG=warn "$@" >"$out" 2>"$out.err" & PID=$!; PIDS+=($PID)
    for _ in $(seq 100); do
        if grep -q '^listening on ' "$out" 2>/dev/null; then break; fi
        sleep 0.05
    done
    PORT=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$out")
    [ -n "$PORT" ] || { echo "$* did not start" >&2; cat "$out.err" >&2; exit 1; }
}

start_listening echo "$BIN/echo" --listen 127.0.0.1:0
ECHO_PORT=$PORT

cat >"$TMP/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend f
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend b
backend b
    server s1 127.0.0.1:$IPERF_PORT
frontend fe
    bind 127.0.0.1:$((HAPROXY_PORT + 1))
    default_backend be
backend be
    server e1 127.0.0.1:$ECHO_PORT
CFG

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run NAME PORT PID: prints a table row (Gbit/s both directions, CPU seconds used).
run() {
    local name=$1 port=$2 pid=$3
    local row="| $name |"
    for dir in "" "-R"; do
        local t0; t0=$(cpu_ticks "$pid")
        local gbps
        gbps=$(iperf3 -c 127.0.0.1 -p "$port" -t "$DUR" -P "$STREAMS" $dir -J \
            | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
        local t1; t1=$(cpu_ticks "$pid")
        local cpu; cpu=$(python3 -c "print('%.2f' % (($t1 - $t0) / $(getconf CLK_TCK) / $DUR))")
        row="$row $gbps | $cpu |"
    done
    echo "$row"
}

haproxy -f "$TMP/haproxy.cfg" -db >/dev/null 2>&1 & HPID=$!; PIDS+=($HPID)
sleep 0.5
kill -0 "$HPID" 2>/dev/null || { echo "haproxy did not start" >&2; exit 1; }
HAPROXY_NAME="HAProxy $(haproxy -v | sed -n 's/^HAProxy version \([^ ]*\).*/\1/p') (nbthread 1)"
start_listening reactor "$BIN/proxy" --listen 127.0.0.1:0 --upstream "127.0.0.1:$IPERF_PORT"
R_PORT=$PORT R_PID=$PID
start_listening reactor_echo "$BIN/proxy" --listen 127.0.0.1:0 --upstream "127.0.0.1:$ECHO_PORT"
RE_PORT=$PORT
start_listening tokio "$BIN/tokio_forward" --listen 127.0.0.1:0 --upstream "127.0.0.1:$IPERF_PORT"
T_PORT=$PORT T_PID=$PID
start_listening tokio_echo "$BIN/tokio_forward" --listen 127.0.0.1:0 --upstream "127.0.0.1:$ECHO_PORT"
TE_PORT=$PORT

echo "## Bulk: iperf3 -t $DUR -P $STREAMS through each forwarder ($(nproc) cores, $(date -u +%F))"
echo
echo "| forwarder | client->server Gbit/s | CPU (cores) | server->client Gbit/s | CPU (cores) |"
echo "|---|---|---|---|---|"
run "reactor proxy" "$R_PORT" "$R_PID"
run "$HAPROXY_NAME" "$HAPROXY_PORT" "$HPID"
run "tokio copy_bidirectional (current_thread)" "$T_PORT" "$T_PID"
run "direct, no forwarder (CPU: iperf3 server)" "$IPERF_PORT" "${PIDS[0]}"

echo
echo "## Small messages and connection rate (proxy_probe, echo server behind)"
echo
echo "| forwarder | rr: 50 connections, 64 B | conn: 50 concurrent, connect + 1 B echo + close |"
echo "|---|---|---|"
probe() {
    local rr conn
    rr=$("$BIN/proxy_probe" rr --addr "127.0.0.1:$2" --seconds "$DUR")
    conn=$("$BIN/proxy_probe" conn --addr "127.0.0.1:$2" --seconds 3)
    echo "| $1 | $rr | $conn |"
    sleep 2 # let TIME_WAIT sockets from the connection test expire a little
}
# Rounds with the forwarder order rotated, so none always runs first (small-message
# results drift by about 10 % between runs on a shared 2-core machine).
NAMES=("reactor proxy" "$HAPROXY_NAME" "tokio copy_bidirectional (current_thread)")
PORTS=("$RE_PORT" "$((HAPROXY_PORT + 1))" "$TE_PORT")
for ((r = 0; r < ROUNDS; r++)); do
    for ((k = 0; k < 3; k++)); do
        i=$(((r + k) % 3))
        probe "${NAMES[$i]} (round $((r + 1)))" "${PORTS[$i]}"
    done
done
probe "direct to echo, no forwarder" "$ECHO_PORT"
