#!/usr/bin/env python3
"""Soak and fault runs of the reactor's echo server and TCP forwarder, on loopback.

    python3 bench/soak.py [all|churn|fds|kill-upstream|kill-client|sigterm]... [--seconds S]

Each run builds nothing (run `cargo build --release --example echo --example
loadgen --example proxy` first, or pass --build), starts the programs it needs on
127.0.0.1 port 0, and prints one Markdown table row per check with PASS or FAIL;
the exit status is non-zero if any check failed. docs/reliability.md has the
results and what each check means.

- churn: `loadgen --mode churn` through echo, then through the forwarder (proxy in
  front of echo), for --seconds each (default 60), with the server's RSS sampled
  every 0.5 s from /proc: at least 100,000 connections, no loadgen error, RSS after
  the warm-up flat within 5 %.
- fds: echo with RLIMIT_NOFILE 128 and 400 clients connecting at once: accepting
  pauses (logged) without spinning (CPU sampled while it is out of descriptors),
  and every client is served once others leave.
- kill-upstream: an upstream streams to a slow client through the forwarder and is
  killed (SIGKILL) mid-transfer: the client still gets every byte the upstream's
  send() had accepted, then end of file; the forwarder holds no socket afterwards.
- kill-client: a client uploads through the forwarder to a slow upstream and is
  killed mid-transfer: the upstream gets every byte the client's send() had
  accepted, then end of file; a client killed while downloading (unread data, so
  its kernel resets) makes the forwarder release both sides; no socket is left.
- sigterm: 50 clients stream through echo, and through the forwarder; SIGTERM
  mid-stream; each client then finishes (half-close) and must get back every byte
  it sent; new connections are refused; the server exits 0 within its drain
  timeout, and with an idle client that never finishes, at the drain timeout.

Loopback only: every address is 127.0.0.1.
"""

import argparse
import os
import random
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "examples")
RESULTS = []


def report(check, ok, detail):
    RESULTS.append((check, ok, detail))
    print(f"| {check} | {'PASS' if ok else 'FAIL'} | {detail} |", flush=True)


# ---------------------------------------------------------------- processes


class Program:
    """A child that prints `listening on IP:PORT` on stdout first."""

    def __init__(self, name, args, nofile=None, env=None):
        def limit():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.err_path = f"/tmp/soak-{name}-{os.getpid()}.err"
        self.err = open(self.err_path, "w+")
        e = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        e.update(env or {})
        self.proc = subprocess.Popen(
            [os.path.join(BIN, name)] + args,
            stdout=subprocess.PIPE,
            stderr=self.err,
            preexec_fn=limit,
            env=e,
        )
        line = self.proc.stdout.readline().decode()
        m = re.match(r"listening on (\S+):(\d+)", line)
        if not m:
            raise RuntimeError(f"{name} did not start: {line!r} {self.log()}")
        self.addr = (m.group(1), int(m.group(2)))
        self.pid = self.proc.pid

    def log(self):
        self.err.flush()
        with open(self.err_path) as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def tcp_sockets(pid):
    """The TCP sockets process `pid` holds, as (state, local, peer), from `ss`."""
    out = subprocess.run(["ss", "-Htanp"], capture_output=True, text=True).stdout
    socks = []
    for line in out.splitlines():
        if f"pid={pid}," in line:
            f = line.split()
            socks.append((f[0], f[3], f[4]))
    return socks


def non_listening(pid):
    return [s for s in tcp_sockets(pid) if s[0] != "LISTEN"]


def wait_until(pred, timeout, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def stream(seed, n):
    """`n` deterministic bytes of stream `seed` (what a peer sends, to check)."""
    return random.Random(seed).randbytes(n)


class Cycle:
    """A client's stream: `PERIOD` random bytes repeated, so an endless stream is
    checked without keeping it."""

    PERIOD = 65537

    def __init__(self, seed):
        b = stream(seed, self.PERIOD)
        self.buf = b + b

    def at(self, pos, n):
        """`n` bytes (at most PERIOD) of the stream from `pos`."""
        start = pos % self.PERIOD
        return self.buf[start:start + min(n, self.PERIOD)]

    def check(self, pos, data):
        done = 0
        while done < len(data):
            want = self.at(pos + done, len(data) - done)
            if data[done:done + len(want)] != want:
                return False
            done += len(want)
        return True


# ---------------------------------------------------------------- churn


def churn(seconds):
    for name in ("echo", "forwarder"):
        echo = Program("echo", ["--listen", "127.0.0.1:0"])
        server, front = echo, echo
        if name == "forwarder":
            front = Program("proxy", ["--listen", "127.0.0.1:0", "--upstream", "%s:%d" % echo.addr])
            server = front
        samples = []
        done = threading.Event()

        def sample():
            t0 = time.monotonic()
            while not done.is_set():
                samples.append((time.monotonic() - t0, rss_kb(server.pid)))
                done.wait(0.5)

        sampler = threading.Thread(target=sample)
        sampler.start()
        warmup = 5.0
        lg = subprocess.run(
            [os.path.join(BIN, "loadgen"), "--target", "%s:%d" % front.addr, "--mode", "churn",
             "--connections", "50", "--size", "64", "--warmup", str(warmup),
             "--duration", str(seconds), "--server-pid", str(server.pid)],
            capture_output=True, text=True)
        done.set()
        sampler.join()
        m = dict(re.findall(r"(\w+)=(\S+)", next((l for l in lg.stdout.splitlines() if l.startswith("RESULT")), "")))
        conns = int(float(m.get("messages", 0)))
        errors = int(m.get("errors", -1))
        # After the warm-up (and 5 s more for pools and caches to settle).
        steady = [kb for t, kb in samples if t >= warmup + 5]
        base = steady[0] if steady else 0
        peak = max(steady) if steady else 0
        growth = (peak - base) / base * 100 if base else 100.0
        ok = lg.returncode == 0 and errors == 0 and conns >= 100_000 and growth <= 5.0
        report(f"churn through {name}", ok,
               f"{conns} connections in {float(m.get('seconds', 0)):.0f} s ({m.get('conns_per_s', '?')}/s), "
               f"errors {errors}; RSS {base} kB after warm-up, peak {peak} kB (+{growth:.1f} %), "
               f"{len(samples)} samples")
        if not ok:
            print(lg.stdout[-2000:], lg.stderr[-2000:], file=sys.stderr)
        left = non_listening(server.pid)
        for p in ([front, echo] if front is not echo else [echo]):
            p.stop()
        report(f"churn through {name}: sockets left", not left, f"{len(left)} non-listening sockets after the run")


# ---------------------------------------------------------------- fds


def fds():
    echo = Program("echo", ["--listen", "127.0.0.1:0"], nofile=128)
    base_fds = fd_count(echo.pid)
    clients = []
    for i in range(400):
        s = socket.create_connection(echo.addr)
        s.setblocking(False)
        clients.append(s)
    msg = lambda i: b"client %d\n" % i
    for i, s in enumerate(clients):
        s.sendall(msg(i))
    got = [b""] * len(clients)
    sel = selectors.DefaultSelector()
    for i, s in enumerate(clients):
        sel.register(s, selectors.EVENT_READ, i)

    def pump(timeout):
        for key, _ in sel.select(timeout):
            i = key.data
            try:
                data = key.fileobj.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            got[i] += data
            if not data or len(got[i]) >= len(msg(i)):
                sel.unregister(key.fileobj)

    end = time.monotonic() + 2
    while time.monotonic() < end:
        pump(0.1)
    served_first = sum(1 for i in range(400) if got[i] == msg(i))
    paused = "pausing accepts" in echo.log()
    # Out of descriptors, with clients waiting: the server must sleep, not spin.
    t0, c0 = time.monotonic(), cpu_ticks(echo.pid)
    while time.monotonic() - t0 < 3:
        pump(0.1)
    spin = (cpu_ticks(echo.pid) - c0) / (time.monotonic() - t0)  # ticks per second
    # The served ones leave; the rest must be served as descriptors free up.
    end = time.monotonic() + 60
    closed = set()
    while time.monotonic() < end and len(closed) < 400:
        for i in range(400):
            if i not in closed and got[i] == msg(i):
                clients[i].close()
                closed.add(i)
        pump(0.1)
    served = sum(1 for i in range(400) if got[i] == msg(i))
    wrong = sum(1 for i in range(400) if got[i] and got[i] != msg(i)[: len(got[i])])
    resumed = "retrying accepts" in echo.log()
    for s in clients:
        s.close()
    wait_until(lambda: fd_count(echo.pid) <= base_fds, 10)
    after = fd_count(echo.pid)
    report("fd exhaustion (ulimit -n 128, 400 clients): pauses", paused and served_first < 400,
           f"{served_first} served before any left; 'pausing accepts' logged: {paused}")
    report("fd exhaustion: no busy loop", spin < 10,
           f"{spin:.1f} CPU ticks/s (1/100 s each) while out of descriptors with clients waiting")
    report("fd exhaustion: service resumes", served == 400 and wrong == 0 and resumed,
           f"{served}/400 clients served, {wrong} wrong echoes; 'retrying accepts' logged: {resumed}; "
           f"descriptors {base_fds} at start, {after} at the end")
    rc = echo.stop()
    report("fd exhaustion: clean exit", rc == 0, f"exit {rc} after SIGTERM")


# ---------------------------------------------------------------- kill upstream / client


def helper(role, port, path, seed):
    """Child-process roles, so they can be SIGKILLed mid-transfer: send stream
    `seed` until killed, writing after each accepted send() how many bytes the
    kernel has taken (to `path`, which a kill cannot roll back)."""
    count = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    cycle = Cycle(seed)
    if role == "upstream-sender":
        lsock = socket.create_server(("127.0.0.1", 0))
        print(lsock.getsockname()[1], flush=True)
        s, _ = lsock.accept()
    else:  # client-sender
        s = socket.create_connection(("127.0.0.1", port))
        print("connected", flush=True)
    sent = 0
    while True:
        sent += s.send(cycle.at(sent, 16384))
        os.pwrite(count, b"%020d" % sent, 0)


def spawn_helper(role, port, path, seed):
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_" + role, str(port), path, str(seed)],
                         stdout=subprocess.PIPE)
    return p, p.stdout.readline().decode().strip()


def read_count(path):
    with open(path, "rb") as f:
        b = f.read().strip()
    return int(b) if b else 0


def slow_then_fast(s, seed, slow_for, timeout=30):
    """Reads stream `seed` from `s`, slowly (2 KiB per 10 ms) for `slow_for` s, then
    as fast as it can until end of file, checking every byte. Returns (bytes,
    intact, seconds of the fast part, how it ended)."""
    cycle = Cycle(seed)
    got, intact = 0, True
    s.settimeout(timeout)
    end_slow = time.monotonic() + slow_for
    t0 = None
    try:
        while True:
            slow = time.monotonic() < end_slow
            if not slow and t0 is None:
                t0 = time.monotonic()
            d = s.recv(2048 if slow else 65536)
            if not d:
                how = "eof"
                break
            intact &= cycle.check(got, d)
            got += len(d)
            if slow:
                time.sleep(0.01)
    except ConnectionResetError:
        how = "reset"
    except socket.timeout:
        how = "timeout"
    return got, intact, time.monotonic() - (t0 or time.monotonic()), how


def kill_upstream():
    path = f"/tmp/soak-count-{os.getpid()}"
    up, port = spawn_helper("upstream-sender", 0, path, 1)
    proxy = Program("proxy", ["--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{port}", "--linger-timeout", "2"])
    base = fd_count(proxy.pid)
    c = socket.create_connection(proxy.addr)
    killer = threading.Timer(1.0, up.kill)
    killer.start()
    got, intact, fast, how = slow_then_fast(c, 1, 2.0)
    killer.join()
    up.wait()
    accepted = read_count(path)
    c.close()
    clean = wait_until(lambda: not non_listening(proxy.pid) and fd_count(proxy.pid) <= base, 10)
    report("upstream killed mid-transfer", intact and got >= accepted and how == "eof",
           f"upstream's send() accepted {accepted} bytes before SIGKILL; client got {got} "
           f"({'intact' if intact else 'CORRUPT'}), then {how} {fast:.2f} s after reading at full speed")
    report("upstream killed: sockets released", clean,
           f"forwarder sockets now {non_listening(proxy.pid)}, descriptors {fd_count(proxy.pid)} (start {base})")
    report("upstream killed: exit", proxy.stop() == 0, "forwarder exits 0 on SIGTERM afterwards")
    os.unlink(path)


def kill_client():
    path = f"/tmp/soak-count-{os.getpid()}"
    lsock = socket.create_server(("127.0.0.1", 0))
    proxy = Program("proxy", ["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:%d" % lsock.getsockname()[1],
                              "--linger-timeout", "2"])
    base = fd_count(proxy.pid)
    result = {}

    def sink():
        s, _ = lsock.accept()
        result["got"], result["intact"], _, result["how"] = slow_then_fast(s, 2, 2.0)
        s.close()

    t = threading.Thread(target=sink)
    t.start()
    cl, _ = spawn_helper("client-sender", proxy.addr[1], path, 2)
    time.sleep(1.0)
    cl.kill()
    cl.wait()
    accepted = read_count(path)
    t.join()
    got, intact = result["got"], result["intact"]
    clean = wait_until(lambda: not non_listening(proxy.pid) and fd_count(proxy.pid) <= base, 10)
    report("client killed mid-upload", intact and got >= accepted and result["how"] == "eof",
           f"client's send() accepted {accepted} bytes before SIGKILL; upstream got {got} "
           f"({'intact' if intact else 'CORRUPT'}), then {result['how']}")
    report("client killed mid-upload: sockets released", clean,
           f"forwarder sockets now {non_listening(proxy.pid)}, descriptors {fd_count(proxy.pid)} (start {base})")

    # Killed while downloading, with unread data: its kernel resets the connection.
    up_done = {}

    def sender():
        s, _ = lsock.accept()
        cycle = Cycle(3)
        sent = 0
        up_done["how"] = "sent everything"
        try:
            while sent < 1 << 30:
                sent += s.send(cycle.at(sent, 65536))
        except OSError as e:
            up_done["how"] = f"{type(e).__name__} after {sent} bytes"
        up_done["at"] = time.monotonic()
        s.close()

    t = threading.Thread(target=sender)
    t.start()
    reader = subprocess.Popen([sys.executable, "-c",
                               "import socket,sys,time\n"
                               f"s=socket.create_connection(('127.0.0.1',{proxy.addr[1]}))\n"
                               "print('ok',flush=True)\n"
                               "while True:\n s.recv(1024); time.sleep(0.01)\n"],
                              stdout=subprocess.PIPE)
    reader.stdout.readline()
    time.sleep(1.0)
    killed = time.monotonic()
    reader.kill()
    reader.wait()
    t.join(30)
    ended = up_done.get("at", killed + 99) - killed
    clean = wait_until(lambda: not non_listening(proxy.pid) and fd_count(proxy.pid) <= base, 10)
    report("client killed mid-download", not t.is_alive() and ended < 5 and clean,
           f"upstream's sending ended ({up_done.get('how')}) {ended:.2f} s after the client's SIGKILL "
           f"(linger timeout 2 s); forwarder sockets now {non_listening(proxy.pid)}, descriptors "
           f"{fd_count(proxy.pid)} (start {base})")
    report("client killed: exit", proxy.stop() == 0, "forwarder exits 0 on SIGTERM afterwards")
    os.unlink(path)


# ---------------------------------------------------------------- sigterm


def streaming_clients(addr, n, signal_at, stop_after, sig):
    """`n` clients send their streams as fast as the echoes come back (at most 256
    KiB in flight each) and check every echoed byte; `sig()` is called at
    `signal_at` s; each client stops sending `stop_after` s later, half-closes and
    reads to end of file. Returns per-client (sent, received, intact)."""
    sel = selectors.DefaultSelector()
    st = []
    for i in range(n):
        s = socket.create_connection(addr)
        s.setblocking(False)
        st.append({"s": s, "cycle": Cycle(100 + i), "sent": 0, "got": 0, "intact": True, "open": True,
                   "shut": False})
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
    t0 = time.monotonic()
    signalled = False
    while any(c["open"] for c in st) and time.monotonic() - t0 < 60:
        now = time.monotonic() - t0
        if not signalled and now >= signal_at:
            sig()
            signalled = True
        for key, ev in sel.select(0.05):
            c = st[key.data]
            s = c["s"]
            if ev & selectors.EVENT_READ:
                try:
                    d = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    d = None
                except ConnectionResetError:
                    d = b""
                if d == b"":
                    c["open"] = False
                    sel.unregister(s)
                    continue
                if d:
                    c["intact"] &= c["got"] + len(d) <= c["sent"] and c["cycle"].check(c["got"], d)
                    c["got"] += len(d)
            if ev & selectors.EVENT_WRITE and not c["shut"]:
                if now < signal_at + stop_after:
                    if c["sent"] - c["got"] < 256 * 1024:
                        try:
                            c["sent"] += s.send(c["cycle"].at(c["sent"], 16384))
                        except (BlockingIOError, InterruptedError):
                            pass
                else:
                    s.shutdown(socket.SHUT_WR)
                    c["shut"] = True
                    sel.modify(s, selectors.EVENT_READ, key.data)
    for c in st:
        c["s"].close()
    if not signalled:
        raise RuntimeError("every client ended before the signal was due")
    return [(c["sent"], c["got"], c["intact"]) for c in st]


def refused(addr):
    try:
        socket.create_connection(addr, timeout=1).close()
        return False
    except OSError:
        return True


def sigterm():
    for name in ("echo", "forwarder"):
        echo = Program("echo", ["--listen", "127.0.0.1:0"])
        server = echo
        if name == "forwarder":
            server = Program("proxy", ["--listen", "127.0.0.1:0", "--upstream", "%s:%d" % echo.addr,
                                       "--drain-timeout", "5"])
        when = {}

        def term():
            when["t"] = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            when["refused"] = refused(server.addr)

        res = streaming_clients(server.addr, 50, 1.0, 0.5, term)
        rc = server.proc.wait(15)
        took = time.monotonic() - when["t"]
        lost = sum(1 for sent, got, ok in res if not ok or got != sent)
        sent = sum(r[0] for r in res)
        report(f"SIGTERM under load ({name})", lost == 0 and rc == 0 and took <= 6 and when["refused"],
               f"50 clients, {sent} bytes sent, {lost} clients missing echoed bytes; exit {rc} "
               f"{took:.2f} s after SIGTERM (drain timeout 5 s); new connections refused while draining: "
               f"{when['refused']}")
        if server is not echo:
            echo.stop()

        # A client that never finishes: the drain timeout ends the wait.
        echo = Program("echo", ["--listen", "127.0.0.1:0"])
        server = echo
        if name == "forwarder":
            server = Program("proxy", ["--listen", "127.0.0.1:0", "--upstream", "%s:%d" % echo.addr,
                                       "--drain-timeout", "5"])
        idle = socket.create_connection(server.addr)
        idle.sendall(b"hello")
        idle.recv(5)
        t = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(15)
        took = time.monotonic() - t
        idle.close()
        if server is not echo:
            echo.stop()
        report(f"SIGTERM with an idle client ({name})", rc == 0 and 4.5 <= took <= 6.5,
               f"exit {rc} {took:.2f} s after SIGTERM (drain timeout 5 s)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", default=["all"])
    ap.add_argument("--seconds", type=float, default=60.0, help="measured seconds of each churn run")
    ap.add_argument("--build", action="store_true", help="cargo build the release examples first")
    a = ap.parse_args()
    if a.build:
        subprocess.run(["cargo", "build", "--release", "--example", "echo", "--example", "loadgen",
                        "--example", "proxy"], cwd=ROOT, check=True)
    runs = {"churn": lambda: churn(a.seconds), "fds": fds, "kill-upstream": kill_upstream,
            "kill-client": kill_client, "sigterm": sigterm}
    names = list(runs) if "all" in a.runs else a.runs
    print("| check | result | measured |\n|---|---|---|")
    for n in names:
        runs[n]()
    failed = [c for c, ok, _ in RESULTS if not ok]
    if failed:
        print("FAILED: " + ", ".join(failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        helper(sys.argv[1][1:], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        main()
