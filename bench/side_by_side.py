#!/usr/bin/env python3
"""Side-by-side benchmark: the reactor's echo server against tokio and asyncore, with
a plain C epoll echo server as the floor.

    python3 bench/side_by_side.py [--rounds 3] [--duration 5] [--warmup 1]

One command: builds the examples in release mode, then runs interleaved rounds of
every scenario against every server (a fresh server process per run), each server
pinned to CPU 0 and the load generator (crates/examples/src/bin/loadgen.rs) to CPU 1 when there are
two or more CPUs. For every server and scenario it reports the rate, latency p50/p99,
the server's user-mode and total CPU time per message over the measured window
(sampled by loadgen from /proc/PID/stat), and its peak RSS (VmHWM); medians over the
rounds and ratios against tokio. `c-epoll` (bench/c_epoll_echo.c, built here with
the system C compiler, skipped with a message without one) shows what any server
pays: its user-mode CPU per message is almost all the system-call boundary. Then it
measures the memory of 10,000 idle
connections per server and the scaling of `echo --threads 1` vs `--threads 2`.

Writes docs/bench_results.csv (every run), docs/bench_summary.csv (medians, ratios)
and docs/bench_chart.svg (drawn here, no plotting library needed). Only loopback
addresses are used. Everything is bounded: each loadgen run has a fixed duration, and
every wait has a timeout.
"""

import argparse
import csv
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")

# name, loadgen arguments
SCENARIOS = [
    ("pipeline", ["--mode", "pipeline", "--connections", "100", "--size", "64", "--pipeline", "16"]),
    ("rr", ["--mode", "rr", "--connections", "50", "--size", "64"]),
    ("bulk", ["--mode", "bulk", "--connections", "4", "--size", "65536", "--pipeline", "4"]),
    ("churn", ["--mode", "churn", "--connections", "50", "--size", "64"]),
]

# The reactor's read buffer: Config::buffer_size (64 KiB). `tokio-same` uses it, so
# when it equals tokio's 64 KiB default the two tokio variants coincide and run once.
REACTOR_BUF = 64 * 1024
TOKIO_DEFAULT_BUF = 64 * 1024

IDLE_CONNS = 10_000


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def target_dir():
    env = os.environ.get("CARGO_TARGET_DIR")
    if env:
        return env
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["target_directory"]


def build():
    log("building release examples (echo, tokio_echo, tokio_tls_echo, loadgen)...")
    subprocess.run(["cargo", "build", "--release", "--example", "echo", "--example",
                    "tokio_echo", "--example", "tokio_tls_echo", "--example", "loadgen"],
                   cwd=ROOT, check=True)
    return os.path.join(target_dir(), "release", "examples")


def tls_servers(bins, certs, key_kind):
    """The TLS comparison: our echo with --tls-cert and tokio + tokio-rustls with the
    very same rustls configuration (reactor_tls::ServerTls) and certificate."""
    cert = os.path.join(certs, f"server-{key_kind}.pem")
    key = os.path.join(certs, f"server-{key_kind}.key")
    tls = ["--tls-cert", cert, "--tls-key", key]
    return [("reactor", [os.path.join(bins, "echo"), "--listen", "127.0.0.1:0",
                         "--idle-timeout", "3600"] + tls),
            ("tokio", [os.path.join(bins, "tokio_tls_echo"), "--listen", "127.0.0.1:0",
                       "--buf-size", str(TOKIO_DEFAULT_BUF)] + tls)]


def build_c(bins):
    """Compiles bench/c_epoll_echo.c next to the examples; None without a compiler."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not cc:
        return None
    out = os.path.join(bins, "c_epoll_echo")
    src = os.path.join(ROOT, "bench", "c_epoll_echo.c")
    r = subprocess.run([cc, "-O2", "-o", out, src], capture_output=True, text=True)
    if r.returncode != 0:
        log(f"cannot build {src}: {r.stderr.strip()}")
        return None
    return out


def has_asyncore():
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", "import asyncore"],
                       capture_output=True)
    return r.returncode == 0


def raise_fd_limit(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n if hard == resource.RLIM_INFINITY else min(n, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Server:
    """A server child process that prints `listening on IP:PORT` first."""

    def __init__(self, name, argv, cpu):
        self.name = name
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []

        def pre():
            # Enough descriptors for the idle-connection measurement.
            raise_fd_limit(IDLE_CONNS + 1024)

        self.proc = subprocess.Popen(pin + argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                     preexec_fn=pre, text=True)
        line = self._readline(20.0)
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"{name}: unexpected first line {line!r}")
        self.addr = line.strip()[len("listening on "):]
        self.pid = self.proc.pid  # taskset execs the server: same pid

    def _readline(self, timeout):
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            self.stop()
            raise RuntimeError(f"{self.name}: no `listening on` line in {timeout} s")
        return self.proc.stdout.readline()

    def status(self, field):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def servers(bins, asyncore_ok, c_echo):
    s = [("reactor", [os.path.join(bins, "echo"), "--listen", "127.0.0.1:0",
                      "--idle-timeout", "3600"]),
         ("tokio", [os.path.join(bins, "tokio_echo"), "--listen", "127.0.0.1:0",
                    "--buf-size", str(TOKIO_DEFAULT_BUF)])]
    if REACTOR_BUF != TOKIO_DEFAULT_BUF:
        s.append(("tokio-same-buf", [os.path.join(bins, "tokio_echo"), "--listen",
                                     "127.0.0.1:0", "--buf-size", str(REACTOR_BUF)]))
    if c_echo:
        s.append(("c-epoll", [c_echo, "--listen", "127.0.0.1:0"]))
    if asyncore_ok:
        s.append(("asyncore", [sys.executable, "-W", "ignore",
                               os.path.join(ROOT, "bench", "asyncore_echo.py"),
                               "--listen", "127.0.0.1:0"]))
    return s


def parse_result(out):
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return {k: v for k, v in (f.split("=", 1) for f in line.split()[1:])}
    return None


def run_one(bins, name, argv, scen, sargs, pin, duration, warmup):
    srv = Server(name, argv, 0 if pin else None)
    try:
        cmd = (["taskset", "-c", "1"] if pin else []) + [
            os.path.join(bins, "loadgen"), "--target", srv.addr, "--duration", str(duration),
            "--warmup", str(warmup), "--server-pid", str(srv.pid)] + sargs
        r = subprocess.run(cmd, capture_output=True, text=True,
                           timeout=duration + warmup + 60)
        res = parse_result(r.stdout)
        if r.returncode != 0 or res is None:
            log(f"  {name}/{scen}: loadgen failed (exit {r.returncode}): "
                f"{r.stderr.strip().splitlines()[-3:]}")
            return None
        return res
    finally:
        srv.stop()


def num(d, k):
    try:
        return float(d[k])
    except (KeyError, ValueError, TypeError):
        return float("nan")


def median(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def idle_memory(bins, name, argv, pin):
    """RSS growth of a server per idle connection, over IDLE_CONNS connections."""
    have = raise_fd_limit(IDLE_CONNS + 1024)
    if have < IDLE_CONNS + 100:
        log(f"  idle: only {have} file descriptors; skipped")
        return None
    srv = Server(name, argv, 0 if pin else None)
    socks = []
    try:
        host, port = srv.addr.rsplit(":", 1)
        addr = (host.strip("[]"), int(port))
        # One exchange on a first connection, so buffers the server keeps for reuse
        # exist before the baseline is read.
        warm = socket.create_connection(addr, timeout=5)
        warm.sendall(b"x")
        warm.recv(1)
        time.sleep(0.3)
        before = srv.status("VmRSS")
        for i in range(IDLE_CONNS):
            s = socket.create_connection(addr, timeout=5)
            # One byte each way, one connection at a time: the server has really set
            # the connection up, and at most one buffer is in use at any moment.
            s.sendall(b"i")
            if s.recv(1) != b"i":
                raise RuntimeError(f"{name}: bad echo on idle connection {i}")
            socks.append(s)
        time.sleep(1.0)
        after = srv.status("VmRSS")
        alive = srv.proc.poll() is None
        warm.close()
        return {"server": name, "connections": len(socks), "rss_before_kb": before,
                "rss_after_kb": after, "alive": alive,
                "bytes_per_conn": (after - before) * 1024 / len(socks)}
    finally:
        for s in socks:
            s.close()
        srv.stop()


def scaling(bins, rounds, duration, warmup):
    """echo --threads 1 vs 2, unpinned (the server may use both CPUs, shared with the
    load generator), pipeline scenario."""
    rows = []
    sargs = SCENARIOS[0][1]
    for r in range(rounds):
        for t in (1, 2) if r % 2 == 0 else (2, 1):
            argv = [os.path.join(bins, "echo"), "--listen", "127.0.0.1:0", "--threads", str(t),
                    "--idle-timeout", "3600"]
            res = run_one(bins, f"reactor-threads-{t}", argv, "pipeline", sargs, False,
                          duration, warmup)
            if res:
                rows.append({"threads": t, "round": r, **res})
                log(f"  threads={t} round {r}: {float(res['msgs_per_s']):,.0f} msg/s")
    return rows


def svg_chart(summary, names, path):
    """Grouped bars, one panel per metric, values relative to tokio (= 1.0)."""
    metrics = [("rate", "rate (msg/s; MB/s for bulk; conn/s for churn)"),
               ("user_ns_per_msg", "server user CPU per message"),
               ("total_ns_per_msg", "server total CPU per message"),
               ("p99_us", "p99 latency")]
    scen = [s for s, _ in SCENARIOS]
    colors = {"reactor": "#2b7bb9", "tokio": "#e8772e", "tokio-same-buf": "#f2b134",
              "asyncore": "#6aa84f", "c-epoll": "#888888"}
    pw, ph, top, left = 440, 250, 40, 50
    cols = 2
    rows = (len(metrics) + cols - 1) // cols
    W, H = cols * pw + 20, rows * (ph + top) + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="10" y="18" font-size="14" font-weight="bold">reactor vs tokio '
           f'current_thread vs asyncore (c-epoll: the floor): medians, relative to '
           f'tokio (1.0 = tokio; lower is better except rate)</text>']
    for lx, n in enumerate(names):
        out.append(f'<rect x="{10 + lx * 130}" y="28" width="12" height="12" '
                   f'fill="{colors.get(n, "#999")}"/>'
                   f'<text x="{26 + lx * 130}" y="38">{n}</text>')
    for i, (key, title) in enumerate(metrics):
        ox = 10 + (i % cols) * pw
        oy = 50 + (i // cols) * (ph + top)
        out.append(f'<text x="{ox}" y="{oy + 14}" font-weight="bold">{title}</text>')
        vals = {}
        for s in scen:
            base = summary.get(("tokio", s), {}).get(key, float("nan"))
            for n in names:
                v = summary.get((n, s), {}).get(key, float("nan"))
                vals[(n, s)] = (v / base if base and base == base and v == v else
                                float("nan"), v)
        ymax = max([r for r, _ in vals.values() if r == r] + [1.0])
        ymax = min(ymax * 1.15, 6.0)
        px0, py0 = ox + left, oy + 24
        pwid, phgt = pw - left - 20, ph - 50
        y = lambda r: py0 + phgt - min(r, ymax) / ymax * phgt  # noqa: E731
        out.append(f'<line x1="{px0}" y1="{py0 + phgt}" x2="{px0 + pwid}" '
                   f'y2="{py0 + phgt}" stroke="black"/>')
        out.append(f'<line x1="{px0}" y1="{py0}" x2="{px0}" y2="{py0 + phgt}" '
                   f'stroke="black"/>')
        for t in (0.5, 1.0, 2.0, 4.0):
            if t <= ymax:
                out.append(f'<line x1="{px0}" y1="{y(t):.1f}" x2="{px0 + pwid}" '
                           f'y2="{y(t):.1f}" stroke="#ccc" '
                           f'stroke-dasharray="{"" if t == 1.0 else "3,3"}"/>'
                           f'<text x="{px0 - 28}" y="{y(t) + 4:.1f}">{t:g}x</text>')
        gw = pwid / len(scen)
        bw = (gw - 16) / max(len(names), 1)
        for si, s in enumerate(scen):
            gx = px0 + si * gw + 8
            out.append(f'<text x="{gx + (gw - 16) / 2:.1f}" y="{py0 + phgt + 14}" '
                       f'text-anchor="middle">{s}</text>')
            for ni, n in enumerate(names):
                r, v = vals[(n, s)]
                if r != r:
                    continue
                bx = gx + ni * bw
                out.append(f'<rect x="{bx:.1f}" y="{y(r):.1f}" width="{bw - 2:.1f}" '
                           f'height="{py0 + phgt - y(r):.1f}" '
                           f'fill="{colors.get(n, "#999")}"/>')
                out.append(f'<text x="{bx + (bw - 2) / 2:.1f}" y="{y(r) - 3:.1f}" '
                           f'text-anchor="middle" font-size="9">{r:.2f}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    p = argparse.ArgumentParser(description="reactor vs tokio vs asyncore echo benchmark")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0,
                   help="measured seconds per run (>= 5 for 10 ms CPU ticks)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--scenarios", default=",".join(s for s, _ in SCENARIOS),
                   help="comma-separated subset of pipeline,rr,bulk,churn")
    p.add_argument("--no-idle", action="store_true", help="skip the 10,000 idle connections")
    p.add_argument("--no-scaling", action="store_true", help="skip --threads 1 vs 2")
    p.add_argument("--skip-build", action="store_true")
    p.add_argument("--out", default=DOCS, help="directory for the CSV files and the chart")
    p.add_argument("--tls", choices=["ec", "rsa"],
                   help="TLS instead: our echo --tls-cert against tokio-rustls, with an "
                        "ECDSA P-256 or RSA-2048 certificate (files named bench_tls_*)")
    a = p.parse_args()
    if not (1 <= a.rounds <= 20 and 0.5 <= a.duration <= 120 and 0 <= a.warmup <= 30):
        p.error("--rounds 1..20, --duration 0.5..120, --warmup 0..30")
    wanted = set(a.scenarios.split(","))
    scenarios = [s for s in SCENARIOS if s[0] in wanted]
    if not scenarios:
        p.error("no known scenario in --scenarios")

    bins = os.path.join(target_dir(), "release", "examples") if a.skip_build else build()
    ncpu = os.cpu_count() or 1
    pin = ncpu >= 2 and shutil.which("taskset") is not None
    log(f"{ncpu} CPUs; " + ("servers on CPU 0, loadgen on CPU 1" if pin else
                           "not pinning (needs 2 CPUs and taskset)"))
    asyncore_ok = has_asyncore()
    if not asyncore_ok:
        log(f"python {sys.version.split()[0]} has no asyncore (removed in 3.12): "
            "asyncore server skipped")
    c_echo = build_c(bins)
    if not c_echo:
        log("no C compiler (cc/gcc): the c-epoll floor is skipped")
    prefix = "bench_"
    if a.tls:
        import tempfile
        certs = tempfile.mkdtemp(prefix="reactor-tls-bench-")
        subprocess.run([os.path.join(ROOT, "bench", "tls_certs.sh"), certs], check=True,
                       capture_output=True)
        srvs = tls_servers(bins, certs, a.tls)
        scenarios = [(s, args + ["--tls", "--ca", os.path.join(certs, "ca.pem")])
                     for s, args in scenarios]
        prefix = f"bench_tls_{a.tls}_"
        a.no_idle = a.no_scaling = True
        log(f"TLS ({a.tls} certificate): reactor echo vs tokio-rustls, same rustls config")
    else:
        srvs = servers(bins, asyncore_ok, c_echo)
    names = [n for n, _ in srvs]

    rows = []
    for r in range(a.rounds):
        for scen, sargs in scenarios:
            # Interleave: rotate the server order every round.
            order = srvs[r % len(srvs):] + srvs[:r % len(srvs)]
            for name, argv in order:
                res = run_one(bins, name, argv, scen, sargs, pin, a.duration, a.warmup)
                if res is None:
                    rows.append({"round": r, "scenario": scen, "server": name, "ok": 0})
                    continue
                row = {"round": r, "scenario": scen, "server": name, "ok": 1,
                       "msgs_per_s": num(res, "msgs_per_s"), "mb_per_s": num(res, "mb_per_s"),
                       "conns_per_s": num(res, "conns_per_s"),
                       "p50_us": num(res, "p50_us"), "p99_us": num(res, "p99_us"),
                       "p999_us": num(res, "p999_us"),
                       "user_ns_per_msg": num(res, "server_user_ns_per_msg"),
                       "total_ns_per_msg": num(res, "server_total_ns_per_msg"),
                       "utime_ticks": num(res, "server_utime_ticks"),
                       "stime_ticks": num(res, "server_stime_ticks"),
                       "hwm_kb": num(res, "server_hwm_kb"), "errors": num(res, "errors")}
                rows.append(row)
                log(f"round {r} {scen:8} {name:14} {row['msgs_per_s']:>11,.0f} msg/s "
                    f"{row['mb_per_s']:>9.1f} MB/s  user {row['user_ns_per_msg']:7.0f} ns/msg "
                    f"total {row['total_ns_per_msg']:7.0f} ns/msg  p99 {row['p99_us']:.0f} us")

    os.makedirs(a.out, exist_ok=True)
    fields = ["round", "scenario", "server", "ok", "msgs_per_s", "mb_per_s", "conns_per_s",
              "p50_us", "p99_us", "p999_us", "user_ns_per_msg", "total_ns_per_msg",
              "utime_ticks", "stime_ticks", "hwm_kb", "errors"]
    with open(os.path.join(a.out, prefix + "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)

    # Medians and ratios.
    summary = {}
    for scen, _ in scenarios:
        for n in names:
            got = [x for x in rows if x["scenario"] == scen and x["server"] == n and x["ok"]]
            if not got:
                continue
            m = {k: median([x[k] for x in got]) for k in fields[4:] if k != "errors"}
            m["rate"] = (m["mb_per_s"] if scen == "bulk" else
                         m["conns_per_s"] if scen == "churn" else m["msgs_per_s"])
            m["runs"] = len(got)
            summary[(n, scen)] = m

    print()
    print(f"medians over {a.rounds} round(s), {a.duration:g} s each; ratio = server / tokio")
    hdr = (f"{'scenario':9} {'server':14} {'rate':>12} {'x tok':>6} {'p50 us':>8} "
           f"{'p99 us':>8} {'x tok':>6} {'user ns/m':>10} {'x tok':>6} {'total ns/m':>10} "
           f"{'x tok':>6} {'peak RSS':>9}")
    print(hdr)
    print("-" * len(hdr))
    summary_rows = []
    for scen, _ in scenarios:
        t = summary.get(("tokio", scen))
        for n in names:
            m = summary.get((n, scen))
            if not m:
                print(f"{scen:9} {n:14} (no successful run)")
                continue

            def ratio(k):
                return m[k] / t[k] if t and t[k] else float("nan")
            unit = " MB/s" if scen == "bulk" else " c/s" if scen == "churn" else " m/s"
            print(f"{scen:9} {n:14} {m['rate']:>8,.0f}{unit:>4} {ratio('rate'):6.2f} "
                  f"{m['p50_us']:8.0f} {m['p99_us']:8.0f} {ratio('p99_us'):6.2f} "
                  f"{m['user_ns_per_msg']:10.0f} {ratio('user_ns_per_msg'):6.2f} "
                  f"{m['total_ns_per_msg']:10.0f} {ratio('total_ns_per_msg'):6.2f} "
                  f"{m['hwm_kb']:>6.0f} KiB")
            summary_rows.append({"scenario": scen, "server": n, "runs": m["runs"],
                                 "rate": round(m["rate"], 3),
                                 "rate_vs_tokio": round(ratio("rate"), 3),
                                 "p50_us": m["p50_us"], "p99_us": m["p99_us"],
                                 "p99_vs_tokio": round(ratio("p99_us"), 3),
                                 "user_ns_per_msg": round(m["user_ns_per_msg"], 1),
                                 "user_vs_tokio": round(ratio("user_ns_per_msg"), 3),
                                 "total_ns_per_msg": round(m["total_ns_per_msg"], 1),
                                 "total_vs_tokio": round(ratio("total_ns_per_msg"), 3),
                                 "peak_rss_kb": m["hwm_kb"]})
    with open(os.path.join(a.out, prefix + "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary_rows[0].keys()) if summary_rows else ["none"])
        w.writeheader()
        w.writerows(summary_rows)
    svg_chart(summary, names, os.path.join(a.out, prefix + "chart.svg"))

    idle = []
    if not a.no_idle:
        print()
        print(f"{IDLE_CONNS} idle connections (RSS growth of the server):")
        for name, argv in srvs:
            res = idle_memory(bins, name, argv, pin)
            if res:
                idle.append(res)
                print(f"  {name:14} {res['rss_before_kb']:>8} KiB -> {res['rss_after_kb']:>8} KiB"
                      f"  = {res['bytes_per_conn']:7.0f} B per connection"
                      f"{'' if res['alive'] else '  (server died!)'}")
        with open(os.path.join(a.out, "bench_idle.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["server", "connections", "rss_before_kb",
                                              "rss_after_kb", "bytes_per_conn", "alive"])
            w.writeheader()
            w.writerows(idle)

    scal = []
    if not a.no_scaling:
        print()
        print("echo --threads 1 vs 2 (unpinned, pipeline scenario):")
        scal = scaling(bins, a.rounds, a.duration, a.warmup)
        for t in (1, 2):
            got = [x for x in scal if x["threads"] == t]
            if got:
                print(f"  threads={t}: median {median([num(x, 'msgs_per_s') for x in got]):,.0f}"
                      f" msg/s, total CPU {median([num(x, 'server_total_ns_per_msg') for x in got]):.0f}"
                      f" ns/msg, p99 {median([num(x, 'p99_us') for x in got]):.0f} us")
        with open(os.path.join(a.out, "bench_scaling.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["threads", "round", "msgs_per_s", "p50_us",
                                              "p99_us", "server_user_ns_per_msg",
                                              "server_total_ns_per_msg"],
                               extrasaction="ignore")
            w.writeheader()
            w.writerows(scal)

    # Targets from the issue (reactor vs tokio).
    print()
    print("targets (reactor vs tokio current_thread):")

    def chk(label, ok, detail):
        state = "n/a" if ok is None else ("met" if ok else "MISSED")
        print(f"  [{state:6}] {label}: {detail}")

    def get(n, s, k):
        return summary.get((n, s), {}).get(k, float("nan"))
    for s in ("pipeline", "rr"):
        u = get("reactor", s, "user_ns_per_msg") / get("tokio", s, "user_ns_per_msg")
        t = get("reactor", s, "total_ns_per_msg") / get("tokio", s, "total_ns_per_msg")
        p = get("reactor", s, "p99_us") / get("tokio", s, "p99_us")
        chk(f"{s} user CPU/msg <= 0.5x", None if u != u else u <= 0.5, f"{u:.2f}x")
        chk(f"{s} total CPU/msg <= 1.05x", None if t != t else t <= 1.05, f"{t:.2f}x")
        chk(f"{s} p99 no worse", None if p != p else p <= 1.0, f"{p:.2f}x")
    b = get("reactor", "bulk", "mb_per_s") / get("tokio", "bulk", "mb_per_s")
    chk("bulk MB/s >= 3x tokio (64 KiB buffer)", None if b != b else b >= 3.0, f"{b:.2f}x")
    chk("bulk MB/s >= tokio with our buffer size", None if b != b else b >= 1.0,
        f"{b:.2f}x (our read buffer is {REACTOR_BUF // 1024} KiB, the same as tokio's here)")
    c = get("reactor", "churn", "conns_per_s") / get("tokio", "churn", "conns_per_s")
    chk("churn conn/s >= tokio", None if c != c else c >= 1.0, f"{c:.2f}x")
    ours = [x for x in idle if x["server"] == "reactor"]
    if ours:
        chk("10,000 idle connections <= 2 KiB each", ours[0]["bytes_per_conn"] <= 2048,
            f"{ours[0]['bytes_per_conn']:.0f} B")
    print(f"\nwrote {a.out}/{prefix}results.csv, {prefix}summary.csv, {prefix}chart.svg"
          + (", bench_idle.csv" if idle else "") + (", bench_scaling.csv" if scal else ""))


if __name__ == "__main__":
    main()
