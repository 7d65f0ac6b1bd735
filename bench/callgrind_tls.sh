#!/usr/bin/env bash
# Instructions per echoed message over TLS: a server under callgrind, driven by
# `loadgen --tls` (2 connections), loopback only, a throwaway P-256 certificate.
#
#   bench/callgrind_tls.sh [reactor|tokio] MODE SIZE PIPELINE [SECONDS]
#   bench/callgrind_tls.sh reactor bulk 65536 4 12
#
# Prints `messages=N total=INSTRUCTIONS per_msg=X`. The total includes start-up
# and the handshakes (about 8 million instructions for either server): run bulk
# twice (3 s and 12 s) and divide the differences for its per-message cost.
# Build first: cargo build --release --example echo --example tokio_tls_echo --example loadgen
set -euo pipefail
cd "$(dirname "$0")/.."
server=${1:?reactor or tokio}
mode=${2:?mode}
size=${3:?size}
pipeline=${4:?pipeline}
seconds=${5:-4}
bins=target/release/examples
case "$server" in
    reactor) cmd=("$bins/echo" --idle-timeout 3600) ;;
    tokio) cmd=("$bins/tokio_tls_echo" --buf-size 65536) ;;
    *) echo "server is reactor or tokio" >&2; exit 2 ;;
esac
[ -x "${cmd[0]}" ] && [ -x "$bins/loadgen" ] || {
    echo "build first: cargo build --release --example echo --example tokio_tls_echo --example loadgen" >&2
    exit 2
}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
bench/tls_certs.sh "$out" >/dev/null
valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" "${cmd[@]}" \
    --listen 127.0.0.1:0 --tls-cert "$out/server-ec.pem" --tls-key "$out/server-ec.key" \
    > "$out/server.out" 2>/dev/null &
pid=$!
for _ in $(seq 1 150); do
    grep -q listening "$out/server.out" 2>/dev/null && break
    sleep 0.2
done
addr=$(awk '/listening/ {print $3; exit}' "$out/server.out")
[ -n "$addr" ] || { echo "the server did not start" >&2; kill "$pid"; exit 1; }
result=$("$bins/loadgen" --target "$addr" --mode "$mode" --connections 2 --size "$size" \
    --pipeline "$pipeline" --duration "$seconds" --warmup 0 --tls --ca "$out/ca.pem" 2>&1)
kill -TERM "$pid"
wait "$pid" || true
messages=$(grep -o 'messages=[0-9]*' <<< "$result" | head -1 | cut -d= -f2)
total=$(callgrind_annotate --inclusive=no "$out/cg.out" 2>/dev/null |
    awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}')
[ -n "$messages" ] && [ "$messages" -gt 0 ] || { echo "no messages: $result" >&2; exit 1; }
echo "messages=$messages total=$total per_msg=$(( total / messages ))"
