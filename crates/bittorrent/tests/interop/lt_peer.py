#!/usr/bin/env python3
"""A libtorrent peer for interop tests and benchmarks, isolated on 127.0.0.1.

    lt_peer.py seed  --torrent T --save-dir DIR [--timeout SECS] [--peer IP:PORT]
        prints "listening on 127.0.0.1:PORT" once the data is checked, then seeds
        until it is killed or the timeout passes (dialling --peer, if given).
    lt_peer.py leech --torrent T --save-dir DIR --peer IP:PORT [--timeout SECS]
        downloads from that peer; exits 0 when complete, 1 on timeout.
    lt_peer.py leech --magnet URI ...
        the same from a magnet link: the metadata comes from the peer (BEP 9).

DHT, LSD, UPnP and NAT-PMP are off, TCP only. Encryption (--encryption):
    plain   outgoing off, incoming plaintext accepted (the default; see
            /work/shared/notes/libtorrent-on-loopback.md)
    forced  MSE required both ways (out_enc_policy = in_enc_policy = forced),
            payload either RC4 or plaintext (allowed_enc_level both)
    rc4     forced, and RC4 for the whole stream (allowed_enc_level rc4)
"""
import argparse
import os
import sys
import time

try:
    import libtorrent as lt
except ImportError as e:  # the Rust test decides whether this is a skip or a failure
    print(f"cannot import libtorrent: {e}", file=sys.stderr)
    sys.exit(3)


ENC = {
    "plain": {"out_enc_policy": 2, "in_enc_policy": 1},
    "forced": {"out_enc_policy": 0, "in_enc_policy": 0, "allowed_enc_level": 3},
    "rc4": {"out_enc_policy": 0, "in_enc_policy": 0, "allowed_enc_level": 2},
}


def session(fast, encryption):
    s = {
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        "no_connect_privileged_ports": False,
        "alert_mask": lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification,
    }
    s.update(ENC[encryption])
    if fast:
        hp = lt.high_performance_seed()
        for k in ("send_buffer_watermark", "send_buffer_low_watermark",
                  "send_buffer_watermark_factor"):
            if k in hp:
                s[k] = hp[k]
        s["unchoke_slots_limit"] = -1
        s["max_out_request_queue"] = 1500
    return lt.session(s)


def wait_state(ses, h, done, deadline, label):
    last = 0.0
    while time.time() < deadline:
        st = h.status()
        if done(st):
            return True
        for a in ses.pop_alerts():
            if a.category() & lt.alert.category_t.error_notification:
                print(f"{label}: {a.message()}", file=sys.stderr)
        if time.time() - last > 1.0:
            last = time.time()
            print(f"{label}: {st.state} {st.progress * 100:.1f}% peers={st.num_peers}",
                  file=sys.stderr)
        time.sleep(0.02)
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["seed", "leech"])
    ap.add_argument("--torrent")
    ap.add_argument("--magnet")
    ap.add_argument("--save-dir", required=True)
    ap.add_argument("--peer")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--fast", action="store_true",
                    help="high-performance settings (benchmarks)")
    ap.add_argument("--encryption", choices=sorted(ENC), default="plain")
    args = ap.parse_args()
    deadline = time.time() + args.timeout
    ses = session(args.fast, args.encryption)
    if args.magnet:
        p = lt.parse_magnet_uri(args.magnet)
    else:
        p = lt.add_torrent_params()
        p.ti = lt.torrent_info(args.torrent)
    p.save_path = args.save_dir
    h = ses.add_torrent(p)
    if args.mode == "seed":
        ok = wait_state(ses, h, lambda st: st.is_seeding, deadline, "lt-seed")
        if not ok:
            print("lt-seed: data check did not finish", file=sys.stderr)
            return 1
        print(f"listening on 127.0.0.1:{ses.listen_port()}", flush=True)
        if args.peer:
            # Dial a leecher that will not dial loopback peers itself (Transmission).
            host, port = args.peer.rsplit(":", 1)
            h.connect_peer((host, int(port)))
        # Seed until killed (or the timeout passes), reporting errors.
        while time.time() < deadline:
            for a in ses.pop_alerts():
                if a.category() & lt.alert.category_t.error_notification:
                    print(f"lt-seed: {a.message()}", file=sys.stderr)
            time.sleep(0.1)
        return 0
    host, port = args.peer.rsplit(":", 1)
    start = time.time()
    h.connect_peer((host, int(port)))
    # Re-offer the peer now and then: a refused first attempt must not end the test.
    def finished(st):
        if st.num_peers == 0 and int(time.time() - start) % 2 == 0:
            h.connect_peer((host, int(port)))
        return st.is_seeding
    ok = wait_state(ses, h, finished, deadline, "lt-leech")
    if not ok:
        print(f"lt-leech: not complete after {args.timeout} s", file=sys.stderr)
        return 1
    elapsed = time.time() - start
    # Make sure the data reached the files before the test compares them.
    ses.remove_torrent(h)
    end = time.time() + 10
    while time.time() < end:
        if any(isinstance(a, lt.torrent_removed_alert) for a in ses.pop_alerts()):
            break
        time.sleep(0.02)
    del ses
    print(f"complete in {elapsed:.3f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
