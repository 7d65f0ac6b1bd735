//! The HTTP tracker announcer: a handler that announces the torrent (started,
//! periodic, completed, stopped) as a non-blocking HTTP client on the reactor, and
//! hands the peers it learns to the torrent's peer manager.
//!
//! Request bytes and response parsing are [`super::tracker`]'s; the host name is
//! resolved on the worker pool (`ToSocketAddrs` blocks); the exchange itself is a
//! [`Conn`] on the loop, bounded by a timeout. It must not dial peers: the engine does.

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use super::torrent::Shared;
use super::tracker::{
    AnnounceEvent, AnnounceRequest, HttpRequest, build_request, parse_response,
    parse_response_partial,
};
use reactor::CloseReason;
use reactor::Context;
use reactor::TimerId;
use reactor::{Conn, ConnConfig};
use reactor::{Handler, HandlerResult, SourceId};
use reactor::{JobId, JobResult};

/// One HTTP exchange must finish within this time.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// The `stopped` announce at shutdown gets this long (the loop drains for 5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Shortest interval honoured, whatever the tracker says.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Retry delays after failed announces (the last repeats).
const RETRY: [u64; 5] = [15, 30, 60, 300, 900];

/// A message to the announcer from the engine: the download completed.
pub struct Completed;

/// The announcer handler. See the module docs.
pub struct Announcer {
    sh: Rc<RefCell<Shared>>,
    url: String,
    port: u16,
    conn: Option<Conn>,
    request: Option<HttpRequest>,
    event: Option<AnnounceEvent>,
    /// Pending event for the next announce (`completed` arriving mid-exchange).
    queued: Option<AnnounceEvent>,
    next: Option<TimerId>,
    deadline: Option<TimerId>,
    failures: usize,
    tracker_id: Option<Vec<u8>>,
    stopping: bool,
}

impl Announcer {
    /// An announcer for `url`, telling the tracker we accept peers on `port`.
    pub fn new(sh: Rc<RefCell<Shared>>, url: String, port: u16) -> Announcer {
        Announcer {
            sh,
            url,
            port,
            conn: None,
            request: None,
            event: Some(AnnounceEvent::Started),
            queued: None,
            next: None,
            deadline: None,
            failures: 0,
            tracker_id: None,
            stopping: false,
        }
    }

    fn busy(&self) -> bool {
        self.request.is_some()
    }

    /// Starts an announce: builds the request now, resolves the host on the pool.
    fn announce(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        if self.busy() {
            return Ok(());
        }
        let req = {
            let sh = self.sh.borrow();
            AnnounceRequest {
                info_hash: sh.meta.info_hash,
                peer_id: sh.peer_id,
                port: self.port,
                uploaded: sh.uploaded,
                downloaded: sh.downloaded,
                left: sh.left(),
                event: self.event,
                numwant: Some(50),
                compact: true,
                key: None,
                tracker_id: self.tracker_id.clone(),
            }
        };
        let http =
            build_request(&self.url, &req).map_err(|e| format!("tracker {}: {e}", self.url))?;
        let host = http.host.clone();
        let port = http.port;
        self.request = Some(http);
        let t = if self.stopping {
            STOP_TIMEOUT
        } else {
            EXCHANGE_TIMEOUT
        };
        self.deadline = Some(cx.timer_once(t));
        if cx
            .offload(move || {
                (host.as_str(), port)
                    .to_socket_addrs()
                    .map(|a| a.collect::<Vec<SocketAddr>>())
            })
            .is_err()
        {
            self.failed(cx, "worker pool full");
        }
        Ok(())
    }

    fn failed(&mut self, cx: &mut Context<'_, Self>, why: &str) {
        log::warn!("tracker {}: announce failed: {why}", self.url);
        self.reset(cx);
        if self.stopping {
            cx.close();
            return;
        }
        let d = RETRY[self.failures.min(RETRY.len() - 1)];
        self.failures += 1;
        self.schedule(cx, Duration::from_secs(d));
    }

    fn reset(&mut self, cx: &mut Context<'_, Self>) {
        if let Some(mut c) = self.conn.take() {
            c.release(cx);
            let _ = cx.deregister(c.stream_mut());
        }
        self.request = None;
        if let Some(t) = self.deadline.take() {
            cx.cancel_timer(t);
        }
    }

    fn schedule(&mut self, cx: &mut Context<'_, Self>, after: Duration) {
        if let Some(t) = self.next.take() {
            cx.cancel_timer(t);
        }
        self.next = Some(cx.timer_once(after));
    }

    fn pump(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let io = (|| -> std::io::Result<bool> {
            if !conn.poll_connect()? {
                return Ok(false);
            }
            let st = conn.fill(cx)?;
            conn.flush(cx)?;
            Ok(st.eof)
        })();
        let eof = match io {
            Ok(eof) => eof,
            Err(e) => {
                self.failed(cx, &e.to_string());
                return Ok(());
            }
        };
        let buf = conn.read_buf();
        let parsed = if eof {
            parse_response(buf).map(Some)
        } else {
            parse_response_partial(buf).map(|r| r.map(|(resp, _)| resp))
        };
        match parsed {
            Ok(None) => Ok(()),
            Err(e) => {
                self.failed(cx, &e.to_string());
                Ok(())
            }
            Ok(Some(resp)) => {
                self.reset(cx);
                if self.stopping {
                    log::info!("tracker {}: stopped announced", self.url);
                    cx.close();
                    return Ok(());
                }
                self.failures = 0;
                self.event = self.queued.take();
                if resp.tracker_id.is_some() {
                    self.tracker_id = resp.tracker_id.clone();
                }
                if let Some(w) = &resp.warning {
                    log::warn!("tracker {}: {w}", self.url);
                }
                let now = cx.now();
                let mut added = 0;
                {
                    let mut sh = self.sh.borrow_mut();
                    for p in &resp.peers {
                        if p.port() == self.port
                            && (p.ip().is_loopback() || p.ip().is_unspecified())
                        {
                            continue; // ourselves
                        }
                        if sh.peers.add_peer(*p, now) {
                            added += 1;
                        }
                    }
                    if added > 0 {
                        sh.wake_engine(cx);
                    }
                }
                log::info!(
                    "tracker {}: {} peers ({} seeders, {} leechers), next announce in {} s",
                    self.url,
                    resp.peers.len(),
                    resp.complete.unwrap_or(0),
                    resp.incomplete.unwrap_or(0),
                    resp.interval
                );
                let every = Duration::from_secs(u64::from(resp.interval)).max(MIN_INTERVAL);
                if self.event.is_some() {
                    self.schedule(cx, MIN_INTERVAL);
                } else {
                    self.schedule(cx, every);
                }
                Ok(())
            }
        }
    }
}

impl Handler for Announcer {
    type Message = Completed;
    type Job = std::io::Result<Vec<SocketAddr>>;

    fn name(&self) -> &str {
        "TrackerAnnouncer"
    }

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.announce(cx)
    }

    fn on_job(
        &mut self,
        cx: &mut Context<'_, Self>,
        _job: JobId,
        result: JobResult<Self::Job>,
    ) -> HandlerResult {
        let addrs = result?;
        if self.request.is_none() {
            return Ok(()); // timed out meanwhile
        }
        let addr = match addrs {
            Ok(a) if !a.is_empty() => a[0],
            Ok(_) => {
                self.failed(cx, "host has no address");
                return Ok(());
            }
            Err(e) => {
                self.failed(cx, &format!("cannot resolve: {e}"));
                return Ok(());
            }
        };
        let mut conn = match Conn::connect(addr, 0, ConnConfig::default()) {
            Ok(c) => c,
            Err(e) => {
                self.failed(cx, &e.to_string());
                return Ok(());
            }
        };
        conn.register(cx)?;
        if let Some(r) = &self.request {
            conn.queue(cx, &r.bytes);
        }
        self.conn = Some(conn);
        Ok(())
    }

    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        self.pump(cx)
    }

    fn on_writable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        self.pump(cx)
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
        if Some(t) == self.deadline {
            self.deadline = None;
            self.failed(cx, "timed out");
        } else if Some(t) == self.next {
            self.next = None;
            self.announce(cx)?;
        }
        Ok(())
    }

    fn on_message(&mut self, cx: &mut Context<'_, Self>, _done: Completed) -> HandlerResult {
        if self.busy() {
            self.queued = Some(AnnounceEvent::Completed);
        } else {
            self.event = Some(AnnounceEvent::Completed);
            self.announce(cx)?;
        }
        Ok(())
    }

    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        // Leave the swarm politely, but never hold the shutdown for long.
        self.reset(cx);
        if let Some(t) = self.next.take() {
            cx.cancel_timer(t);
        }
        self.stopping = true;
        self.event = Some(AnnounceEvent::Stopped);
        self.announce(cx)
    }

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _reason: CloseReason) {
        if let Some(mut c) = self.conn.take() {
            c.release(cx);
        }
    }
}
