#!/usr/bin/env bash
# Instructions per echoed message: the echo server under callgrind, driven by
# loadgen (rr, 50 connections, 64 bytes, 4 s), loopback only.
#
#   bench/callgrind_echo.sh [--scrape] [--echo BIN] [--loadgen BIN] [-- ECHO_ARGS...]
#
# --scrape runs echo with --metrics 127.0.0.1:19464 and scrapes /metrics once a
# second meanwhile (the metrics issue's measurement). Prints
# `messages=N total=INSTRUCTIONS per_msg=X`. Needs valgrind (and curl for --scrape).
set -euo pipefail
cd "$(dirname "$0")/.."
echo_bin=target/release/echo
loadgen_bin=target/release/loadgen
scrape=0
while [ $# -gt 0 ]; do
    case "$1" in
        --scrape) scrape=1; shift ;;
        --echo) echo_bin=$2; shift 2 ;;
        --loadgen) loadgen_bin=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$echo_bin" ] && [ -x "$loadgen_bin" ] || {
    echo "build first: cargo build --release -p reactor-examples --bins" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
extra=()
[ "$scrape" = 1 ] && extra=(--metrics 127.0.0.1:19464)
valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" \
    "$echo_bin" --listen 127.0.0.1:0 "${extra[@]}" "$@" >"$out/addr" 2>/dev/null &
server=$!
for _ in $(seq 1 100); do grep -q listening "$out/addr" 2>/dev/null && break; sleep 0.2; done
addr=$(awk '{print $3}' "$out/addr")
scraper=""
if [ "$scrape" = 1 ]; then
    ( for _ in 1 2 3 4 5; do sleep 1; curl -s -o /dev/null http://127.0.0.1:19464/metrics; done ) &
    scraper=$!
fi
result=$("$loadgen_bin" --target "$addr" --mode rr --connections 50 --size 64 \
    --duration 4 --warmup 0 2>&1)
[ -n "$scraper" ] && wait "$scraper"
kill -TERM "$server"; wait "$server" || true
msgs=$(echo "$result" | grep -o 'messages=[0-9]*' | head -1 | cut -d= -f2)
total=$(callgrind_annotate --inclusive=no "$out/cg.out" 2>/dev/null \
    | grep -m1 "PROGRAM TOTALS" | awk '{gsub(",","",$1); print $1}')
echo "messages=$msgs total=$total per_msg=$(python3 -c "print(round($total/$msgs, 1))")"
