//! The HTTP side of the endpoint: a framed protocol whose frames are request
//! heads (cut at the blank line, at most `max_request_head` bytes), parsed by
//! `httparse`, answered one at a time.
//!
//! `/metrics` asks every attached loop for a snapshot and stops reading the
//! connection until they have answered (or `collect_timeout` passed), so a
//! pipelining client cannot queue work; everything else is answered at once.
//! It must not keep anything per connection beyond one request head and one
//! response, and never blocks the loop.

use std::fmt::Write as _;
use std::net::SocketAddr;

use reactor::framed::{self, FramedConfig, Link, Protocol};
use reactor::framing::{Delimited, FrameError};
use reactor::{ConnConfig, HandlerResult, ListenOptions, Reactor, TimerId};

use crate::text::{self, LoopSample};
use crate::{Collect, Collected, Metrics, ServeOptions};

/// Headers parsed at most; a request with more gets 431.
const MAX_HEADERS: usize = 32;

/// Binds `addr` and spawns its listener into `reactor`; returns the address bound.
pub(crate) fn serve(
    metrics: Metrics,
    reactor: &mut Reactor,
    addr: SocketAddr,
    opts: ServeOptions,
) -> std::io::Result<SocketAddr> {
    let head = opts.max_request_head;
    let cfg = FramedConfig::default()
        .idle_timeout(Some(opts.request_timeout))
        .listen(ListenOptions::default().max_connections(opts.max_connections))
        .conn(
            ConnConfig::default()
                .read_budget(16 * 1024)
                .max_read_buffer(2 * head)
                .high_watermark(256 * 1024)
                .low_watermark(64 * 1024),
        );
    let listener = framed::listen(addr, Delimited::new(b"\r\n\r\n", head), cfg, move |_peer| {
        Some(Scrape {
            metrics: metrics.clone(),
            opts: opts.clone(),
            head: Vec::new(),
            body: String::new(),
            served: 0,
            deadline: None,
            seq: 0,
            pending: None,
        })
    })?;
    let local = listener.local_addr();
    reactor.spawn(listener);
    Ok(local)
}

/// One scrape connection.
pub(crate) struct Scrape {
    metrics: Metrics,
    opts: ServeOptions,
    /// The request head being parsed, with its blank line put back.
    head: Vec<u8>,
    /// The response body being written.
    body: String,
    served: usize,
    /// The request-head deadline (slowloris).
    deadline: Option<TimerId>,
    seq: u64,
    pending: Option<Pending>,
}

/// A `/metrics` request waiting for the loops' snapshots.
struct Pending {
    seq: u64,
    head_only: bool,
    close: bool,
    labels: Vec<String>,
    got: Vec<Option<Box<reactor::Stats>>>,
    waiting: usize,
    timer: TimerId,
}

/// What a request asked for, once its head is parsed.
enum Ask {
    Metrics,
    Health,
    Refuse(u16, &'static str),
}

impl Scrape {
    fn arm_deadline(&mut self, link: &mut Link<'_, Self>) {
        if let Some(t) = self.deadline.take() {
            link.cancel_timer(t);
        }
        self.deadline = Some(link.timer_once(self.opts.request_timeout));
    }

    fn respond(
        &mut self,
        link: &mut Link<'_, Self>,
        status: u16,
        content_type: &str,
        head_only: bool,
        close: bool,
    ) {
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            505 => "HTTP Version Not Supported",
            _ => "Error",
        };
        let _ = write!(
            link,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            self.body.len()
        );
        if status == 405 {
            link.send(b"Allow: GET, HEAD\r\n");
        }
        if close {
            link.send(b"Connection: close\r\n");
        }
        link.send(b"\r\n");
        if !head_only {
            link.send(self.body.as_bytes());
        }
        if close {
            link.close_when_done();
        } else {
            self.arm_deadline(link);
        }
    }

    /// A plain-text error answer, then the connection closes.
    fn refuse(&mut self, link: &mut Link<'_, Self>, status: u16, why: &str, close: bool) {
        self.body.clear();
        self.body.push_str(why);
        self.body.push('\n');
        self.respond(link, status, "text/plain; charset=utf-8", false, close);
    }

    /// Parses the request head in `self.head`: what it asks, whether it is a
    /// `HEAD`, whether the client keeps the connection.
    fn parse(&self) -> Result<(Ask, bool, bool), (u16, String)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err((400, "incomplete request head".into()));
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err((431, format!("more than {MAX_HEADERS} headers")));
            }
            Err(e) => return Err((400, format!("malformed request: {e}"))),
        }
        let version = req.version.unwrap_or(1);
        let mut keep = version == 1;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("connection") {
                let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                if v.split(',').any(|t| t.trim() == "close") {
                    keep = false;
                } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                    keep = true;
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                || (h.name.eq_ignore_ascii_case("content-length")
                    && std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        != Some(0))
            {
                return Err((400, "a request body is not accepted".into()));
            }
        }
        let method = req.method.unwrap_or("");
        let head_only = method == "HEAD";
        if method != "GET" && !head_only {
            let ask = Ask::Refuse(405, "only GET and HEAD");
            return Ok((ask, head_only, keep));
        }
        let path = req.path.unwrap_or("");
        let path = path.split('?').next().unwrap_or(path);
        let ask = match path {
            "/metrics" => Ask::Metrics,
            "/healthz" => Ask::Health,
            _ => Ask::Refuse(404, "not found; try /metrics or /healthz"),
        };
        Ok((ask, head_only, keep))
    }

    fn start_collecting(&mut self, link: &mut Link<'_, Self>, head_only: bool, close: bool) {
        let members = self.metrics.members();
        self.seq += 1;
        let reply = link.handle();
        let to = link.addr();
        let mut waiting = 0;
        for (slot, m) in members.iter().enumerate() {
            let asked = m.ask(Collect {
                seq: self.seq,
                slot,
                reply: reply.clone(),
                to,
            });
            waiting += asked as usize;
        }
        let timer = link.timer_once(self.opts.collect_timeout);
        self.pending = Some(Pending {
            seq: self.seq,
            head_only,
            close,
            labels: members.into_iter().map(|m| m.label).collect(),
            got: Vec::new(),
            waiting,
            timer,
        });
        if let Some(p) = &mut self.pending {
            p.got.resize_with(p.labels.len(), || None);
        }
        if waiting == 0 {
            self.finish(link);
        } else {
            // One request at a time: the next one is read once this is answered.
            link.pause_reading();
        }
    }

    fn finish(&mut self, link: &mut Link<'_, Self>) {
        let Some(p) = self.pending.take() else {
            return;
        };
        link.cancel_timer(p.timer);
        let samples: Vec<LoopSample<'_>> = p
            .labels
            .iter()
            .zip(&p.got)
            .map(|(label, s)| LoopSample {
                label,
                stats: s.as_deref(),
            })
            .collect();
        self.body.clear();
        text::encode(&mut self.body, &samples);
        let missing: Vec<&str> = samples
            .iter()
            .filter(|s| s.stats.is_none())
            .map(|s| s.label)
            .collect();
        if !missing.is_empty() {
            log::warn!(
                "metrics: loop(s) {} did not answer within {:?} (blocked?)",
                missing.join(", "),
                self.opts.collect_timeout
            );
        }
        drop(samples);
        self.respond(link, 200, text::CONTENT_TYPE, p.head_only, p.close);
        if !p.close {
            link.resume_reading();
        }
    }
}

impl Protocol for Scrape {
    type Message = Collected;
    type Job = ();

    fn name(&self) -> &str {
        "MetricsScrape"
    }

    fn on_open(&mut self, link: &mut Link<'_, Self>) -> HandlerResult {
        self.arm_deadline(link);
        Ok(())
    }

    fn on_frame(&mut self, link: &mut Link<'_, Self>, frame: &[u8]) -> HandlerResult {
        if let Some(t) = self.deadline.take() {
            link.cancel_timer(t);
        }
        self.served += 1;
        self.head.clear();
        self.head.extend_from_slice(frame);
        self.head.extend_from_slice(b"\r\n\r\n");
        let last = self.served >= self.opts.max_requests_per_connection;
        match self.parse() {
            Err((status, why)) => {
                let peer = link.peer_label();
                link.log_peer(format_args!("metrics: {peer}: {why}; answering {status}"));
                self.refuse(link, status, &why, true);
            }
            Ok((Ask::Metrics, head_only, keep)) => {
                self.start_collecting(link, head_only, last || !keep);
            }
            Ok((Ask::Health, head_only, keep)) => {
                self.body.clear();
                self.body.push_str("ok\n");
                self.respond(
                    link,
                    200,
                    "text/plain; charset=utf-8",
                    head_only,
                    last || !keep,
                );
            }
            Ok((Ask::Refuse(status, why), _, keep)) => {
                self.refuse(link, status, why, last || !keep);
            }
        }
        Ok(())
    }

    fn on_frame_error(&mut self, link: &mut Link<'_, Self>, err: FrameError) -> HandlerResult {
        let peer = link.peer_label();
        link.log_peer(format_args!(
            "metrics: {peer}: request head too long ({err}); answering 431"
        ));
        let why = format!("request head over {} bytes", self.opts.max_request_head);
        self.refuse(link, 431, &why, true);
        Ok(())
    }

    fn on_eof(&mut self, link: &mut Link<'_, Self>, rest: &[u8]) -> HandlerResult {
        // A client may half-close after its request: answer it first.
        if let Some(p) = &mut self.pending {
            p.close = true;
            return Ok(());
        }
        if !rest.is_empty() {
            let peer = link.peer_label();
            link.log_peer(format_args!(
                "metrics: {peer}: the connection ended inside a request head ({} bytes)",
                rest.len()
            ));
        }
        link.close_when_done();
        Ok(())
    }

    fn on_timer(&mut self, link: &mut Link<'_, Self>, timer: TimerId) -> HandlerResult {
        if self.pending.as_ref().is_some_and(|p| p.timer == timer) {
            self.finish(link);
        } else if self.deadline == Some(timer) {
            self.deadline = None;
            let peer = link.peer_label();
            link.log_peer(format_args!(
                "metrics: {peer}: no complete request within {:?}; answering 408",
                self.opts.request_timeout
            ));
            self.refuse(link, 408, "request not complete in time", true);
        }
        Ok(())
    }

    fn on_message(&mut self, link: &mut Link<'_, Self>, msg: Collected) -> HandlerResult {
        let Some(p) = &mut self.pending else {
            return Ok(()); // late: that scrape was answered without it
        };
        if p.seq != msg.seq || p.got[msg.slot].is_some() {
            return Ok(());
        }
        p.got[msg.slot] = Some(msg.stats);
        p.waiting -= 1;
        if p.waiting == 0 {
            self.finish(link);
        }
        Ok(())
    }
}
