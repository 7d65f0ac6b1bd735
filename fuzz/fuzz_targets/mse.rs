//! MSE / PE handshake (`reactor_bittorrent::mse`): both roles, hostile and honest.
//!
//! Input: key material, policies, paddings, an initial payload (IA), the cuts the
//! bytes arrive in, and a mode. Modes and properties:
//! - hostile: an [`Initiator`] or a [`Responder`] is fed the fuzzer's bytes in the
//!   fuzzer's cuts. `receive` never claims more than it was given, consumes nothing
//!   while the secret is pending or after the end, holds no more than the bounds
//!   the module documents (`REQ1_SYNC_WINDOW`, `VC_SYNC_WINDOW`,
//!   `max_initial_payload`), a failure is sticky (every later call returns the same
//!   error), and `set_secret` out of turn is refused without poisoning the state.
//! - honest: an initiator and a responder talk through two byte pipes cut by the
//!   fuzzer, with the secret computed inline or through the `SecretJob` path. When
//!   the policies share a method, both finish with the method the responder's
//!   policy selects, the same info-hash, the responder holding exactly the IA sent,
//!   and the payload that follows the handshake (ENCRYPT2) decrypting to what was
//!   sent both ways; when they share none, the responder fails with
//!   `NoCommonMethod` and the initiator never finishes.
//! - tampered: the honest exchange with one byte of either direction changed or
//!   inserted: it ends (finished or failed) within a bounded number of steps,
//!   never panics, and a finished responder still holds at most
//!   `max_initial_payload` bytes of IA.
//!
//! Padding lengths are fixed by the input (`Padding::Fixed`), so every length in
//! an exchange comes from the input; pad *contents* are random (the module draws
//! them), which cannot change where a valid handshake ends.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::mse::{
    CryptoMethod, Established, Initiator, InitiatorConfig, KeyPair, MAX_PAD_LEN, MseError, Padding,
    Policy, Progress, REQ1_SYNC_WINDOW, Responder, ResponderConfig, SharedSecret, VC_SYNC_WINDOW,
};
use reactor_fuzz::pieces;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum P {
    PlaintextOnly,
    Rc4Only,
    PreferRc4,
    PreferPlaintext,
}

impl P {
    fn policy(self) -> Policy {
        match self {
            P::PlaintextOnly => Policy::PlaintextOnly,
            P::Rc4Only => Policy::Rc4Only,
            P::PreferRc4 => Policy::PreferRc4,
            P::PreferPlaintext => Policy::PreferPlaintext,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Mode {
    HostileResponder,
    HostileInitiator,
    Honest,
    /// Change (`insert == false`) or insert a byte at `at` of the A->B (`to_b`) or
    /// B->A stream.
    Tampered {
        to_b: bool,
        at: u16,
        byte: u8,
        insert: bool,
    },
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    mode: Mode,
    a_private: [u8; 20],
    b_private: [u8; 20],
    info_hash: [u8; 20],
    /// Further torrents the responder serves.
    others: Vec<[u8; 20]>,
    a_policy: P,
    b_policy: P,
    a_pad: u16,
    b_pad: u16,
    max_ia: u16,
    ia: &'a [u8],
    cuts_a: Vec<u16>,
    cuts_b: Vec<u16>,
    /// Use `take_secret_job` + `set_secret` instead of `compute_secret_inline`.
    jobs: bool,
    /// Payload each side sends once finished.
    payload_a: &'a [u8],
    payload_b: &'a [u8],
    hostile: &'a [u8],
}

fn keypair(private: [u8; 20], fallback: u8) -> KeyPair {
    KeyPair::from_private(private).unwrap_or_else(|_| {
        let mut p = [0u8; 20];
        p[19] = fallback;
        KeyPair::from_private(p).expect("nonzero key")
    })
}

fn pad(n: u16) -> Padding {
    Padding::Fixed(n % (MAX_PAD_LEN + 1))
}

/// A secret computed for another exchange (keys no input uses), made once.
fn foreign_secret() -> SharedSecret {
    static S: OnceLock<SharedSecret> = OnceLock::new();
    S.get_or_init(|| {
        let other = KeyPair::from_private([9; 20]).expect("nonzero");
        let mut a = Initiator::new(
            KeyPair::from_private([7; 20]).expect("nonzero"),
            [0; 20],
            b"",
            InitiatorConfig::default(),
        )
        .expect("config");
        a.receive(other.public_key()).expect("a valid key");
        a.take_secret_job().expect("pending").compute()
    })
    .clone()
}

/// What a role needs from the driver.
trait Side {
    fn receive(&mut self, input: &[u8], torrents: &[[u8; 20]]) -> Result<usize, MseError>;
    fn take_output(&mut self, out: &mut Vec<u8>);
    fn poll(&self) -> Progress;
    fn secret(&mut self, jobs: bool) -> Result<(), MseError>;
    fn misuse_secret(&mut self);
}

macro_rules! side {
    ($t:ty, |$s:ident, $input:ident, $torrents:ident| $recv:expr) => {
        impl Side for $t {
            fn receive(
                &mut self,
                $input: &[u8],
                $torrents: &[[u8; 20]],
            ) -> Result<usize, MseError> {
                let $s = self;
                $recv
            }
            fn take_output(&mut self, out: &mut Vec<u8>) {
                <$t>::take_output(self, out)
            }
            fn poll(&self) -> Progress {
                <$t>::poll(self)
            }
            fn secret(&mut self, jobs: bool) -> Result<(), MseError> {
                if jobs {
                    let job = self.take_secret_job().expect("a job while NeedSecret");
                    assert!(
                        self.take_secret_job().is_none(),
                        "the job is handed out once"
                    );
                    self.set_secret(job.compute())
                } else {
                    self.compute_secret_inline()
                }
            }
            fn misuse_secret(&mut self) {
                // A secret for another exchange (or none pending) is refused and
                // changes nothing.
                let before = self.poll();
                assert_eq!(
                    self.set_secret(foreign_secret()),
                    Err(MseError::UnexpectedSecret)
                );
                assert_eq!(self.poll(), before);
            }
        }
    };
}

side!(Initiator, |s, input, _t| s.receive(input));
side!(Responder, |s, input, t| s.receive(input, t));

/// Feeds `stream` to `side` in `cuts`, holding unconsumed bytes as a caller would.
/// Returns how many bytes the side consumed in all, and its final progress.
fn feed_hostile<S: Side>(side: &mut S, stream: &[u8], cuts: &[u16], bound: usize, jobs: bool) {
    let torrents = [[0u8; 20]];
    let mut held: Vec<u8> = Vec::new();
    let mut consumed = 0usize;
    let mut failed: Option<MseError> = None;
    for piece in pieces(stream, cuts, 700) {
        held.extend_from_slice(piece);
        loop {
            let before = side.poll();
            match side.receive(&held, &torrents) {
                Ok(n) => {
                    assert!(failed.is_none(), "a failure is sticky");
                    assert!(n <= held.len(), "consumed {n} of {}", held.len());
                    if matches!(before, Progress::NeedSecret | Progress::Done) {
                        assert_eq!(n, 0, "consumed while {before:?}");
                    }
                    held.drain(..n);
                    consumed += n;
                }
                Err(e) => {
                    if let Some(f) = &failed {
                        assert_eq!(&e, f, "a failure is sticky");
                    }
                    assert_eq!(side.poll(), Progress::Failed(e.clone()));
                    failed = Some(e);
                }
            }
            assert!(consumed <= bound, "consumed {consumed} > bound {bound}");
            let mut out = Vec::new();
            side.take_output(&mut out);
            assert!(out.len() <= 96 + 512 + 20 + 20 + 16 + 512 + 65535 + 2);
            if side.poll() == Progress::NeedSecret {
                side.misuse_secret();
                side.secret(jobs).expect("our own secret is accepted");
                continue;
            }
            side.misuse_secret();
            break;
        }
        if failed.is_some() || side.poll() == Progress::Done {
            // A finished or failed handshake consumes nothing more.
            if let Ok(n) = side.receive(&held, &torrents) {
                assert_eq!(n, 0);
            }
        }
    }
}

/// One direction of the honest exchange: bytes in flight and bytes the receiver
/// holds but has not consumed.
#[derive(Default)]
struct Pipe {
    wire: Vec<u8>,
    held: Vec<u8>,
    sent: usize,
    tamper: Option<(usize, u8, bool)>,
    cut: usize,
}

impl Pipe {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some((at, byte, insert)) = self.tamper
                && at == self.sent
            {
                if insert {
                    self.wire.push(byte);
                    self.wire.push(b);
                } else {
                    self.wire.push(b ^ byte.max(1));
                }
                self.sent += 1;
                continue;
            }
            self.wire.push(b);
            self.sent += 1;
        }
    }

    /// Delivers the next piece; true if anything moved.
    fn deliver(&mut self, cuts: &[u16]) -> bool {
        if self.wire.is_empty() {
            return false;
        }
        let c = cuts
            .get(self.cut % cuts.len().max(1))
            .copied()
            .unwrap_or(u16::MAX);
        self.cut += 1;
        let n = (usize::from(c) % 300).max(1).min(self.wire.len());
        self.held.extend(self.wire.drain(..n));
        true
    }
}

fn step<S: Side>(side: &mut S, inbox: &mut Pipe, outbox: &mut Pipe, t: &[[u8; 20]], jobs: bool) {
    if side.poll() == Progress::NeedSecret {
        side.secret(jobs).expect("our own secret");
    }
    if side.poll() == Progress::NeedInput && !inbox.held.is_empty() {
        if let Ok(n) = side.receive(&inbox.held, t) {
            assert!(n <= inbox.held.len());
            inbox.held.drain(..n);
        }
        if side.poll() == Progress::NeedSecret {
            side.secret(jobs).expect("our own secret");
            if let Ok(n) = side.receive(&inbox.held, t) {
                inbox.held.drain(..n);
            }
        }
    }
    let mut out = Vec::new();
    side.take_output(&mut out);
    outbox.push(&out);
}

fn finished(p: &Progress) -> bool {
    matches!(p, Progress::Done | Progress::Failed(_))
}

/// Sends `payload` through an established side's cipher (or in the clear).
fn seal(e: &mut Established, payload: &[u8]) -> Vec<u8> {
    let mut v = payload.to_vec();
    if let Some(c) = &mut e.cipher {
        c.encrypt(&mut v);
    }
    v
}

fn open(e: &mut Established, bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    if let Some(c) = &mut e.cipher {
        c.decrypt(&mut v);
    }
    v
}

fn exchange(i: &Input<'_>, tamper: Option<(bool, usize, u8, bool)>) {
    let ia = &i.ia[..i.ia.len().min(2048)];
    let a_cfg = InitiatorConfig {
        policy: i.a_policy.policy(),
        padding: pad(i.a_pad),
    };
    let b_cfg = ResponderConfig {
        policy: i.b_policy.policy(),
        padding: pad(i.b_pad),
        max_initial_payload: i.max_ia,
    };
    let mut a = Initiator::new(keypair(i.a_private, 1), i.info_hash, ia, a_cfg).expect("config");
    let mut b = Responder::new(keypair(i.b_private, 2), b_cfg).expect("config");
    let mut torrents: Vec<[u8; 20]> = i.others.iter().take(4).copied().collect();
    torrents.push(i.info_hash);

    let mut a2b = Pipe::default();
    let mut b2a = Pipe::default();
    if let Some((to_b, at, byte, insert)) = tamper {
        let p = if to_b { &mut a2b } else { &mut b2a };
        p.tamper = Some((at, byte, insert));
    }
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 10_000, "the exchange does not end");
        step(&mut a, &mut b2a, &mut a2b, &torrents, i.jobs);
        step(&mut b, &mut a2b, &mut b2a, &torrents, i.jobs);
        let moved = a2b.deliver(&i.cuts_b) | b2a.deliver(&i.cuts_a);
        let (pa, pb) = (a.poll(), b.poll());
        if finished(&pa) && finished(&pb) {
            break;
        }
        if !moved && !a.has_output() && !b.has_output() {
            // Nothing in flight and nobody has anything to say: the checks
            // below say whether that stop was allowed.
            break;
        }
    }
    let common = i.b_policy.policy().select(i.a_policy.policy().bits());
    let (pa, pb) = (a.poll(), b.poll());
    if tamper.is_some() {
        if pb == Progress::Done {
            let e = b.finish().expect("done");
            assert!(e.initial_payload.len() <= usize::from(i.max_ia));
        }
        return;
    }
    let Some(method) = common else {
        assert!(
            matches!(pb, Progress::Failed(MseError::NoCommonMethod { .. })),
            "{pb:?}"
        );
        assert_ne!(pa, Progress::Done);
        return;
    };
    if ia.len() > usize::from(i.max_ia) {
        assert_eq!(
            pb,
            Progress::Failed(MseError::InitialPayloadTooLong {
                len: ia.len() as u16,
                max: i.max_ia
            })
        );
        return;
    }
    assert_eq!(pa, Progress::Done, "initiator: {pa:?} (B {pb:?})");
    assert_eq!(pb, Progress::Done, "responder: {pb:?}");
    // Whatever each side still holds is payload: none was sent yet.
    assert!(a2b.held.is_empty() && a2b.wire.is_empty());
    let mut ea = a.finish().expect("done");
    let mut eb = b.finish().expect("done");
    assert_eq!(ea.method, method);
    assert_eq!(eb.method, method);
    assert_eq!(ea.cipher.is_some(), method == CryptoMethod::Rc4);
    assert_eq!(eb.cipher.is_some(), method == CryptoMethod::Rc4);
    assert_eq!(ea.info_hash, i.info_hash);
    assert_eq!(eb.info_hash, i.info_hash);
    assert_eq!(eb.initial_payload, ia);
    assert!(ea.initial_payload.is_empty());
    // The responder's last handshake bytes may still be in flight to A, followed
    // by its payload: A's leftovers after the handshake are B's payload.
    let mut to_a = std::mem::take(&mut b2a.held);
    to_a.append(&mut b2a.wire);
    to_a.append(&mut eb.unsent);
    assert!(ea.unsent.is_empty());
    let sealed_b = seal(&mut eb, i.payload_b);
    to_a.extend_from_slice(&sealed_b);
    assert_eq!(open(&mut ea, &to_a), i.payload_b);
    let sealed_a = seal(&mut ea, i.payload_a);
    assert_eq!(open(&mut eb, &sealed_a), i.payload_a);
}

fuzz_target!(|i: Input<'_>| {
    match i.mode {
        Mode::HostileResponder => {
            let cfg = ResponderConfig {
                policy: i.b_policy.policy(),
                padding: pad(i.b_pad),
                max_initial_payload: i.max_ia,
            };
            let mut b = Responder::new(keypair(i.b_private, 2), cfg).expect("config");
            let bound = 96 + REQ1_SYNC_WINDOW + 20 + 14 + 512 + 2 + usize::from(i.max_ia);
            feed_hostile(&mut b, i.hostile, &i.cuts_b, bound, i.jobs);
            if b.poll() == Progress::Done {
                let e = b.finish().expect("done");
                assert!(e.initial_payload.len() <= usize::from(i.max_ia));
            }
        }
        Mode::HostileInitiator => {
            let cfg = InitiatorConfig {
                policy: i.a_policy.policy(),
                padding: pad(i.a_pad),
            };
            let ia = &i.ia[..i.ia.len().min(2048)];
            let mut a =
                Initiator::new(keypair(i.a_private, 1), i.info_hash, ia, cfg).expect("config");
            let bound = 96 + VC_SYNC_WINDOW + 6 + 512;
            feed_hostile(&mut a, i.hostile, &i.cuts_a, bound, i.jobs);
        }
        Mode::Honest => exchange(&i, None),
        Mode::Tampered {
            to_b,
            at,
            byte,
            insert,
        } => exchange(&i, Some((to_b, usize::from(at) % 1400, byte, insert))),
    }
});
