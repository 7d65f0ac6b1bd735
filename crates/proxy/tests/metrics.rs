//! `proxy --metrics ADDR`: the proxy's own counters (sessions, bytes, refusals)
//! next to the loop's, in a format promtool accepts.

use reactor_test_support as common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, require_tool, run_loop, scrape};
use reactor::Config;
use reactor::echo::{EchoOptions, echo_listener};

#[test]
fn the_proxys_counters_are_served_and_promtool_accepts_them() {
    let (backend, _b) = run_loop(Config::default(), |r| {
        let l = echo_listener("127.0.0.1:0".parse().unwrap(), EchoOptions::default()).unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxy"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &backend.to_string(),
    ])
    .args(["--metrics", "127.0.0.1:0", "--deny-client", "10.0.0.0/8"]);
    let mut srv = Server::start(cmd);
    let addr = srv.metrics_addr();
    {
        let mut c = TcpStream::connect(srv.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(&[7u8; 1000]).unwrap();
        let mut back = [0u8; 1000];
        c.read_exact(&mut back).unwrap();
        let m = scrape::metrics(addr);
        assert_eq!(m[r#"proxy_sessions_open{loop="0"}"#], 1.0);
    }
    // The session ends once the client has gone: its bytes are counted then.
    let end = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = scrape::metrics(addr);
        if m[r#"proxy_sessions_open{loop="0"}"#] == 0.0 {
            break m;
        }
        assert!(Instant::now() < end, "the session never closed: {m:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(m[r#"proxy_sessions_total{loop="0"}"#], 1.0);
    assert_eq!(m[r#"proxy_bytes_up_total{loop="0"}"#], 1000.0);
    assert_eq!(m[r#"proxy_bytes_down_total{loop="0"}"#], 1000.0);
    assert_eq!(m[r#"proxy_connect_failures_total{loop="0"}"#], 0.0);
    if require_tool("promtool", &["--version"], "apt-get install prometheus") {
        let body = scrape::get(addr, "/metrics").body;
        let (ok, said) = scrape::promtool(&body);
        assert!(ok, "promtool: {said}\n{body}");
    }
    let _ = srv.stderr_text();
}
