#!/usr/bin/env python3
"""A libtorrent seed for the MSE interop tests (crates/bittorrent/tests/mse_libtorrent.rs).

Creates a small v1 torrent with deterministic content in a temporary
directory, seeds it from a libtorrent session listening on 127.0.0.1 only,
with encryption forced in both directions and the given allowed_enc_level,
and prints one line:

    READY <listen port> <info-hash hex> <piece count> <piece length>

Then it reads commands from stdin, one per line:

    connect <port>   make libtorrent connect to 127.0.0.1:<port>

It exits on end of stdin or after --deadline seconds, whichever is first,
so it cannot outlive the test. Peer errors and disconnects are printed to
stderr to explain failures. Loopback only: DHT, LSD, UPnP, NAT-PMP and uTP
are off.
"""

import argparse
import os
import select
import sys
import tempfile
import time

import libtorrent as lt

PIECE_LEN = 16384
TOTAL_LEN = 5 * PIECE_LEN + 1000


def content():
    # Must match `content_byte` in tests/mse_libtorrent.rs.
    return bytes((i * 31 + 7) % 251 for i in range(TOTAL_LEN))


def log(*args):
    print("lt_peer:", *args, file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--enc-level", type=int, choices=[1, 2, 3], required=True)
    ap.add_argument("--prefer-rc4", action="store_true")
    ap.add_argument("--deadline", type=float, default=60.0)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    deadline = time.monotonic() + args.deadline

    with tempfile.TemporaryDirectory(prefix="mse-lt-") as d:
        path = os.path.join(d, "payload.bin")
        with open(path, "wb") as f:
            f.write(content())
        ct = lt.create_torrent(lt.list_files(path), PIECE_LEN, flags=lt.create_torrent.v1_only)
        lt.set_piece_hashes(ct, d)
        ti = lt.torrent_info(ct.generate())

        mask = lt.alert_category.error | lt.alert_category.peer | lt.alert_category.connect
        if args.verbose:
            mask |= lt.alert_category.peer_log
        ses = lt.session(
            {
                "listen_interfaces": "127.0.0.1:0",
                "out_enc_policy": 0,  # forced
                "in_enc_policy": 0,  # forced
                "allowed_enc_level": args.enc_level,
                "prefer_rc4": args.prefer_rc4,
                "enable_dht": False,
                "enable_lsd": False,
                "enable_upnp": False,
                "enable_natpmp": False,
                "enable_outgoing_utp": False,
                "enable_incoming_utp": False,
                "alert_mask": mask,
            }
        )
        atp = lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = d
        h = ses.add_torrent(atp)

        while h.status().state != lt.torrent_status.seeding:
            if time.monotonic() > deadline:
                log("torrent never reached seeding state")
                return 1
            time.sleep(0.02)

        print(
            "READY",
            ses.listen_port(),
            str(ti.info_hashes().v1),
            ti.num_pieces(),
            PIECE_LEN,
            flush=True,
        )

        while time.monotonic() < deadline:
            for a in ses.pop_alerts():
                if args.verbose or isinstance(
                    a, (lt.peer_disconnected_alert, lt.peer_error_alert)
                ):
                    log(type(a).__name__, a.message())
            ready, _, _ = select.select([sys.stdin], [], [], 0.05)
            if not ready:
                continue
            line = sys.stdin.readline()
            if not line:
                break
            cmd = line.split()
            if len(cmd) == 2 and cmd[0] == "connect":
                h.connect_peer(("127.0.0.1", int(cmd[1])))
            else:
                log("unknown command", line.strip())
        # Flush the last alerts so a failing test shows why.
        time.sleep(0.1)
        for a in ses.pop_alerts():
            if isinstance(a, (lt.peer_disconnected_alert, lt.peer_error_alert)):
                log(type(a).__name__, a.message())
    return 0


if __name__ == "__main__":
    sys.exit(main())
