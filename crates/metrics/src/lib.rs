//! Prometheus metrics for reactor programs, served by the loop itself.
//!
//! Every loop keeps its numbers as plain integers ([`reactor::Stats`]: events,
//! dispatch times, closes by reason, slow callbacks by handler name, the
//! program's own [`Counter`](reactor::Counter)s and [`Gauge`](reactor::Gauge)s).
//! This crate reads them only when scraped, so the fast path pays nothing: a
//! small handler on each loop (attached with [`Metrics::attach`]) takes a
//! [`snapshot`](reactor::Loop::snapshot) when asked and sends it to the
//! scrape's connection, which writes the Prometheus text format ([`text`]).
//! With one loop per core, one endpoint reports every loop, each series
//! labelled `loop`; a loop that does not answer within
//! [`ServeOptions::collect_timeout`] shows as `reactor_loop_up{loop=".."} 0`
//! (it is blocked: look for its slow-handler warnings).
//!
//! One line adds it to a program:
//!
//! ```no_run
//! let mut reactor = reactor::Reactor::new()?;
//! let addr = reactor_metrics::serve(&mut reactor, "127.0.0.1:9100".parse().unwrap())?;
//! // GET http://127.0.0.1:9100/metrics and /healthz
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Several loops, one endpoint:
//!
//! ```no_run
//! let metrics = reactor_metrics::Metrics::new();
//! let mut loops = Vec::new();
//! for i in 0..2 {
//!     let mut r = reactor::Reactor::new()?;
//!     metrics.attach(&mut r, i.to_string());
//!     loops.push(r);
//! }
//! metrics.serve(&mut loops[0], "127.0.0.1:9100".parse().unwrap(), Default::default())?;
//! // run each loop on its own thread
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The endpoint answers `GET` (and `HEAD`) of `/metrics` and `/healthz` over
//! HTTP/1.1 with keep-alive; requests are parsed by `httparse`. It is built to
//! sit on an operator's network, not the internet, but bad input never
//! disturbs the loop: heads over [`ServeOptions::max_request_head`] get 431,
//! garbage 400, a head not complete within [`ServeOptions::request_timeout`]
//! 408 (slowloris), a request body 400, other methods 405; each then closes.
//! One response at a time per connection and a capped number of connections
//! bound what a slow or hostile scraper can make the loop hold.
//!
//! This crate must not add work to a loop between scrapes, and must not block:
//! a snapshot is a copy of the loop's counters, made on its own thread.

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

mod http;
pub mod text;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reactor::{Addr, CloseReason, Context, Handler, HandlerResult, Reactor, ReactorHandle, Stats};

/// The loops one endpoint reports. Cheap to clone (shared); `Send`, so each
/// loop's thread can attach its own.
#[derive(Clone, Default)]
pub struct Metrics {
    loops: Arc<Mutex<Vec<Member>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<String> = self.members().into_iter().map(|m| m.label).collect();
        f.debug_struct("Metrics").field("loops", &labels).finish()
    }
}

#[derive(Clone)]
pub(crate) struct Member {
    pub(crate) label: String,
    handle: ReactorHandle,
    agent: Addr<Collect>,
}

impl Member {
    /// Asks this loop for a snapshot, to be sent to `to` on the loop of `reply`.
    pub(crate) fn ask(&self, c: Collect) -> bool {
        self.handle.send(self.agent, c)
    }
}

impl Metrics {
    /// An endpoint's set of loops, empty.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Reports `reactor` with the label `loop="LABEL"` (give each loop its own).
    /// Adds one small handler to it that answers scrapes (it closes when the
    /// loop shuts down).
    pub fn attach(&self, reactor: &mut Reactor, label: impl Into<String>) {
        let agent = reactor.spawn(Agent);
        self.loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Member {
                label: label.into(),
                handle: reactor.handle(),
                agent,
            });
    }

    /// Serves `/metrics` and `/healthz` for every attached loop on `addr`, from
    /// `reactor` (one of them, or another loop). Returns the address bound
    /// (port 0 picks one) and logs `metrics on http://ADDR/metrics`.
    pub fn serve(
        &self,
        reactor: &mut Reactor,
        addr: SocketAddr,
        opts: ServeOptions,
    ) -> io::Result<SocketAddr> {
        let local = http::serve(self.clone(), reactor, addr, opts)?;
        log::info!("metrics on http://{local}/metrics");
        Ok(local)
    }

    pub(crate) fn members(&self) -> Vec<Member> {
        self.loops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Serves the metrics of `reactor` alone (label `loop="0"`) on `addr` with the
/// default [`ServeOptions`]: the one line a program adds. Returns the address
/// bound.
pub fn serve(reactor: &mut Reactor, addr: SocketAddr) -> io::Result<SocketAddr> {
    let m = Metrics::new();
    m.attach(reactor, "0");
    m.serve(reactor, addr, ServeOptions::default())
}

/// Limits of the HTTP endpoint. The default of each is in its doc.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Scrape connections open at once; more wait in the listen backlog.
    /// Default 64.
    pub max_connections: usize,
    /// A request head (request line and headers) longer than this gets 431.
    /// Default 8 KiB.
    pub max_request_head: usize,
    /// Requests served on one connection; the last response says
    /// `Connection: close`. Default 10,000.
    pub max_requests_per_connection: usize,
    /// A request head must be complete within this long of the connection
    /// opening or of the previous response (else 408 and close: slowloris); a
    /// connection that sends nothing for this long is closed quietly (an idle
    /// keep-alive). Default 10 s.
    pub request_timeout: Duration,
    /// How long a scrape waits for each loop's snapshot; a loop that has not
    /// answered by then is reported as `reactor_loop_up 0`. Default 1 s.
    pub collect_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            max_connections: 64,
            max_request_head: 8 * 1024,
            max_requests_per_connection: 10_000,
            request_timeout: Duration::from_secs(10),
            collect_timeout: Duration::from_secs(1),
        }
    }
}

impl ServeOptions {
    /// Sets [`ServeOptions::max_connections`].
    pub fn max_connections(mut self, n: usize) -> ServeOptions {
        self.max_connections = n;
        self
    }
    /// Sets [`ServeOptions::max_request_head`].
    pub fn max_request_head(mut self, n: usize) -> ServeOptions {
        self.max_request_head = n;
        self
    }
    /// Sets [`ServeOptions::max_requests_per_connection`].
    pub fn max_requests_per_connection(mut self, n: usize) -> ServeOptions {
        self.max_requests_per_connection = n;
        self
    }
    /// Sets [`ServeOptions::request_timeout`].
    pub fn request_timeout(mut self, d: Duration) -> ServeOptions {
        self.request_timeout = d;
        self
    }
    /// Sets [`ServeOptions::collect_timeout`].
    pub fn collect_timeout(mut self, d: Duration) -> ServeOptions {
        self.collect_timeout = d;
        self
    }
}

/// A scrape's request to one loop.
pub(crate) struct Collect {
    pub(crate) seq: u64,
    pub(crate) slot: usize,
    pub(crate) reply: ReactorHandle,
    pub(crate) to: Addr<Collected>,
}

/// One loop's answer.
pub(crate) struct Collected {
    pub(crate) seq: u64,
    pub(crate) slot: usize,
    pub(crate) stats: Box<Stats>,
}

/// Answers scrapes on its loop with a snapshot. Between scrapes it does nothing
/// at all.
struct Agent;

impl Handler for Agent {
    type Message = Collect;
    type Job = ();

    fn name(&self) -> &str {
        "MetricsAgent"
    }

    fn on_message(&mut self, cx: &mut Context<'_, Self>, c: Collect) -> HandlerResult {
        let stats = Box::new(cx.snapshot());
        // The scrape's loop may be gone (shutting down): nothing to do then.
        let _ = c.reply.send(
            c.to,
            Collected {
                seq: c.seq,
                slot: c.slot,
                stats,
            },
        );
        Ok(())
    }

    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.close_with(CloseReason::Shutdown);
        Ok(())
    }
}
