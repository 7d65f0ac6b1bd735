//! A handler that panics is closed with `CloseReason::Panic` and counted, whatever
//! callback it panics in, and the loop and its other connections carry on.
//! (asyncore's `handle_error`: one broken dispatcher must not take the server down.)

use reactor_test_support as common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::run_loop;
use reactor::echo::{EchoOptions, echo_listener};
use reactor::net::{Interest, TcpStream};
use reactor::{
    CloseReason, Config, Context, Handler, HandlerId, HandlerResult, JobId, JobResult, SourceId,
    TimerId,
};

/// The callback a [`Bomb`] panics in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Start,
    Readable,
    Writable,
    Hangup,
    Error,
    Timer,
    Job,
    Message,
    Notify,
    ChildClosed,
    Shutdown,
    Close,
}

/// Every kind that panics while the loop runs (Shutdown waits for the shutdown).
const DURING_RUN: [Kind; 11] = [
    Kind::Start,
    Kind::Readable,
    Kind::Writable,
    Kind::Hangup,
    Kind::Error,
    Kind::Timer,
    Kind::Job,
    Kind::Message,
    Kind::Notify,
    Kind::ChildClosed,
    Kind::Close,
];

type Closed = Arc<Mutex<Vec<(Kind, CloseReason)>>>;

/// A handler that behaves until its `kind` of callback runs, and panics there.
struct Bomb {
    kind: Kind,
    stream: Option<TcpStream>,
    closed: Closed,
}

impl Bomb {
    fn arm(&self, at: Kind) {
        if self.kind == at {
            panic!("bomb: panicking in {at:?} as asked");
        }
    }
}

/// A child that closes at once, so its parent hears `on_child_closed`.
struct Child;

impl Handler for Child {
    type Message = ();
    type Job = ();
    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.close();
        Ok(())
    }
}

impl Handler for Bomb {
    type Message = u32;
    type Job = u32;

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.arm(Kind::Start);
        if let Some(s) = self.stream.as_mut() {
            cx.register(s, 0, Interest::READABLE | Interest::WRITABLE)?;
        }
        match self.kind {
            Kind::Timer => {
                cx.timer_once(Duration::from_millis(1));
            }
            Kind::Job => {
                cx.offload(|| 7).expect("an empty pool queue");
            }
            Kind::Message => {
                let me = cx.addr();
                cx.send(me, 1);
            }
            Kind::Notify => {
                let me = cx.id();
                cx.notify(me);
            }
            Kind::ChildClosed => {
                cx.spawn(Child);
            }
            // Closes itself: the panic is in the last callback, on_close.
            Kind::Close => cx.close(),
            _ => {}
        }
        Ok(())
    }

    fn on_readable(&mut self, _cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        self.arm(Kind::Readable);
        Ok(())
    }

    fn on_writable(&mut self, _cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        self.arm(Kind::Writable);
        if self.kind == Kind::Hangup
            && let Some(s) = &self.stream
        {
            // Connected: shut our side; the peer's close then hangs up both.
            let _ = s.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    fn on_hangup(&mut self, _cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        self.arm(Kind::Hangup);
        Ok(())
    }

    fn on_error(&mut self, cx: &mut Context<'_, Self>, s: SourceId) -> HandlerResult {
        self.arm(Kind::Error);
        self.on_readable(cx, s)
    }

    fn on_timer(&mut self, _cx: &mut Context<'_, Self>, _t: TimerId) -> HandlerResult {
        self.arm(Kind::Timer);
        Ok(())
    }

    fn on_job(
        &mut self,
        _cx: &mut Context<'_, Self>,
        _j: JobId,
        r: JobResult<u32>,
    ) -> HandlerResult {
        assert_eq!(r.unwrap(), 7);
        self.arm(Kind::Job);
        Ok(())
    }

    fn on_message(&mut self, _cx: &mut Context<'_, Self>, msg: u32) -> HandlerResult {
        assert_eq!(msg, 1);
        self.arm(Kind::Message);
        Ok(())
    }

    fn on_notify(&mut self, _cx: &mut Context<'_, Self>) -> HandlerResult {
        self.arm(Kind::Notify);
        Ok(())
    }

    fn on_child_closed(&mut self, _cx: &mut Context<'_, Self>, _c: HandlerId) -> HandlerResult {
        self.arm(Kind::ChildClosed);
        Ok(())
    }

    fn on_shutdown(&mut self, _cx: &mut Context<'_, Self>) -> HandlerResult {
        self.arm(Kind::Shutdown);
        Ok(())
    }

    fn on_close(&mut self, _cx: &mut Context<'_, Self>, reason: CloseReason) {
        self.closed.lock().unwrap().push((self.kind, reason));
        self.arm(Kind::Close);
    }
}

/// A port nobody listens on (bound, then released), for a connect that is refused.
fn refused_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn echo_roundtrip(addr: SocketAddr, msg: &[u8]) {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(msg).unwrap();
    let mut got = vec![0; msg.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

#[test]
fn a_panic_in_any_callback_closes_that_handler_only() {
    let peers = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = peers.local_addr().unwrap();
    let nobody = refused_port();
    let closed: Closed = Arc::default();
    let in_loop = closed.clone();
    let config = Config::default().drain_timeout(Duration::from_secs(2));
    let (echo, server) = run_loop(config, move |r| {
        let echo = echo_listener("127.0.0.1:0".parse().unwrap(), EchoOptions::default()).unwrap();
        let addr = echo.local_addr();
        r.spawn(echo);
        for kind in DURING_RUN.into_iter().chain([Kind::Shutdown]) {
            let stream = match kind {
                Kind::Readable | Kind::Writable | Kind::Hangup => {
                    Some(TcpStream::connect(peer_addr).unwrap())
                }
                Kind::Error => Some(TcpStream::connect(nobody).unwrap()),
                _ => None,
            };
            r.spawn(Bomb {
                kind,
                stream,
                closed: in_loop.clone(),
            });
        }
        addr
    });

    // The far ends of the three connected bombs: send a byte (the readable one
    // panics on it), then read to end of file and close (the hang-up one has shut
    // its side, so our close hangs up both directions).
    peers.set_nonblocking(false).unwrap();
    let mut far = Vec::new();
    for _ in 0..3 {
        let (mut s, _) = peers.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"x");
        far.push(s);
    }
    for mut s in far {
        let _ = s.read_to_end(&mut Vec::new());
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    while closed.lock().unwrap().len() < DURING_RUN.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let during: Vec<(Kind, CloseReason)> = closed.lock().unwrap().clone();
    for kind in DURING_RUN {
        let want = if kind == Kind::Close {
            CloseReason::Local
        } else {
            CloseReason::Panic
        };
        assert!(
            during.contains(&(kind, want)),
            "{kind:?} not closed as {want:?}: {during:?}"
        );
    }
    assert_eq!(during.len(), DURING_RUN.len(), "{during:?}");

    // The loop goes on: the echo service answers new and existing clients.
    echo_roundtrip(echo, b"still serving");
    echo_roundtrip(echo, &[7; 100_000]);

    // A panic in on_shutdown is one more; the drain still ends the loop.
    server.handle.shutdown();
    let stats = server.join();
    assert!(
        closed
            .lock()
            .unwrap()
            .contains(&(Kind::Shutdown, CloseReason::Panic))
    );
    // Eleven panics closed their handler; the one in on_close had closed already.
    assert_eq!(stats.closes(CloseReason::Panic), 11, "{stats:?}");
    assert_eq!(stats.handlers_failed, 11);
}
