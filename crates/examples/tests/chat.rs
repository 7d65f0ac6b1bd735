//! `examples/chat`, driven as an outside client would: real sockets on 127.0.0.1,
//! several clients at once, every behaviour of its specification, bounded in time.

use reactor_test_support as common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, small_buffer_connect};

fn chat(args: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat"));
    cmd.args(["--listen", "127.0.0.1:0"]).args(args);
    Server::start(cmd)
}

/// A chat client: a line reader over the socket, and the address the server sees.
struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
    me: SocketAddr,
}

impl Client {
    fn join(addr: SocketAddr, online: usize) -> Client {
        Client::from(TcpStream::connect(addr).unwrap(), online)
    }

    fn from(s: TcpStream, online: usize) -> Client {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let me = s.local_addr().unwrap();
        let mut c = Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            me,
        };
        assert_eq!(c.line(), format!("welcome {me}, {online} online"));
        c
    }

    fn say(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).unwrap();
    }

    /// The next line, without its `\n`.
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        assert!(l.ends_with('\n'), "no complete line: {l:?}");
        l.pop();
        l
    }

    /// Everything until end of file; a reset counts as an end too.
    fn rest(&mut self) -> String {
        let mut s = Vec::new();
        match self.r.read_to_end(&mut s) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{e}"),
        }
        String::from_utf8(s).unwrap()
    }
}

#[test]
fn welcome_broadcast_and_commands_with_several_clients() {
    let mut srv = chat(&["--stats-interval", "0.2"]);
    let mut a = Client::join(srv.addr, 1);
    let mut b = Client::join(srv.addr, 2);
    let mut c = Client::join(srv.addr, 3);
    a.say("hello room\r\n");
    let from_a = format!("{}: hello room", a.me);
    assert_eq!(b.line(), from_a, "a trailing \\r is stripped");
    assert_eq!(c.line(), from_a);
    b.say("\n");
    assert_eq!(a.line(), format!("{}: ", b.me), "an empty line is a line");
    assert_eq!(c.line(), format!("{}: ", b.me));
    // The sender gets none of its own lines: its next line is its command's answer.
    a.say("/nick bob\n");
    assert_eq!(a.line(), "ERROR unknown command");
    a.say("/resolve 127.0.0.1\n");
    assert_eq!(a.line(), "resolve 127.0.0.1: 127.0.0.1");
    a.say("/resolve localhost\n");
    let answer = a.line();
    assert!(
        answer.starts_with("resolve localhost: ") && answer.contains("127.0.0.1"),
        "{answer}"
    );
    a.say("/resolve no-such-host.invalid\n");
    assert!(
        a.line().starts_with("ERROR resolve no-such-host.invalid: "),
        "a failed lookup is an error line"
    );
    // Commands are answered to the sender only: the others' next line is a chat line.
    c.say("bye\n");
    assert_eq!(b.line(), format!("{}: bye", c.me));
    assert_eq!(a.line(), format!("{}: bye", c.me));
    // A client that leaves is no longer counted.
    drop(c);
    std::thread::sleep(Duration::from_millis(100));
    let _d = Client::join(srv.addr, 3);
    // The program counter is in the stats line, with its rate.
    assert!(srv.wait_stderr("chat_lines=3", Duration::from_secs(5)));
    assert!(srv.wait_stderr(" | per_s over=", Duration::from_secs(5)));
}

#[test]
fn long_lines_are_refused_with_or_without_a_newline() {
    let srv = chat(&["--max-line", "16"]);
    let mut a = Client::join(srv.addr, 1);
    let mut b = Client::join(srv.addr, 2);
    // Exactly the limit is fine, with `\r\n` too.
    a.say("0123456789abcdef\r\n");
    assert_eq!(b.line(), format!("{}: 0123456789abcdef", a.me));
    // One more byte, with a newline: told, then a graceful close.
    a.say("0123456789abcdefX\n");
    assert_eq!(a.line(), "ERROR line longer than 16 bytes");
    assert_eq!(a.rest(), "", "nothing after the error but end of file");
    // Without a newline yet: told as soon as the line is too long.
    b.say("0123456789abcdefg");
    assert_eq!(b.line(), "ERROR line longer than 16 bytes");
    assert_eq!(b.rest(), "");
}

#[test]
fn idle_clients_are_told_and_closed_and_reading_broadcasts_is_not_activity() {
    let srv = chat(&["--idle-timeout", "1"]);
    let mut quiet = Client::join(srv.addr, 1);
    let mut talker = Client::join(srv.addr, 2);
    let t0 = Instant::now();
    // The talker keeps talking for 1.6 s; the quiet one only reads.
    let mut n = 0;
    while t0.elapsed() < Duration::from_millis(1600) {
        talker.say(&format!("line {n}\n"));
        let got = quiet.line();
        if got.starts_with("ERROR") {
            assert_eq!(got, "ERROR idle for 1 s, bye");
            break;
        }
        assert_eq!(got, format!("{}: line {n}", talker.me));
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(n > 0, "no line was broadcast before the idle error");
    if quiet.rest() != "" {
        panic!("more than the idle error");
    }
    let idle_for = t0.elapsed();
    assert!(
        idle_for >= Duration::from_millis(900),
        "closed after {idle_for:?}, before its idle timeout"
    );
    // The talker is still served.
    talker.say("/nope\n");
    assert_eq!(talker.line(), "ERROR unknown command");
}

#[test]
fn a_stalled_reader_is_dropped_and_memory_stays_bounded() {
    let mut srv = chat(&[]);
    let rss_before = rss_kib(&srv);
    // Small kernel buffers, never read: it stalls after a few hundred KiB.
    let stalled_sock = small_buffer_connect(srv.addr, Duration::from_secs(10));
    let mut stalled = Client::from(stalled_sock, 1);
    // A reader with large buffers keeps up.
    let reader_sock = big_buffer_connect(srv.addr);
    let mut reader = Client::from(reader_sock, 2);
    let mut flooder = Client::join(srv.addr, 3);
    let line = "f".repeat(999);
    let total = 10_000; // 10 MB
    let expect = format!("{}: {line}", flooder.me);
    let r = std::thread::spawn(move || {
        for i in 0..total {
            let got = reader.line();
            assert!(got == expect, "line {i} differs");
        }
        reader
    });
    let mut rss_peak = rss_before;
    for i in 0..total {
        flooder.say(&line);
        flooder.say("\n");
        if i % 500 == 0 {
            rss_peak = rss_peak.max(rss_kib(&srv));
        }
    }
    let _reader = r.join().expect("the reader lost lines");
    assert!(
        srv.wait_stderr("too slow", Duration::from_secs(10)),
        "no `too slow` line"
    );
    let log = srv.stderr_text();
    let slow = log.lines().find(|l| l.contains("too slow")).unwrap();
    assert!(slow.contains(&stalled.me.to_string()), "{slow}");
    // The stalled client's connection ends; it got at most what it had room for.
    stalled
        .w
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let got = stalled.rest();
    assert!(got.len() < 10_000_000);
    // The others carry on.
    flooder.say("/nope\n");
    assert_eq!(flooder.line(), "ERROR unknown command");
    rss_peak = rss_peak.max(rss_kib(&srv));
    // 10 MB went through; buffering it for the stalled reader would show.
    assert!(
        rss_peak < rss_before + 8 * 1024,
        "server memory grew from {rss_before} KiB to {rss_peak} KiB"
    );
}

#[test]
fn sigterm_says_goodbye_to_everyone_and_exits_zero() {
    let mut srv = chat(&[]);
    let mut a = Client::join(srv.addr, 1);
    let mut b = Client::join(srv.addr, 2);
    srv.signal(libc::SIGTERM);
    assert_eq!(a.line(), "server shutting down");
    assert_eq!(b.line(), "server shutting down");
    assert_eq!(a.rest(), "");
    // `b` keeps its socket open: the server still exits within the drain timeout.
    let code = srv.wait_exit(Duration::from_secs(8));
    assert_eq!(code, Some(0));
    assert_eq!(b.rest(), "");
    b.w.shutdown(Shutdown::Both).ok();
}

#[test]
fn bad_arguments_exit_non_zero_with_a_message() {
    for args in [
        &["--listen", "nowhere"][..],
        &["--idle-timeout=-1"],
        &["--max-line", "many"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_chat"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        let flag = args[0].split('=').next().unwrap();
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

fn big_buffer_connect(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4 << 20).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

/// The server's resident memory, from /proc.
fn rss_kib(srv: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
