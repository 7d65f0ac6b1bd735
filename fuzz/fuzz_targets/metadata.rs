//! BEP 9 `ut_metadata` (`reactor_bittorrent::metadata`): the message codec, the
//! serving side and the fetching state machine.
//!
//! Input: one byte of options, then either a payload (bytes) or a structured run
//! of a fetch. Properties:
//! - codec: a decoded message encodes to a payload that decodes to the same
//!   message, and `encode_data_header` + the piece bytes is the `Data` encoding;
//!   a decoded `Data` piece has exactly the length `piece_len` gives, inside
//!   1..=`MAX_METADATA_SIZE`; a request for a piece goes to a `MetadataServer` of
//!   a metadata of the fuzzer's size, whose answer (encoded, decoded) is exactly
//!   that slice of the metadata or a reject echoing the piece;
//! - fetcher: honest peers (who send the real pieces they are asked for), liars
//!   (who send a changed byte) and garbage senders drive a `MetadataFetcher`
//!   through requests, answers, rejects, departures, unsolicited data, time and
//!   hashing. It never completes with metadata whose SHA-1 is not the info-hash,
//!   never names an honest peer as a liar or a failed attempt's sole sender,
//!   counts pieces up to the piece count only, and once the liars are gone the
//!   honest peers left always finish the fetch.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::metadata::{
    self as md, FetchError, FetcherConfig, MetadataFetcher, MetadataMsg, MetadataServer, PIECE_LEN,
    Progress, Reply,
};
use reactor_fuzz::Clock;
use sha1::{Digest, Sha1};

fn sha1(d: &[u8]) -> [u8; 20] {
    Sha1::digest(d).into()
}

/// A metadata of `len` bytes (1..=3 pieces and a bit), contents from `seed`.
fn metadata(len: u16, seed: u8) -> Vec<u8> {
    let n = usize::from(len) % (3 * PIECE_LEN + 100) + 1;
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn codec(payload: &[u8], size: u16, seed: u8) {
    match MetadataMsg::decode(payload) {
        Ok(Some(m)) => {
            let mut out = Vec::new();
            m.encode(&mut out);
            assert_eq!(MetadataMsg::decode(&out), Ok(Some(m)), "round trip");
            match m {
                MetadataMsg::Data {
                    piece,
                    total_size,
                    data,
                } => {
                    assert!((1..=md::MAX_METADATA_SIZE).contains(&total_size));
                    assert_eq!(md::piece_len(total_size, piece), Some(data.len()));
                    assert!(piece < md::piece_count(total_size));
                    let mut hdr = Vec::new();
                    md::encode_data_header(piece, total_size, &mut hdr);
                    hdr.extend_from_slice(data);
                    assert_eq!(hdr, out);
                }
                MetadataMsg::Request { piece } => serve(piece, size, seed),
                MetadataMsg::Reject { .. } => {}
            }
        }
        Ok(None) => assert!(payload.len() <= md::MAX_PAYLOAD_LEN),
        Err(e) => assert_eq!(
            matches!(e, md::MetadataError::TooLarge { .. }),
            payload.len() > md::MAX_PAYLOAD_LEN
        ),
    }
}

fn serve(piece: u32, size: u16, seed: u8) {
    let info = metadata(size, seed);
    let hash = sha1(&info);
    let mut server: MetadataServer<u8> = MetadataServer::new(info.clone(), &hash).expect("valid");
    assert!(MetadataServer::<u8>::new(info.clone(), &[0; 20]).is_err() || hash == [0; 20]);
    let clock = Clock::new();
    let reply = server
        .on_request(1, piece, clock.now())
        .expect("one request is no flood");
    let mut out = Vec::new();
    reply.msg().encode(&mut out);
    let back = MetadataMsg::decode(&out)
        .expect("our reply decodes")
        .expect("known");
    match (reply, back) {
        (
            Reply::Data { .. },
            MetadataMsg::Data {
                piece: p,
                total_size,
                data,
            },
        ) => {
            assert_eq!(p, piece);
            assert_eq!(total_size as usize, info.len());
            let start = piece as usize * PIECE_LEN;
            assert_eq!(data, &info[start..start + data.len()]);
            assert_eq!(Some(data), server.piece(piece));
        }
        (Reply::Reject { .. }, MetadataMsg::Reject { piece: p }) => {
            assert_eq!(p, piece);
            assert!(md::piece_len(info.len() as u32, piece).is_none());
        }
        other => panic!("reply and its encoding differ: {other:?}"),
    }
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum Kind {
    Honest,
    Liar,
    Garbage,
}

#[derive(Arbitrary, Debug)]
enum Event<'a> {
    Add {
        peer: u8,
        size: Option<u32>,
        real: bool,
    },
    Gone(u8),
    Request(u8),
    Answer(u8),
    Reject(u8),
    Unsolicited {
        peer: u8,
        piece: u32,
        total: u32,
        data: &'a [u8],
    },
    Advance(u16),
    Verify,
}

#[derive(Arbitrary, Debug)]
struct Run<'a> {
    len: u16,
    seed: u8,
    kinds: [Kind; 4],
    max_inflight: u8,
    events: Vec<Event<'a>>,
}

struct Fetch {
    f: MetadataFetcher<u8>,
    info: Vec<u8>,
    kinds: [Kind; 4],
    asked: HashMap<u8, Vec<u32>>,
    /// The size each peer announced last (when sane).
    sizes: HashMap<u8, u32>,
    /// Every peer that ever sent a piece that differs from the real one.
    lied: HashSet<u8>,
    clock: Clock,
    done: bool,
}

impl Fetch {
    fn piece(&self, p: u32) -> &[u8] {
        let start = p as usize * PIECE_LEN;
        let len = md::piece_len(self.info.len() as u32, p).expect("in range");
        &self.info[start..start + len]
    }

    fn check(&mut self, r: Result<Progress<u8>, FetchError>) {
        let total = md::piece_count(self.info.len() as u32);
        match r {
            Ok(Progress::Stored { have, total: t }) => {
                assert!(have < t && t <= md::MAX_PIECES);
                let _ = total;
            }
            Ok(Progress::Assembled) => self.verify(),
            Ok(Progress::Complete(c)) => self.complete(c),
            Ok(Progress::HashFailed(h)) => {
                if let Some(s) = h.sole_sender {
                    assert!(self.lied.contains(&s), "honest sole sender {s} blamed");
                }
                assert!(!h.senders.is_empty());
            }
            Ok(Progress::Duplicate | Progress::Ignored) | Err(_) => {}
        }
    }

    fn complete(&mut self, c: md::Completed<u8>) {
        assert!(!self.done, "completed twice");
        assert_eq!(c.info, self.info, "complete with the wrong metadata");
        for (p, _) in &c.liars {
            assert!(self.lied.contains(p), "honest peer {p} named a liar");
        }
        assert!(self.f.is_complete());
        self.done = true;
    }

    fn verify(&mut self) {
        if let Some(job) = self.f.take_verify_job() {
            assert!(self.f.take_verify_job().is_none(), "one job per attempt");
            let v = job.run();
            assert_eq!(v.matches(), sha1(v.data()) == sha1(&self.info));
            let p = self.f.on_verified(v);
            self.check(Ok(p));
        }
    }

    fn answer(&mut self, peer: u8) {
        let Some(p) = self.asked.get_mut(&peer).and_then(|v| v.pop()) else {
            return;
        };
        let real = self.info.len() as u32;
        let size = self.sizes.get(&peer).copied().unwrap_or(real);
        let Some(len) = md::piece_len(size, p) else {
            return;
        };
        let honest = size == real && self.kinds[usize::from(peer % 4)] == Kind::Honest;
        let data = if size == real {
            let mut d = self.piece(p).to_vec();
            if !honest {
                let i = usize::from(peer) % d.len();
                d[i] ^= 0x5a;
            }
            d
        } else {
            vec![peer; len]
        };
        if !honest {
            self.lied.insert(peer);
        }
        let r = self.f.on_data(peer, p, size, &data);
        self.check(r);
    }

    fn request(&mut self, peer: u8) {
        if let Some(p) = self.f.next_request(peer, self.clock.now()) {
            assert!(p < md::MAX_PIECES);
            assert!(!self.done, "a request after completion");
            self.asked.entry(peer).or_default().push(p);
        }
    }
}

fn fetch(run: &Run<'_>) {
    let info = metadata(run.len, run.seed);
    let real = info.len() as u64;
    let cfg = FetcherConfig {
        max_inflight: usize::from(run.max_inflight % 4),
        max_peers: 6,
        ..FetcherConfig::default()
    };
    let mut s = Fetch {
        f: MetadataFetcher::with_config(sha1(&info), cfg),
        info,
        kinds: run.kinds,
        asked: HashMap::new(),
        sizes: HashMap::new(),
        lied: HashSet::new(),
        clock: Clock::new(),
        done: false,
    };
    let mut present: HashSet<u8> = HashSet::new();
    for e in run.events.iter().take(300) {
        match *e {
            Event::Add {
                peer,
                size,
                real: r,
            } => {
                let peer = peer % 8;
                let size = if r { Some(real) } else { size.map(u64::from) };
                match s.f.add_peer(peer, size) {
                    Err(FetchError::TooManyPeers) => assert!(present.len() >= 6),
                    r => {
                        match (r, size) {
                            (Ok(()), Some(n)) => s.sizes.insert(peer, n as u32),
                            _ => s.sizes.remove(&peer),
                        };
                        present.insert(peer);
                        // A new handshake drops what the peer was asked.
                        s.asked.remove(&peer);
                    }
                }
                // A liar may announce any size; only peers announcing the real
                // one can be honest.
                if !r {
                    s.lied.insert(peer);
                }
            }
            Event::Gone(peer) => {
                s.f.peer_gone(peer % 8);
                s.sizes.remove(&(peer % 8));
                present.remove(&(peer % 8));
                s.asked.remove(&(peer % 8));
            }
            Event::Request(peer) => s.request(peer % 8),
            Event::Answer(peer) => s.answer(peer % 8),
            Event::Reject(peer) => {
                // A reject of a request that timed out (and went to another peer)
                // answers nothing any more; either way nothing may break.
                if let Some(p) = s.asked.get_mut(&(peer % 8)).and_then(|v| v.pop()) {
                    s.f.on_reject(peer % 8, p, s.clock.now());
                }
            }
            Event::Unsolicited {
                peer,
                piece,
                total,
                data,
            } => {
                let peer = peer % 8;
                // Anything but the real piece makes the sender a liar.
                let honest = u64::from(total) == real
                    && md::piece_len(total, piece).is_some()
                    && data == s.piece(piece);
                if !honest {
                    s.lied.insert(peer);
                }
                let r = s.f.on_data(peer, piece, total, data);
                s.check(r);
            }
            Event::Advance(ms) => {
                s.clock.advance(Duration::from_millis(u64::from(ms) * 100));
            }
            Event::Verify => s.verify(),
        }
    }
    if s.done {
        return;
    }
    // The liars leave; the honest ones left (or one newcomer) must finish.
    for p in 0..8u8 {
        if s.lied.contains(&p) || s.kinds[usize::from(p % 4)] != Kind::Honest {
            s.f.peer_gone(p);
            present.remove(&p);
        }
    }
    let mut honest: Vec<u8> = present.iter().copied().collect();
    if honest.is_empty() {
        honest.push(100);
        s.kinds = [Kind::Honest; 4];
    }
    honest.sort_unstable();
    for &p in &honest {
        // Reconnected: whatever backoff its silences earned is forgotten.
        s.f.peer_gone(p);
        s.f.add_peer(p, Some(real))
            .expect("room after the liars left");
        s.sizes.insert(p, real as u32);
        s.asked.remove(&p);
    }
    s.verify();
    for _ in 0..64 {
        if s.done {
            return;
        }
        s.clock.advance(Duration::from_secs(3600));
        for &p in &honest {
            while !s.done {
                let before = s.asked.get(&p).map_or(0, Vec::len);
                s.request(p);
                if s.asked.get(&p).map_or(0, Vec::len) == before {
                    break;
                }
                s.answer(p);
            }
        }
        s.verify();
    }
    assert!(s.done, "honest peers could not finish the fetch");
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    if opts & 1 == 0 {
        let size = u16::from(opts) << 7 | u16::from(rest.first().copied().unwrap_or(0));
        codec(rest, size, opts);
    } else if let Ok(run) = Run::arbitrary_take_rest(Unstructured::new(rest)) {
        fetch(&run);
    }
});
