//! The session's decisions driven without sockets: events in, actions and deadlines
//! out, time passed in by hand.

use super::*;
use crate::socks5::{self, METHOD_NO_AUTH, METHOD_USERPASS};

const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(10),
    idle: Duration::from_secs(300),
    linger: Duration::from_secs(5),
    handshake: Duration::from_secs(10),
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn peer() -> SocketAddr {
    addr("127.0.0.1:40000")
}

fn started(mode: Mode, now: Instant) -> SessionState {
    let mut s = SessionState::new(peer(), mode, TIMEOUTS);
    assert_eq!(s.poll_timeout(), None, "nothing before the start");
    s.start(now);
    s
}

fn socks(now: Instant) -> SessionState {
    started(Mode::Socks5 { auth: None }, now)
}

fn forward(now: Instant, to: Target) -> SessionState {
    started(Mode::Forward(to), now)
}

fn domain(host: &str, port: u16) -> Target {
    Target::Domain {
        host: host.into(),
        port,
    }
}

fn drain(s: &mut SessionState) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

/// The one action the last event produced.
fn one(s: &mut SessionState) -> Action {
    let mut a = drain(s);
    assert_eq!(a.len(), 1, "{a:?}");
    a.remove(0)
}

fn greeting_and_request(cmd: socks5::Command, target: &Target) -> Vec<u8> {
    let mut v = Vec::new();
    socks5::encode_greeting(&[METHOD_NO_AUTH], &mut v).unwrap();
    socks5::encode_request(cmd, target, &mut v).unwrap();
    v
}

/// A SOCKS5 session at `now` that sent a CONNECT to `target`.
fn requested(now: Instant, target: &Target, rules: &Rules) -> SessionState {
    let mut s = socks(now);
    let req = greeting_and_request(socks5::Command::Connect, target);
    let mut out = Vec::new();
    assert_eq!(s.handshake(now, &req, false, rules, &mut out), req.len());
    assert_eq!(out, [5, 0], "method selection");
    s
}

/// A session relaying to `to` since `now`.
fn relaying(now: Instant, to: SocketAddr) -> SessionState {
    let mut s = requested(now, &Target::Addr(to), &Rules::default());
    assert!(matches!(one(&mut s), Action::Connect(a) if a == to));
    s.connected(now);
    assert!(matches!(
        one(&mut s),
        Action::Relay { to: a, reply: Some(Reply::Succeeded) } if a == to
    ));
    s
}

fn refused() -> io::Error {
    io::ErrorKind::ConnectionRefused.into()
}

#[test]
fn connect_fallback_splits_the_deadline_across_addresses() {
    let t0 = Instant::now();
    let mut s = requested(t0, &domain("three.example", 80), &Rules::default());
    assert!(matches!(one(&mut s), Action::Resolve { host, port: 80 } if host == "three.example"));
    assert_eq!(
        s.poll_timeout(),
        Some(t0 + ms(10_000)),
        "one deadline for it all"
    );

    // Resolution took a second: nine are left for three addresses, three each.
    let (a1, a2, a3) = (
        addr("10.0.0.1:80"),
        addr("10.0.0.2:80"),
        addr("10.0.0.3:80"),
    );
    let t1 = t0 + ms(1000);
    s.resolved(t1, Ok(vec![a1, a2, a3]), &Rules::default());
    assert!(matches!(one(&mut s), Action::Connect(a) if a == a1));
    assert_eq!(s.poll_timeout(), Some(t1 + ms(3000)));

    // A timer that fires early changes nothing.
    s.on_timeout(t1 + ms(2999));
    assert!(drain(&mut s).is_empty());

    // a1 never answers: at the end of its share, a2 gets half of the six left.
    let t2 = t1 + ms(3000);
    s.on_timeout(t2);
    assert!(matches!(one(&mut s), Action::Connect(a) if a == a2));
    assert_eq!(s.poll_timeout(), Some(t2 + ms(3000)));

    // a2 is refused at once: the last address gets everything that is left.
    let t3 = t2 + ms(10);
    s.connect_failed(t3, refused());
    assert!(matches!(one(&mut s), Action::Connect(a) if a == a3));
    assert_eq!(
        s.poll_timeout(),
        Some(t0 + ms(10_000)),
        "the deadline is not extended"
    );

    // a3 never answers either: refused with TTL expired at the deadline.
    s.on_timeout(t0 + ms(10_000));
    match one(&mut s) {
        Action::Refuse { failure, reply } => {
            assert_eq!(reply, Some(Reply::TtlExpired));
            let text = failure.to_string();
            assert!(text.contains("tried 3 of 3"), "{text}");
            assert!(text.contains("10.0.0.3:80 did not answer"), "{text}");
            assert!(text.contains("connect to 10.0.0.2:80"), "{text}");
            assert!(!failure.is_handshake());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.phase(), Phase::Refusing { until } if *until == t0 + ms(20_000)));
}

#[test]
fn an_address_that_fails_at_once_leaves_its_share_to_the_next() {
    let t0 = Instant::now();
    let mut s = requested(t0, &domain("two.example", 443), &Rules::default());
    one(&mut s);
    let (a1, a2) = (addr("[2001:db8::1]:443"), addr("192.0.2.1:443"));
    s.resolved(t0, Ok(vec![a1, a2]), &Rules::default());
    assert!(matches!(one(&mut s), Action::Connect(a) if a == a1));
    assert_eq!(s.poll_timeout(), Some(t0 + ms(5000)), "half each");
    s.connect_failed(t0 + ms(1), refused());
    assert!(matches!(one(&mut s), Action::Connect(a) if a == a2));
    assert_eq!(s.poll_timeout(), Some(t0 + ms(10_000)), "all the rest");
    // The second answers: relaying, with SOCKS5's success reply first.
    s.connected(t0 + ms(50));
    assert!(matches!(one(&mut s), Action::Relay { to, reply: Some(Reply::Succeeded) } if to == a2));
    assert_eq!(s.poll_timeout(), Some(t0 + ms(50) + TIMEOUTS.idle));
}

#[test]
fn every_address_refused_is_the_last_error_as_the_reply() {
    let t0 = Instant::now();
    let mut s = requested(t0, &domain("x.example", 1), &Rules::default());
    one(&mut s);
    s.resolved(
        t0,
        Ok(vec![addr("10.0.0.1:1"), addr("10.0.0.2:1")]),
        &Rules::default(),
    );
    one(&mut s);
    s.connect_failed(t0, refused());
    one(&mut s);
    s.connect_failed(t0, io::Error::from_raw_os_error(libc::ENETUNREACH));
    match one(&mut s) {
        Action::Refuse { reply, .. } => assert_eq!(reply, Some(Reply::NetworkUnreachable)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_forwarder_connects_at_once_and_closes_when_refused() {
    let t0 = Instant::now();
    let to = addr("127.0.0.1:9");
    let mut s = forward(t0, Target::Addr(to));
    assert!(matches!(one(&mut s), Action::Connect(a) if a == to));
    assert_eq!(s.poll_timeout(), Some(t0 + TIMEOUTS.connect));
    s.connect_failed(t0, refused());
    match one(&mut s) {
        Action::Close(End::Rejected(f)) => {
            assert!(matches!(
                f,
                Failure::Unreachable {
                    why: Unreachable::Connect(a, _),
                    ..
                } if a == to
            ));
            // The reply a SOCKS5 client would get; a forwarder has nobody to tell.
            assert_eq!(f.reply(), Some(Reply::ConnectionRefused));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_forwarder_resolves_a_named_upstream_and_connects_without_reply() {
    let t0 = Instant::now();
    let mut s = forward(t0, domain("up.example", 8080));
    assert!(matches!(one(&mut s), Action::Resolve { port: 8080, .. }));
    // Rules are SOCKS5's: a forwarder keeps every address.
    let rules = Rules {
        deny_nets: vec!["10.0.0.0/8".parse().unwrap()],
        deny_ports: vec![],
    };
    s.resolved(t0, Ok(vec![addr("10.0.0.1:8080")]), &rules);
    one(&mut s);
    s.connected(t0);
    assert!(matches!(one(&mut s), Action::Relay { reply: None, .. }));
}

#[test]
fn resolution_is_retried_while_the_pool_is_full_and_bounded_by_the_deadline() {
    let t0 = Instant::now();
    let mut s = requested(t0, &domain("slow.example", 80), &Rules::default());
    one(&mut s);
    s.pool_full(t0);
    assert_eq!(s.poll_timeout(), Some(t0 + RESOLVE_RETRY));
    s.on_timeout(t0 + RESOLVE_RETRY);
    assert!(matches!(one(&mut s), Action::Resolve { .. }));
    assert_eq!(s.poll_timeout(), Some(t0 + TIMEOUTS.connect));
    s.on_timeout(t0 + TIMEOUTS.connect);
    match one(&mut s) {
        Action::Refuse { failure, reply } => {
            assert_eq!(reply, Some(Reply::TtlExpired));
            assert!(
                failure
                    .to_string()
                    .contains("name resolution took longer than 10s")
            );
        }
        other => panic!("{other:?}"),
    }
    // A late answer changes nothing.
    s.resolved(
        t0 + TIMEOUTS.connect,
        Ok(vec![addr("10.0.0.1:80")]),
        &Rules::default(),
    );
    assert!(drain(&mut s).is_empty());
}

#[test]
fn resolution_failures_are_host_unreachable() {
    let t0 = Instant::now();
    for result in [Err(io::ErrorKind::Other.into()), Ok(vec![])] {
        let mut s = requested(t0, &domain("nowhere.example", 80), &Rules::default());
        one(&mut s);
        s.resolved(t0, result, &Rules::default());
        match one(&mut s) {
            Action::Refuse { reply, .. } => assert_eq!(reply, Some(Reply::HostUnreachable)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn rules_are_checked_on_the_request_and_on_every_resolved_address() {
    let t0 = Instant::now();
    let rules = Rules {
        deny_nets: vec!["127.0.0.0/8".parse().unwrap()],
        deny_ports: vec![25],
    };
    for target in [
        Target::Addr(addr("127.0.0.1:80")),
        domain("mail.example", 25),
    ] {
        let mut s = requested(t0, &target, &rules);
        match one(&mut s) {
            Action::Refuse {
                failure: Failure::Denied(t),
                reply,
            } => {
                assert_eq!(t, target);
                assert_eq!(reply, Some(Reply::NotAllowed));
            }
            other => panic!("{other:?}"),
        }
    }
    // A name cannot smuggle the client into a denied range...
    let mut s = requested(t0, &domain("local.example", 80), &rules);
    one(&mut s);
    s.resolved(
        t0,
        Ok(vec![addr("127.0.0.1:80"), addr("0.0.0.0:80")]),
        &rules,
    );
    match one(&mut s) {
        Action::Refuse { failure, reply } => {
            assert!(matches!(
                failure,
                Failure::Unreachable {
                    why: Unreachable::AllDenied,
                    ..
                }
            ));
            assert_eq!(reply, Some(Reply::NotAllowed));
        }
        other => panic!("{other:?}"),
    }
    // ...and its allowed addresses are the only ones tried.
    let mut s = requested(t0, &domain("mixed.example", 80), &rules);
    one(&mut s);
    let ok = addr("192.0.2.7:80");
    s.resolved(t0, Ok(vec![addr("127.0.0.1:80"), ok]), &rules);
    assert!(matches!(one(&mut s), Action::Connect(a) if a == ok));
    assert_eq!(
        s.poll_timeout(),
        Some(t0 + TIMEOUTS.connect),
        "the only address"
    );
}

#[test]
fn udp_associate_binds_then_relays_until_the_tcp_connection_closes_or_idles() {
    let t0 = Instant::now();
    let mut s = socks(t0);
    let req = greeting_and_request(
        socks5::Command::UdpAssociate,
        &Target::Addr(addr("0.0.0.0:0")),
    );
    s.handshake(t0, &req, false, &Rules::default(), &mut Vec::new());
    assert!(matches!(one(&mut s), Action::Associate { port: 0 }));
    assert_eq!(s.poll_timeout(), None, "binding is immediate");
    let idle = Duration::from_secs(30);
    s.associated(t0, idle);
    assert_eq!(s.poll_timeout(), Some(t0 + idle));
    s.udp_activity(t0 + ms(10_000));
    s.on_timeout(t0 + idle);
    assert!(drain(&mut s).is_empty(), "there was a datagram");
    assert_eq!(s.poll_timeout(), Some(t0 + ms(10_000) + idle));
    s.on_timeout(t0 + ms(10_000) + idle);
    assert!(matches!(one(&mut s), Action::Close(End::Idle(d)) if d == idle));
    // The TCP connection closing ends it; a bind failure is a general failure.
    let mut s = socks(t0);
    let req = greeting_and_request(
        socks5::Command::UdpAssociate,
        &Target::Addr(addr("127.0.0.1:5353")),
    );
    s.handshake(t0, &req, false, &Rules::default(), &mut Vec::new());
    assert!(matches!(one(&mut s), Action::Associate { port: 5353 }));
    s.associated(t0, idle);
    s.control_closed();
    assert!(matches!(one(&mut s), Action::Close(End::AssociationEnded)));
    let mut s = socks(t0);
    s.handshake(t0, &req, false, &Rules::default(), &mut Vec::new());
    one(&mut s);
    s.associate_failed(t0, "too many associations".into());
    match one(&mut s) {
        Action::Refuse { reply, .. } => assert_eq!(reply, Some(Reply::GeneralFailure)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bind_is_not_supported() {
    let t0 = Instant::now();
    {
        let cmd = socks5::Command::Bind;
        let mut s = socks(t0);
        let req = greeting_and_request(cmd, &Target::Addr(addr("127.0.0.1:53")));
        s.handshake(t0, &req, false, &Rules::default(), &mut Vec::new());
        match one(&mut s) {
            Action::Refuse { failure, reply } => {
                assert!(matches!(failure, Failure::Unsupported { command, .. } if command == cmd));
                assert_eq!(reply, Some(Reply::CommandNotSupported));
                assert!(failure.is_handshake());
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn handshake_failures_close_or_refuse() {
    let t0 = Instant::now();
    // Not SOCKS5 at all: nothing to say, closed.
    let mut s = socks(t0);
    let mut out = Vec::new();
    s.handshake(
        t0,
        b"GET / HTTP/1.1\r\n\r\n",
        false,
        &Rules::default(),
        &mut out,
    );
    assert!(out.is_empty());
    assert!(matches!(
        one(&mut s),
        Action::Close(End::Rejected(Failure::Handshake(_)))
    ));

    // Wrong credentials: the codec's failure status is sent, then the refusal.
    let auth = Some((b"alice".to_vec(), b"s3cret".to_vec()));
    let mut s = started(Mode::Socks5 { auth }, t0);
    let mut msg = Vec::new();
    socks5::encode_greeting(&[METHOD_USERPASS], &mut msg).unwrap();
    socks5::encode_userpass(b"alice", b"wrong", &mut msg).unwrap();
    let mut out = Vec::new();
    s.handshake(t0, &msg, false, &Rules::default(), &mut out);
    assert_eq!(out, [5, METHOD_USERPASS, 1, 1]);
    match one(&mut s) {
        Action::Refuse { failure, reply } => {
            assert!(matches!(
                failure,
                Failure::Handshake(HandshakeError::AuthFailed)
            ));
            assert_eq!(reply, None, "the codec answered already");
        }
        other => panic!("{other:?}"),
    }

    // Half a greeting, then end of file.
    let mut s = socks(t0);
    s.handshake(t0, &[5], true, &Rules::default(), &mut Vec::new());
    assert!(matches!(
        one(&mut s),
        Action::Close(End::Rejected(Failure::HandshakeEof))
    ));
}

#[test]
fn the_handshake_has_a_deadline() {
    let t0 = Instant::now();
    let mut s = socks(t0);
    assert_eq!(s.poll_timeout(), Some(t0 + TIMEOUTS.handshake));
    // Half a greeting is not progress that extends it.
    assert_eq!(
        s.handshake(t0 + ms(5), &[5], false, &Rules::default(), &mut Vec::new()),
        0
    );
    s.on_timeout(t0 + ms(9999));
    assert!(drain(&mut s).is_empty());
    s.on_timeout(t0 + TIMEOUTS.handshake);
    match one(&mut s) {
        Action::Close(end) => {
            assert!(matches!(end, End::Rejected(Failure::HandshakeTimeout(_))));
            assert_eq!(end.close_reason(), CloseReason::Local);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bytes_after_the_request_are_left_for_the_upstream() {
    let t0 = Instant::now();
    let mut s = socks(t0);
    let mut req =
        greeting_and_request(socks5::Command::Connect, &Target::Addr(addr("10.0.0.1:80")));
    let n = req.len();
    req.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(
        s.handshake(t0, &req, false, &Rules::default(), &mut Vec::new()),
        n
    );
    assert!(matches!(one(&mut s), Action::Connect(_)));
}

#[test]
fn the_idle_timeout_counts_from_the_last_transfer() {
    let t0 = Instant::now();
    let mut s = relaying(t0, addr("10.0.0.1:80"));
    assert_eq!(s.poll_timeout(), Some(t0 + TIMEOUTS.idle));
    // Activity only stores its time: the wake-up stays where it was.
    let t1 = t0 + Duration::from_secs(100);
    s.relayed(t1, 10, PipeStatus::Open);
    s.relayed(t1, 0, PipeStatus::Open);
    assert_eq!(s.poll_timeout(), Some(t0 + TIMEOUTS.idle));
    assert!(drain(&mut s).is_empty());
    // When it comes, there was activity: checked again for the rest.
    s.on_timeout(t0 + TIMEOUTS.idle);
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.poll_timeout(), Some(t1 + TIMEOUTS.idle));
    s.on_timeout(t1 + TIMEOUTS.idle);
    match one(&mut s) {
        Action::Close(End::Idle(d)) => assert_eq!(d, TIMEOUTS.idle),
        other => panic!("{other:?}"),
    }
}

/// Lingering after a failure: the pipe is asked on a backing-off timer whether the
/// healthy side's peer has acknowledged everything; the linger timeout bounds it.
#[test]
fn the_linger_timeout_bounds_a_failed_session() {
    let t0 = Instant::now();
    let mut s = relaying(t0, addr("10.0.0.1:80"));
    let t1 = t0 + ms(700);
    s.relayed(t1, 100, PipeStatus::Lingering);
    assert_eq!(
        s.poll_timeout(),
        Some(t1 + ms(5)),
        "first question after 5 ms"
    );
    // Dropped input of the healthy side does not push anything back.
    s.relayed(t1 + ms(1), 50, PipeStatus::Lingering);
    assert_eq!(s.poll_timeout(), Some(t1 + ms(5)));
    // Never acknowledged: asked again and again, backing off, until the timeout.
    let mut asked = Vec::new();
    let closed_at = loop {
        let now = s.poll_timeout().unwrap();
        s.on_timeout(now);
        match drain(&mut s)[..] {
            [Action::CheckDelivered] => {
                asked.push(now.duration_since(t1).as_millis() as u64);
                s.delivered(now, false);
            }
            [Action::Close(End::LingerTimeout(d))] => {
                assert_eq!(d, TIMEOUTS.linger);
                break now;
            }
            ref other => panic!("{other:?}"),
        }
        assert!(asked.len() < 100);
    };
    assert_eq!(
        closed_at,
        t1 + TIMEOUTS.linger,
        "closed at the timeout, not before"
    );
    assert_eq!(&asked[..6], [5, 15, 35, 75, 155, 315], "{asked:?}");
    // From then on every 200 ms.
    assert!(
        asked.windows(2).skip(6).all(|w| w[1] - w[0] == 200),
        "{asked:?}"
    );
}

/// The prompt end: once the healthy side's peer has acknowledged everything, the
/// session closes, long before the linger timeout.
#[test]
fn a_failed_session_ends_once_everything_is_acknowledged() {
    let t0 = Instant::now();
    let mut s = relaying(t0, addr("10.0.0.1:80"));
    s.relayed(t0, 10, PipeStatus::Lingering);
    s.on_timeout(t0 + ms(5));
    assert!(matches!(drain(&mut s)[..], [Action::CheckDelivered]));
    s.delivered(t0 + ms(5), false);
    assert_eq!(s.poll_timeout(), Some(t0 + ms(15)));
    s.on_timeout(t0 + ms(15));
    assert!(matches!(drain(&mut s)[..], [Action::CheckDelivered]));
    s.delivered(t0 + ms(15), true);
    match one(&mut s) {
        Action::Close(end) => {
            assert!(matches!(end, End::Delivered));
            assert_eq!(end.close_reason(), CloseReason::Local);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_finished_pipe_closes_the_session() {
    let t0 = Instant::now();
    let mut s = relaying(t0, addr("10.0.0.1:80"));
    s.relayed(t0, 0, PipeStatus::Lingering);
    s.relayed(t0 + ms(10), 0, PipeStatus::Done);
    match one(&mut s) {
        Action::Close(end) => {
            assert!(matches!(end, End::Finished));
            assert_eq!(end.close_reason(), CloseReason::Local);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_client_reset_while_connecting_ends_the_session_at_once() {
    let t0 = Instant::now();
    let mut s = forward(t0, Target::Addr(addr("10.0.0.1:80")));
    one(&mut s);
    s.client_failed(io::ErrorKind::ConnectionReset.into());
    match one(&mut s) {
        Action::Close(end) => assert_eq!(end.close_reason(), CloseReason::PeerReset),
        other => panic!("{other:?}"),
    }
    // Once relaying, a client failure is the pipe's business.
    let mut s = relaying(t0, addr("10.0.0.1:80"));
    s.client_failed(io::ErrorKind::ConnectionReset.into());
    assert!(drain(&mut s).is_empty());
}

#[test]
fn shutdown_ends_sessions_that_are_not_relaying() {
    let t0 = Instant::now();
    let mut s = socks(t0);
    s.shutdown();
    assert!(matches!(one(&mut s), Action::Close(End::Shutdown)));
    let mut s = relaying(t0, addr("10.0.0.1:80"));
    s.shutdown();
    assert!(
        drain(&mut s).is_empty(),
        "a tunnel that carries data finishes"
    );
}

#[test]
fn a_refused_client_is_given_the_handshake_timeout_to_close() {
    let t0 = Instant::now();
    let mut s = requested(
        t0,
        &Target::Addr(addr("10.0.0.1:25")),
        &Rules {
            deny_nets: vec![],
            deny_ports: vec![25],
        },
    );
    one(&mut s);
    assert_eq!(s.poll_timeout(), Some(t0 + TIMEOUTS.handshake));
    s.client_done();
    match one(&mut s) {
        Action::Close(end) => {
            assert!(matches!(end, End::RefusalDelivered));
            assert_eq!(end.close_reason(), CloseReason::ProtocolError);
        }
        other => panic!("{other:?}"),
    }
    let mut s = requested(
        t0,
        &Target::Addr(addr("10.0.0.1:25")),
        &Rules {
            deny_nets: vec![],
            deny_ports: vec![25],
        },
    );
    one(&mut s);
    s.on_timeout(t0 + TIMEOUTS.handshake);
    assert!(matches!(one(&mut s), Action::Close(End::RefusalTimeout)));
}

/// The one place a failure becomes a reply, every case.
#[test]
fn every_failure_has_its_reply() {
    let t = || Target::Addr(addr("10.0.0.1:80"));
    let a = addr("10.0.0.1:80");
    let unreachable = |why| Failure::Unreachable { target: t(), why };
    let cases = [
        (Failure::HandshakeEof, None),
        (Failure::HandshakeTimeout(ms(1)), None),
        (Failure::Handshake(HandshakeError::AuthFailed), None),
        (
            Failure::Unsupported {
                command: socks5::Command::Bind,
                target: t(),
            },
            Some(Reply::CommandNotSupported),
        ),
        (Failure::Denied(t()), Some(Reply::NotAllowed)),
        (
            unreachable(Unreachable::Resolve(io::ErrorKind::Other.into())),
            Some(Reply::HostUnreachable),
        ),
        (
            unreachable(Unreachable::NoAddress),
            Some(Reply::HostUnreachable),
        ),
        (unreachable(Unreachable::AllDenied), Some(Reply::NotAllowed)),
        (
            unreachable(Unreachable::ResolveTimeout(ms(1))),
            Some(Reply::TtlExpired),
        ),
        (
            unreachable(Unreachable::NoAnswer(a)),
            Some(Reply::TtlExpired),
        ),
        (
            unreachable(Unreachable::Timeout {
                timeout: ms(1),
                tried: 1,
                of: 1,
                last: Some(a),
                before: None,
            }),
            Some(Reply::TtlExpired),
        ),
        (
            unreachable(Unreachable::Connect(a, refused())),
            Some(Reply::ConnectionRefused),
        ),
        (
            unreachable(Unreachable::Connect(
                a,
                io::Error::from_raw_os_error(libc::EHOSTUNREACH),
            )),
            Some(Reply::HostUnreachable),
        ),
        (
            unreachable(Unreachable::Connect(
                a,
                io::Error::from_raw_os_error(libc::ENETUNREACH),
            )),
            Some(Reply::NetworkUnreachable),
        ),
    ];
    for (failure, want) in cases {
        assert_eq!(failure.reply(), want, "{failure}");
        assert!(!failure.to_string().is_empty());
    }
}
