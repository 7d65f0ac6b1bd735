#!/usr/bin/env bash
# A/B of two forwarder set-ups, interleaved round by round (the order alternates),
# so that machine drift hits both alike. Each set-up is a chain of forwarder command
# lines separated by '|', client side first: the script starts the last one in
# front of the server, the one before it in front of that, and so on, appending
# `--listen 127.0.0.1:0 --upstream 127.0.0.1:PORT` to each. Every command must print
# `listening on IP:PORT` (our proxy does).
#
#   A="/tmp/old/proxy" B="target/release/examples/proxy" bench/proxy_ab.sh
#   A="P | P" B="P --proxy-protocol-out v2 | P --proxy-protocol-in --proxy-protocol-from 127.0.0.1/32" \
#       bench/proxy_ab.sh            # with P=target/release/examples/proxy
#
# Per round and set-up: proxy_probe rr (50 connections, 64 B), proxy_probe conn
# (50 concurrent connect + 1 B echo + close), iperf3 both ways (CPU of the chain's
# processes from /proc). Prints one line per measurement, then the medians.
# Env: ROUNDS (default 4), DUR seconds per measurement (5), ECHO, PROBE (default:
# target/release/examples/{echo,proxy_probe}; build them with
# `cargo build --release --example echo --example proxy_probe --example proxy`).
# Needs iperf3. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${A:?set A to a forwarder chain}" "${B:?set B to a forwarder chain}"
ROUNDS=${ROUNDS:-4}
DUR=${DUR:-5}
BIN="${CARGO_TARGET_DIR:-target}/release/examples"
ECHO=${ECHO:-$BIN/echo}
PROBE=${PROBE:-$BIN/proxy_probe}
IPERF_PORT=${IPERF_PORT:-15301}
command -v iperf3 >/dev/null || { echo "iperf3 is required" >&2; exit 1; }
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

# start_listening NAME CMD...: starts CMD, waits for `listening on`, sets PORT, PID.
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

# start_chain NAME SPEC SERVER_PORT: sets PORT (the front) and CHAIN_PIDS.
start_chain() {
    local name=$1 spec=$2 up=$3 i
    IFS='|' read -r -a hops <<<"$spec"
    CHAIN_PIDS=()
    for ((i = ${#hops[@]} - 1; i >= 0; i--)); do
        # shellcheck disable=SC2086 # each hop is a command line
        start_listening "$name-$i-$up" ${hops[$i]} --listen 127.0.0.1:0 --upstream "127.0.0.1:$up"
        CHAIN_PIDS+=("$PID")
        up=$PORT
    done
}

cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }

iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >/dev/null 2>&1 & PIDS+=($!)
start_listening echo "$ECHO" --listen 127.0.0.1:0
ECHO_PORT=$PORT
sleep 0.3
declare -A RR CONN BULK PID_OF
for s in A B; do
    start_chain "$s-echo" "${!s}" "$ECHO_PORT"; RR[$s]=$PORT
    start_chain "$s-iperf" "${!s}" "$IPERF_PORT"; BULK[$s]=$PORT; PID_OF[$s]="${CHAIN_PIDS[*]}"
done

RESULTS="$TMP/results"
measure() {
    local s=$1 r=$2 line dir gbps t0 t1
    line=$("$PROBE" rr --addr "127.0.0.1:${RR[$s]}" --seconds "$DUR")
    echo "$s round $r rr: $line"
    echo "$s rr $(echo "$line" | sed -n 's/^\([0-9,]*\) req\/s.*/\1/p' | tr -d ,)" >>"$RESULTS"
    line=$("$PROBE" conn --addr "127.0.0.1:${RR[$s]}" --seconds 3)
    echo "$s round $r conn: $line"
    echo "$s conn $(echo "$line" | sed -n 's/^\([0-9,]*\) conn\/s.*/\1/p' | tr -d ,)" >>"$RESULTS"
    sleep 2 # TIME_WAIT sockets of the connection test
    for dir in up down; do
        # shellcheck disable=SC2086
        t0=$(cpu_ticks ${PID_OF[$s]})
        gbps=$(iperf3 -c 127.0.0.1 -p "${BULK[$s]}" -t "$DUR" $([ $dir = down ] && echo -R) -J \
            | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
        # shellcheck disable=SC2086
        t1=$(cpu_ticks ${PID_OF[$s]})
        echo "$s round $r bulk $dir: $gbps Gbit/s, CPU $(python3 -c "print('%.2f' % (($t1 - $t0) / $(getconf CLK_TCK) / $DUR))") cores"
        echo "$s bulk_$dir $gbps" >>"$RESULTS"
    done
}

echo "A: $A"
echo "B: $B"
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then order="A B"; else order="B A"; fi
    for s in $order; do measure "$s" "$r"; done
done
echo
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    s, k, v = line.split()
    if v:
        rows.setdefault((k, s), []).append(float(v))
print("| measure | A median | B median | B/A | A runs | B runs |")
print("|---|---:|---:|---:|---|---|")
for k in ["rr", "conn", "bulk_up", "bulk_down"]:
    a, b = rows.get((k, "A"), []), rows.get((k, "B"), [])
    if not a or not b:
        continue
    ma, mb = statistics.median(a), statistics.median(b)
    fmt = (lambda x: f"{x:,.0f}") if k in ("rr", "conn") else (lambda x: f"{x:.2f}")
    print(f"| {k} | {fmt(ma)} | {fmt(mb)} | {mb / ma:.3f} | {' / '.join(map(fmt, a))} | {' / '.join(map(fmt, b))} |")
PY
