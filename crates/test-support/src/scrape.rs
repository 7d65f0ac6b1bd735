//! Scraping a metrics endpoint in tests: one blocking HTTP/1.1 request, and the
//! Prometheus text format read back into samples, so a test can say
//! "`reactor_events_total{loop="0"}` grew" and check every line parses.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An HTTP response: status, headers (names lower-cased) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on a fresh connection with `Connection: close`; panics on any
/// socket error or a malformed response (within 10 s).
pub fn get(addr: SocketAddr, path: &str) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    parse_response(&raw).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&raw)))
}

/// Splits a whole HTTP/1.1 response (one, with `Content-Length`).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of the head")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or("bad status line")?;
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or("no Content-Length")?;
    if body.len() != len {
        return Err(format!(
            "body of {} bytes, Content-Length {len}",
            body.len()
        ));
    }
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

/// The samples of a Prometheus text exposition, keyed by the series as written
/// (`name{label="v",...}`). Panics on a line that is not a comment or a
/// `series value` pair with a numeric value.
pub fn samples(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let v = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("not a number in {line:?}")),
        };
        assert!(
            out.insert(series.to_string(), v).is_none(),
            "series {series} twice"
        );
    }
    out
}

/// Scrapes `/metrics` and returns its samples (asserting a 200 and the
/// Prometheus text content type).
pub fn metrics(addr: SocketAddr) -> HashMap<String, f64> {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{r:?}"
    );
    samples(&r.body)
}

/// Runs `promtool check metrics` on `text`: whether it passed, and what it said.
/// (Check [`crate::require_tool`] first: this panics if promtool cannot run.)
pub fn promtool(text: &str) -> (bool, String) {
    use std::process::{Command, Stdio};
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}
