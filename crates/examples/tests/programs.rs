//! The example programs as an outside user runs them: the echo server's signals,
//! threads, descriptor exhaustion and stats line, and the README's server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use reactor_test_support::Server;

/// Sends `msg` and reads the same bytes back.
fn roundtrip(c: &mut TcpStream, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

fn echo_child(extra: &[&str]) -> Server {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_echo"));
    cmd.args(["--listen", "127.0.0.1:0"]).args(extra);
    Server::start(cmd)
}

#[test]
fn echo_binary_sigterm_drains_then_exits_zero() {
    let mut srv = echo_child(&[]);
    let mut c = TcpStream::connect(srv.addr).unwrap();
    roundtrip(&mut c, b"before");
    srv.signal(libc::SIGTERM);
    assert!(srv.wait_stderr("shutting down", Duration::from_secs(5)));
    roundtrip(&mut c, b"after the signal, still served");
    assert_eq!(
        srv.wait_exit(Duration::from_millis(300)),
        None,
        "exited before draining"
    );
    // Half-close from our side: the server finishes and closes.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert_eq!(srv.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn echo_binary_sigint_with_idle_connection_exits_after_drain_deadline() {
    let mut srv = echo_child(&[]);
    let _idle = TcpStream::connect(srv.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    srv.signal(libc::SIGINT);
    // The default drain deadline is 5 s; it must not hang past it.
    assert_eq!(srv.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(srv.stderr_text().contains("drain deadline passed"));
}

#[test]
fn echo_binary_rejects_bad_arguments() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_echo"))
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_echo"))
        .args(["--threads", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads"));
}

#[test]
fn echo_binary_threads_share_one_port() {
    let mut srv = echo_child(&["--threads", "3"]);
    let mut conns: Vec<TcpStream> = (0..30)
        .map(|_| TcpStream::connect(srv.addr).unwrap())
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        roundtrip(c, format!("message {i}").as_bytes());
    }
    drop(conns);
    srv.signal(libc::SIGTERM);
    assert_eq!(srv.wait_exit(Duration::from_secs(10)), Some(0));
}

/// A child with a low descriptor limit runs out of descriptors while accepting: it
/// must pause (not spin), keep serving, and recover when descriptors free up.
#[test]
fn emfile_pauses_without_spinning_and_recovers() {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_echo"));
    cmd.args(["--listen", "127.0.0.1:0"]);
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 32,
                rlim_max: 32,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut srv = Server::start(cmd);
    let mut conns: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(srv.addr).unwrap())
        .collect();
    assert!(
        srv.wait_stderr("pausing accepts", Duration::from_secs(5)),
        "no EMFILE warning: {}",
        srv.stderr_text()
    );
    // Accepted connections are still served while accepting is paused.
    roundtrip(&mut conns[0], b"served");
    // Not spinning: over one second the process uses well under a CPU-second.
    let before = srv.cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = srv.cpu_ticks() - before;
    assert!(
        used < 30,
        "the server used {used} ticks in 1 s while out of descriptors"
    );
    // Free descriptors: the connections waiting in the backlog get accepted.
    let last = conns.pop().unwrap();
    conns.truncate(5);
    let mut last = last;
    last.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    roundtrip(&mut last, b"accepted after recovery");
    assert!(srv.wait_stderr("retrying accepts", Duration::from_secs(5)));
    srv.signal(libc::SIGTERM);
    drop(conns);
    drop(last);
    assert_eq!(srv.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn readme_example_is_the_upper_program() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let code = readme
        .split("```rust\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/bin/upper.rs")).unwrap();
    assert!(
        example.ends_with(code),
        "README's server and crates/examples/src/bin/upper.rs differ"
    );
    let mut srv = Server::start(std::process::Command::new(env!("CARGO_BIN_EXE_upper")));
    let mut c = TcpStream::connect(srv.addr).unwrap();
    c.write_all(b"hello\nworld\n").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.read_to_string(&mut out).unwrap();
    assert_eq!(out, "HELLO\nWORLD\n");
    srv.signal(libc::SIGTERM);
    assert_eq!(srv.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn echo_binary_logs_stats_lines() {
    let mut srv = echo_child(&["--stats-interval", "0.2"]);
    let mut c = TcpStream::connect(srv.addr).unwrap();
    roundtrip(&mut c, b"count me");
    assert!(
        srv.wait_stderr("bytes_in=8", Duration::from_secs(5)),
        "{}",
        srv.stderr_text()
    );
    srv.signal(libc::SIGTERM);
    drop(c);
    assert_eq!(srv.wait_exit(Duration::from_secs(10)), Some(0));
}
