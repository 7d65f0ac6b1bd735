#!/usr/bin/env bash
# 256 MiB over loopback, in one run: libtorrent -> our leecher, our seeder ->
# libtorrent, and libtorrent -> libtorrent, same torrent (256 KiB pieces, v1, made by
# our make-torrent), in plaintext and with RC4 forced. libtorrent side
# (crates/bittorrent/tests/interop/lt_peer.py --fast): TCP only, no
# DHT/LSD/UPnP/NAT-PMP, unchoke_slots_limit=-1, send-buffer watermarks from
# lt.high_performance_seed(), max_out_request_queue=1500.
#   plain: libtorrent --encryption plain (outgoing plaintext, incoming both), ours
#          --encryption disabled: plaintext handshake and stream both ways.
#   rc4:   libtorrent --encryption rc4 (MSE forced both ways, RC4 only), ours
#          --encryption forced (MSE, RC4 only): the whole stream is RC4.
# Usage: bench/peer_bench.sh [SIZE_MIB] [RUNS] [MODES]   (MODES: "plain rc4")
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-256}
RUNS=${2:-3}
MODES=${3:-plain rc4}
LT=crates/bittorrent/tests/interop/lt_peer.py
cargo build -q --release --example peer
BIN=${CARGO_TARGET_DIR:-target}/release/examples/peer
W=$(mktemp -d /tmp/peer-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$W/payload.bin"
"$BIN" make-torrent --data "$W/payload.bin" --piece-length 262144 --out "$W/t.torrent" 2>/dev/null
mkdir -p "$W/seed" && cp "$W/payload.bin" "$W/seed/"

wait_addr() { # file -> prints IP:PORT once the line appears (max 60 s)
    for _ in $(seq 600); do
        if grep -q "listening on" "$1" 2>/dev/null; then
            sed -n 's/^listening on //p' "$1" | head -1; return 0
        fi
        sleep 0.1
    done
    echo "no listening line in $1" >&2; return 1
}

for mode in $MODES; do
    case $mode in
        plain) OURS_ENC=disabled; LT_ENC=plain ;;
        rc4) OURS_ENC=forced; LT_ENC=rc4 ;;
        *) echo "unknown mode $mode"; exit 2 ;;
    esac
    for run in $(seq "$RUNS"); do
        # 1. libtorrent seeds, our leecher downloads.
        python3 "$LT" seed --fast --encryption "$LT_ENC" --timeout 120 --torrent "$W/t.torrent" \
            --save-dir "$W/seed" > "$W/lts.out" 2>/dev/null &
        LTS=$!
        ADDR=$(wait_addr "$W/lts.out")
        rm -f "$W/ours.bin"
        T0=$(date +%s.%N)
        "$BIN" leech --encryption "$OURS_ENC" --torrent "$W/t.torrent" --out "$W/ours.bin" \
            --peer "$ADDR" 2> "$W/leech.err"
        T1=$(date +%s.%N)
        cmp -s "$W/payload.bin" "$W/ours.bin" || { echo "lt->ours: file differs"; exit 1; }
        echo "$mode run $run  libtorrent -> ours       : $(echo "$T1 - $T0" | bc) s (process wall time); $(grep -o 'in [0-9.]* s ([0-9.]* MiB/s)' "$W/leech.err")"

        # 3. libtorrent -> libtorrent (the seeder above is still up).
        rm -rf "$W/lt2" && mkdir -p "$W/lt2"
        OUT=$(python3 "$LT" leech --fast --encryption "$LT_ENC" --timeout 120 --torrent "$W/t.torrent" \
            --save-dir "$W/lt2" --peer "$ADDR" 2>/dev/null)
        cmp -s "$W/payload.bin" "$W/lt2/payload.bin" || { echo "lt->lt: file differs"; exit 1; }
        echo "$mode run $run  libtorrent -> libtorrent : $OUT (from connect_peer to seeding)"
        kill $LTS; wait $LTS 2>/dev/null || true

        # 2. our seeder, libtorrent leecher.
        "$BIN" seed --encryption "$OURS_ENC" --torrent "$W/t.torrent" --data "$W/payload.bin" \
            --listen 127.0.0.1:0 > "$W/ours.out" 2> "$W/seed.err" &
        OURS=$!
        ADDR=$(wait_addr "$W/ours.out")
        for _ in $(seq 600); do grep -q seeding "$W/seed.err" && break; sleep 0.1; done
        rm -rf "$W/lt1" && mkdir -p "$W/lt1"
        OUT=$(python3 "$LT" leech --fast --encryption "$LT_ENC" --timeout 120 --torrent "$W/t.torrent" \
            --save-dir "$W/lt1" --peer "$ADDR" 2>/dev/null)
        cmp -s "$W/payload.bin" "$W/lt1/payload.bin" || { echo "ours->lt: file differs"; exit 1; }
        echo "$mode run $run  ours -> libtorrent       : $OUT (from connect_peer to seeding)"
        if [ "$mode" = rc4 ]; then
            grep -q "encrypted handshake done (RC4)" "$W/seed.err" || { echo "ours->lt: not RC4"; exit 1; }
        fi
        kill -TERM $OURS; wait $OURS 2>/dev/null || true
    done
done
