#!/usr/bin/env bash
# transmission-cli (Debian's 3.00) leeching SIZE_MIB from a seeder on loopback, with
# DHT/LPD/PEX/uTP and port mapping off, through a small HTTP tracker (interval 2 s)
# that answers each announcer with the others. Transmission never dials a loopback
# peer, so the seeder dials it:
#   SEEDER=ours    our seeder (peer seed), from its next announce
#   SEEDER=direct  our seeder with --peer (dials at once)
#   SEEDER=lt      libtorrent (tests/interop/lt_peer.py seed --peer, connect_peer)
# Prints the time from starting transmission-cli to its --finish script, and when
# piece data started to flow (ss -tin, bytes acked, sampled every 0.2 s).
# Usage: bench/transmission_bench.sh [SIZE_MIB] [RUNS]   env: SEEDER, SEEDARGS, BIN
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-16}
RUNS=${2:-1}
SEEDER=${SEEDER:-ours}
if [ -z "${BIN:-}" ]; then
    cargo build -q --release --example peer
    BIN=${CARGO_TARGET_DIR:-target}/release/examples/peer
fi
LT=crates/bittorrent/tests/interop/lt_peer.py
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
W=$(mktemp -d /tmp/transmission-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
cat > "$W/tracker.py" <<'PY'
import http.server, struct, sys, urllib.parse
seen = set()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        port = int(q.get("port", ["0"])[0])
        if port:
            seen.add(port)
        peers = b"".join(bytes([127, 0, 0, 1]) + struct.pack(">H", p) for p in sorted(seen) if p != port)
        body = b"d8:intervali2e5:peers" + str(len(peers)).encode() + b":" + peers + b"e"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
cat > "$W/sample.py" <<'PY'
import os, re, subprocess, sys, time
port, out, stop = sys.argv[1], open(sys.argv[2], "w"), sys.argv[3]
t0 = time.time()
while not os.path.exists(stop) and time.time() - t0 < 300:
    s = subprocess.run(["ss", "-tin", f"( dport = :{port} )"], capture_output=True, text=True).stdout
    acked = sum(int(x) for x in re.findall(r"bytes_acked:([0-9]+)", s))
    out.write("%.2f %d\n" % (time.time() - t0, acked))
    out.flush()
    time.sleep(0.2)
PY
head -c $((SIZE * 1024 * 1024)) /dev/urandom > "$W/payload.bin"
TPORT=$(free_port)
python3 "$W/tracker.py" "$TPORT" &
sleep 1
"$BIN" make-torrent --data "$W/payload.bin" --piece-length 262144 \
    --tracker "http://127.0.0.1:$TPORT/announce" --out "$W/t.torrent" 2>/dev/null
for run in $(seq "$RUNS"); do
    R="$W/run$run" && mkdir -p "$R/cfg" "$R/dl"
    TRP=$(free_port)
    cat > "$R/cfg/settings.json" <<J
{"dht-enabled": false, "lpd-enabled": false, "pex-enabled": false, "utp-enabled": false,
 "port-forwarding-enabled": false, "peer-port": $TRP, "peer-port-random-on-start": false,
 "rpc-enabled": false, "speed-limit-down-enabled": false, "speed-limit-up-enabled": false}
J
    printf '#!/bin/sh\ntouch %s/done\n' "$R" > "$R/fin.sh" && chmod +x "$R/fin.sh"
    SP=""
    if [ "$SEEDER" = ours ]; then
        "$BIN" seed --torrent "$W/t.torrent" --data "$W/payload.bin" --listen 127.0.0.1:0 ${SEEDARGS:-} \
            > "$R/seed.out" 2> "$R/seed.err" &
        SP=$!
        for _ in $(seq 100); do grep -q seeding "$R/seed.err" && break; sleep 0.1; done
        sleep 1
    fi
    python3 "$W/sample.py" "$TRP" "$R/samples" "$R/done" &
    T0=$(date +%s.%N)
    transmission-cli -g "$R/cfg" -w "$R/dl" -p "$TRP" -M -D -U -f "$R/fin.sh" "$W/t.torrent" \
        > "$R/transmission.out" 2>&1 &
    TP=$!
    if [ "$SEEDER" != ours ]; then
        for _ in $(seq 100); do ss -ltn "( sport = :$TRP )" | grep -q LISTEN && break; sleep 0.05; done
        if [ "$SEEDER" = direct ]; then
            "$BIN" seed --torrent "$W/t.torrent" --data "$W/payload.bin" --listen 127.0.0.1:0 \
                --peer "127.0.0.1:$TRP" ${SEEDARGS:-} > "$R/seed.out" 2> "$R/seed.err" &
        else
            mkdir -p "$R/lt" && cp "$W/payload.bin" "$R/lt/"
            python3 "$LT" seed --timeout 300 --torrent "$W/t.torrent" --save-dir "$R/lt" \
                --peer "127.0.0.1:$TRP" > "$R/seed.out" 2> "$R/seed.err" &
        fi
        SP=$!
    fi
    for _ in $(seq 6000); do [ -e "$R/done" ] && break; sleep 0.05; done
    T1=$(date +%s.%N)
    [ -e "$R/done" ] || { echo "run $run: transmission did not finish"; exit 1; }
    cmp -s "$W/payload.bin" "$R/dl/payload.bin" || { echo "run $run: file differs"; exit 1; }
    FIRST=$(awk '$2 > 100000 { print $1; exit }' "$R/samples")
    echo "$SEEDER run $run: ${SIZE} MiB in $(echo "$T1 - $T0" | bc) s (piece data from ${FIRST} s)"
    kill "$TP" "$SP" 2>/dev/null || true
    wait "$TP" "$SP" 2>/dev/null || true
done
