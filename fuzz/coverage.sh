#!/usr/bin/env bash
# Line and region coverage each fuzz target reaches in the code it is for, over
# its committed corpus plus what campaigns found (`runs/TARGET`):
#
#   fuzz/coverage.sh [TARGET...]
#
# Needs `rustup component add llvm-tools-preview`. Builds the targets with
# coverage instrumentation (`cargo fuzz coverage`), runs every input once, and
# prints `| target | file | lines | regions | functions |` rows from `llvm-cov
# report`, counting only the module(s) under test (their unit tests are not built).
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1 CARGO_TERM_COLOR=never

declare -A FILE=(
    [bencode]=crates/bittorrent/src/bencode.rs
    [metainfo]=crates/bittorrent/src/metainfo.rs
    [metainfo_build]=crates/bittorrent/src/metainfo.rs
    [tracker_response]=crates/bittorrent/src/tracker.rs
    [tracker_roundtrip]=crates/bittorrent/src/tracker.rs
    [tracker_request]=crates/bittorrent/src/tracker.rs
    [wire_message]=crates/bittorrent/src/wire.rs
    [wire_handshake]=crates/bittorrent/src/wire.rs
    [picker]=crates/bittorrent/src/picker.rs
    [peer_manager]=crates/bittorrent/src/peers.rs
    [blame]=crates/bittorrent/src/blame.rs
    [socks5_server]=crates/proxy/src/socks5.rs
    [socks5_roundtrip]=crates/proxy/src/socks5.rs
    [proxy_rules]="crates/proxy/src/rules.rs crates/proxy/src/cidr.rs"
    [relay_proto]=crates/relay/src/proto.rs
    [relay_table]=crates/relay/src/table.rs
    [discovery_proto]=crates/discovery/src/proto.rs
    [discovery_table]=crates/discovery/src/table.rs
    [framing]=crates/reactor/src/framing.rs
    [mse]=crates/bittorrent/src/mse.rs
    [metadata]=crates/bittorrent/src/metadata.rs
    [pex]=crates/bittorrent/src/pex.rs
    [magnet]=crates/bittorrent/src/magnet.rs
    [proxy_protocol]=crates/proxy/src/proxy_protocol.rs
    [socks5_udp]=crates/proxy/src/socks5_udp.rs
    [proxy_session]=crates/proxy/src/session/state.rs
    [pipe]=crates/reactor/src/pipe.rs
    [relay_setup]=crates/relay/src/setup.rs
    [ext_handshake]=crates/bittorrent/src/ext_handshake.rs
    [udp_association]=crates/proxy/src/udp.rs
)
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
sysroot=$(rustc --print sysroot)
cov=$(find "$sysroot" -name llvm-cov -type f | head -1)
[ -x "$cov" ] || { echo "llvm-cov not found: rustup component add llvm-tools-preview" >&2; exit 1; }

echo "| target | file | lines | regions | functions |"
echo "|---|---|---:|---:|---:|"
for t in "${targets[@]}"; do
    file=${FILE[$t]:-}
    [ -n "$file" ] || { echo "no file listed for $t" >&2; continue; }
    all=$(mktemp -d)
    cp corpus/"$t"/* "$all"/ 2>/dev/null || true
    cp runs/"$t"/* "$all"/ 2>/dev/null || true
    nice -n 10 cargo fuzz coverage --sanitizer none "$t" "$all" > "logs/$t.coverage.log" 2>&1
    rm -rf "$all"
    bin=target/x86_64-unknown-linux-gnu/coverage/x86_64-unknown-linux-gnu/release/$t
    # TOTAL row of the report restricted to the module: lines, regions, functions.
    srcs=()
    for f in $file; do srcs+=("../$f"); done
    row=$("$cov" report "$bin" -instr-profile="coverage/$t/coverage.profdata" "${srcs[@]}" | tail -1)
    read -r _ regions missed_r pct_r funcs missed_f pct_f lines missed_l pct_l _ <<< "$row"
    printf '| %s | `%s` | %s of %s (%s) | %s of %s (%s) | %s of %s (%s) |\n' "$t" "$file" \
        $((lines - missed_l)) "$lines" "$pct_l" $((regions - missed_r)) "$regions" "$pct_r" \
        $((funcs - missed_f)) "$funcs" "$pct_f"
done
