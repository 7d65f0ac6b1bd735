#!/usr/bin/env python3
"""asyncore echo server: the Python baseline for the side-by-side benchmark.

    python3 bench/asyncore_echo.py [--listen 127.0.0.1:0] [--buf-size 65536]

Prints `listening on IP:PORT` once bound; SIGINT/SIGTERM exit 0. Exits 3 with a
message if this Python has no asyncore (it was removed in Python 3.12).
Uses poll(2) (asyncore.loop with use_poll=True) rather than select, so 10,000
connections fit.
"""

import argparse
import signal
import socket
import sys
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import asyncore
    except ImportError:
        print("asyncore_echo: this python3 has no asyncore module (removed in 3.12)",
              file=sys.stderr)
        sys.exit(3)


class EchoHandler(asyncore.dispatcher):
    def __init__(self, sock, bufsize):
        super().__init__(sock)
        self.bufsize = bufsize
        self.out = b""
        self.eof = False

    def handle_read(self):
        data = self.recv(self.bufsize)
        if not data:
            self.eof = True
            if not self.out:
                self.close()
            return
        self.out += data
        self.handle_write()

    def writable(self):
        return bool(self.out)

    def readable(self):
        # Backpressure: stop reading while a lot waits to be written.
        return len(self.out) < 1 << 20

    def handle_write(self):
        if self.out:
            try:
                n = self.send(self.out)
            except BlockingIOError:
                n = 0
            self.out = self.out[n:]
        if self.eof and not self.out:
            self.close()

    def handle_close(self):
        self.close()

    def handle_error(self):
        self.close()


class EchoServer(asyncore.dispatcher):
    def __init__(self, host, port, bufsize):
        super().__init__()
        self.bufsize = bufsize
        self.create_socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                           socket.SOCK_STREAM)
        self.set_reuse_addr()
        self.bind((host, port))
        self.listen(1024)

    def handle_accepted(self, sock, addr):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        EchoHandler(sock, self.bufsize)

    def handle_error(self):
        # An accept error (EMFILE) must not kill the server.
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--buf-size", type=int, default=65536)
    a = p.parse_args()
    host, _, port = a.listen.rpartition(":")
    host = host.strip("[]")
    try:
        server = EchoServer(host, int(port), a.buf_size)
    except (OSError, ValueError) as e:
        print(f"asyncore_echo: cannot listen on {a.listen}: {e}", file=sys.stderr)
        sys.exit(1)
    h, prt = server.socket.getsockname()[:2]
    h = f"[{h}]" if ":" in h else h
    print(f"listening on {h}:{prt}", flush=True)

    def stop(*_):
        asyncore.close_all()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    asyncore.loop(timeout=1.0, use_poll=True)


if __name__ == "__main__":
    main()
