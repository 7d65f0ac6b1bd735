//! `--metrics ADDR` on every example program: promtool accepts what each serves,
//! `echo --threads 2` reports both loops from one endpoint, and a real Prometheus
//! server (Debian's `prometheus`) scrapes `echo` under load and answers
//! `rate(reactor_events_total[..])` with a non-zero value through its query API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reactor_test_support::scrape::{self, promtool};
use reactor_test_support::{Server, require_tool, tmpdir};

fn program(bin: &str, args: &[&str]) -> Server {
    let mut cmd = Command::new(bin);
    cmd.args(args).args(["--metrics", "127.0.0.1:0"]);
    Server::start(cmd)
}

#[test]
fn promtool_accepts_every_example_programs_metrics() {
    if !require_tool("promtool", &["--version"], "apt-get install prometheus") {
        return;
    }
    let servers = [
        (
            "echo",
            env!("CARGO_BIN_EXE_echo"),
            &["--listen", "127.0.0.1:0", "--threads", "2"][..],
        ),
        (
            "echo --framed",
            env!("CARGO_BIN_EXE_echo"),
            &["--listen", "127.0.0.1:0", "--framed"][..],
        ),
        ("upper", env!("CARGO_BIN_EXE_upper"), &[][..]),
        (
            "chat",
            env!("CARGO_BIN_EXE_chat"),
            &["--listen", "127.0.0.1:0"][..],
        ),
    ];
    for (name, bin, args) in servers {
        let mut srv = program(bin, args);
        // Some traffic first, so every family has samples.
        let mut c = TcpStream::connect(srv.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"hello\n").unwrap();
        let mut b = [0u8; 64];
        let _ = c.read(&mut b).unwrap();
        let addr = srv.metrics_addr();
        let body = scrape::get(addr, "/metrics").body;
        let (ok, said) = promtool(&body);
        assert!(ok, "{name}: promtool: {said}\n{body}");
        let m = scrape::samples(&body);
        assert_eq!(m[r#"reactor_loop_up{loop="0"}"#], 1.0, "{name}");
        if name == "echo" {
            assert_eq!(
                m[r#"reactor_loop_up{loop="1"}"#], 1.0,
                "both loops of --threads 2"
            );
        }
        if name == "chat" {
            assert!(
                m.contains_key(r#"chat_lines_total{loop="0"}"#),
                "chat's own counter"
            );
        }
    }
    // The load generator serves its own loop while it runs.
    let mut echo = program(env!("CARGO_BIN_EXE_echo"), &["--listen", "127.0.0.1:0"]);
    let target = echo.addr.to_string();
    let mut lg = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--target", &target, "--mode", "rr", "--connections", "2"])
        .args([
            "--duration",
            "3",
            "--warmup",
            "0",
            "--metrics",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = metrics_line(&mut lg);
    std::thread::sleep(Duration::from_millis(300));
    let body = scrape::get(addr, "/metrics").body;
    let (ok, said) = promtool(&body);
    assert!(ok, "loadgen: promtool: {said}\n{body}");
    assert!(scrape::samples(&body)[r#"reactor_read_bytes_total{loop="0"}"#] > 0.0);
    assert!(lg.wait().unwrap().success());
    let _ = echo.metrics_addr();
}

/// Waits for `metrics on http://ADDR/metrics` on a child's stderr (then keeps
/// draining it on a thread).
fn metrics_line(child: &mut Child) -> SocketAddr {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent && let Some(i) = line.find("metrics on http://") {
                let rest = &line[i + "metrics on http://".len()..];
                let _ = tx.send(
                    rest.split('/')
                        .next()
                        .unwrap()
                        .parse::<SocketAddr>()
                        .unwrap(),
                );
                sent = true;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("no metrics line")
}

/// A Prometheus server on 127.0.0.1 (its own port, from its log) scraping
/// `target` every second, with its data in a temp dir; killed on drop.
struct Prometheus {
    child: Child,
    api: SocketAddr,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tmpdir("prometheus", "echo");
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: echo\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start prometheus");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let end = Instant::now() + Duration::from_secs(30);
        let (mut api, mut ready, mut log) = (None, false, Vec::new());
        while !(api.is_some() && ready) {
            let left = end.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                panic!("prometheus did not become ready: {}", log.join("\n"));
            };
            if line.contains("msg=\"Listening on\"") {
                api = line
                    .split("address=")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                    .and_then(|a| a.parse().ok());
            }
            ready |= line.contains("Server is ready to receive web requests");
            log.push(line);
        }
        Prometheus {
            child,
            api: api.unwrap(),
        }
    }

    /// The values of an instant query's result vector (HTTP/1.0, read to close).
    fn query(&self, promql: &str) -> Vec<f64> {
        let mut s = TcpStream::connect(self.api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        write!(s, "GET /api/v1/query?query={q} HTTP/1.0\r\n\r\n").unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(body.contains("\"status\":\"success\""), "{promql}: {raw}");
        // Each sample is "value":[TIMESTAMP,"VALUE"].
        body.split("\"value\":[")
            .skip(1)
            .map(|v| {
                let v = v.split(",\"").nth(1).and_then(|v| v.split('"').next());
                v.and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{promql}: bad value in {body}"))
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_echo_and_computes_its_event_rate() {
    if !require_tool("prometheus", &["--version"], "apt-get install prometheus") {
        return;
    }
    let mut echo = program(env!("CARGO_BIN_EXE_echo"), &["--listen", "127.0.0.1:0"]);
    let metrics = echo.metrics_addr();
    let prom = Prometheus::start(metrics);
    // Prometheus hands new targets to its scrapers about 5 s after it starts:
    // wait for the first scrape, then load for 6 s while it scrapes every second.
    let end = Instant::now() + Duration::from_secs(30);
    while prom.query("up{job=\"echo\"}") != [1.0] {
        assert!(
            Instant::now() < end,
            "Prometheus never scraped the endpoint"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let target = echo.addr.to_string();
    let lg = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--target", &target, "--mode", "rr", "--connections", "4"])
        .args(["--duration", "6", "--warmup", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(lg.success());
    // The scrapes succeeded (Prometheus parsed every one) ...
    let up = prom.query("up{job=\"echo\"}");
    assert_eq!(up, [1.0], "Prometheus could not scrape the endpoint");
    // ... and the events rate over the load is there and not zero.
    let rate = prom.query("rate(reactor_events_total{job=\"echo\"}[5s])");
    assert_eq!(rate.len(), 1, "one loop, one series: {rate:?}");
    // Every scrape during the load succeeded.
    let scrapes = prom.query("count_over_time(up{job=\"echo\"}[5s])");
    let good = prom.query("sum_over_time(up{job=\"echo\"}[5s])");
    assert!(
        scrapes[0] >= 3.0 && good == scrapes,
        "scrapes {scrapes:?}, good {good:?}"
    );
    assert!(rate[0] > 100.0, "events per second: {rate:?}");
    // Events per iteration: the saturation query of docs/profiling.md.
    let per_iter = prom.query(
        "rate(reactor_events_total{job=\"echo\"}[5s]) / rate(reactor_loop_iterations_total{job=\"echo\"}[5s])",
    );
    assert!(per_iter.len() == 1 && per_iter[0] >= 0.5, "{per_iter:?}");
    let p99 = prom
        .query("histogram_quantile(0.99, rate(reactor_dispatch_seconds_bucket{job=\"echo\"}[5s]))");
    assert!(
        p99.len() == 1 && p99[0] > 0.0 && p99[0] < 0.1,
        "dispatch p99 {p99:?}"
    );
}

#[test]
fn a_bad_metrics_address_is_refused_with_a_message() {
    for (bin, extra) in [
        (env!("CARGO_BIN_EXE_echo"), &["--listen", "127.0.0.1:0"][..]),
        (env!("CARGO_BIN_EXE_chat"), &["--listen", "127.0.0.1:0"][..]),
        (env!("CARGO_BIN_EXE_upper"), &[][..]),
    ] {
        let out = Command::new(bin)
            .args(extra)
            .args(["--metrics", "not-an-address"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--metrics"),
            "{bin}"
        );
        // A port in use: the program says so and exits non-zero.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = taken.local_addr().unwrap().to_string();
        let out = Command::new(bin)
            .args(extra)
            .args(["--metrics", &a])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{bin} ran with its metrics port taken"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.to_lowercase().contains("in use"), "{bin}: {err}");
    }
}
