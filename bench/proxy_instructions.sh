#!/usr/bin/env bash
# Instructions per request/response message of a forwarder under callgrind: our echo
# server behind it, loadgen driving rr (50 connections, 64 B) through it; the
# counters are zeroed after a 1 s warm-up, so start-up is not counted. Instruction
# counts do not depend on the machine's load, unlike rates.
#
#   bench/proxy_instructions.sh [PROXY_BIN] [extra proxy args...]
#
# PROXY_BIN defaults to target/release/examples/proxy; ECHO and LOADGEN default to
# target/release/examples/{echo,loadgen} (`cargo build --release --example proxy
# --example echo --example loadgen`). Needs valgrind. Prints one line:
# `messages=N instructions=I per_message=I/N`. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/release/examples"
P=${1:-$BIN/proxy}
shift || true
ECHO=${ECHO:-$BIN/echo}
LOADGEN=${LOADGEN:-$BIN/loadgen}
command -v valgrind >/dev/null || { echo "valgrind is required" >&2; exit 1; }
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

port_of() {
    for _ in $(seq 200); do grep -q '^listening on' "$1" 2>/dev/null && break; sleep 0.05; done
    sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$1"
}

"$ECHO" --listen 127.0.0.1:0 >"$TMP/echo.out" 2>/dev/null & PIDS+=($!)
EPORT=$(port_of "$TMP/echo.out")
valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out" \
    "$P" --listen 127.0.0.1:0 --upstream "127.0.0.1:$EPORT" "$@" >"$TMP/p.out" 2>"$TMP/p.err" &
VPID=$!; PIDS+=($VPID)
PPORT=$(port_of "$TMP/p.out")
[ -n "$PPORT" ] || { cat "$TMP/p.err" >&2; exit 1; }
"$LOADGEN" --target "127.0.0.1:$PPORT" --mode rr --connections 50 --size 64 --duration 1 --warmup 0 >/dev/null 2>&1
callgrind_control -z "$VPID" >/dev/null 2>&1
OUT=$("$LOADGEN" --target "127.0.0.1:$PPORT" --mode rr --connections 50 --size 64 --duration 4 --warmup 0 2>&1)
callgrind_control -d "$VPID" >/dev/null 2>&1
N=$(echo "$OUT" | grep -o 'RESULT.*' | grep -o ' messages=[0-9]*' | cut -d= -f2)
IR=$(callgrind_annotate "$TMP/cg.out.1" 2>/dev/null | grep -m1 'PROGRAM TOTALS' | awk '{gsub(",", "", $1); print $1}')
echo "messages=$N instructions=$IR per_message=$(python3 -c "print(round($IR / $N, 1))")"
