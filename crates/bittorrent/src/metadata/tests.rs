use super::*;

use reactor_test_support::fuzz::xorshift;

/// `on_data`, with the hashing a caller offloads done inline.
fn settle<P: Copy + Eq + std::hash::Hash>(
    f: &mut MetadataFetcher<P>,
    p: Result<Progress<P>, FetchError>,
) -> Result<Progress<P>, FetchError> {
    match p {
        Ok(Progress::Assembled) => {
            let job = f.take_verify_job().expect("a verify job after Assembled");
            assert!(f.take_verify_job().is_none(), "handed out once");
            Ok(f.on_verified(job.run()))
        }
        other => other,
    }
}

/// A plausible info dictionary of exactly `len` bytes (len >= 64).
fn info_of(len: usize, seed: u64) -> Vec<u8> {
    let head = b"d4:name4:test12:piece lengthi16384e6:pieces".to_vec();
    let pieces_len = len - head.len() - 1;
    // The length prefix eats digits from the string itself; adjust until exact.
    let mut n = pieces_len;
    loop {
        let prefix = format!("{n}:");
        if head.len() + prefix.len() + n + 1 == len {
            break;
        }
        n -= 1;
    }
    let mut st = seed | 1;
    let mut out = head;
    out.extend_from_slice(format!("{n}:").as_bytes());
    out.extend((0..n).map(|_| xorshift(&mut st) as u8));
    out.push(b'e');
    assert_eq!(out.len(), len);
    out
}

fn t0() -> Instant {
    Instant::now()
}

// ------------------------------------------------------------------ codec

#[test]
fn codec_bytes_and_round_trip() {
    let mut out = Vec::new();
    MetadataMsg::Request { piece: 0 }.encode(&mut out);
    assert_eq!(out, b"d8:msg_typei0e5:piecei0ee");
    out.clear();
    MetadataMsg::Reject { piece: 7 }.encode(&mut out);
    assert_eq!(out, b"d8:msg_typei2e5:piecei7ee");
    out.clear();
    let data = vec![0xab; 100];
    let msg = MetadataMsg::Data {
        piece: 1,
        total_size: PIECE_LEN as u32 + 100,
        data: &data,
    };
    msg.encode(&mut out);
    assert!(out.starts_with(b"d8:msg_typei1e5:piecei1e10:total_sizei16484ee\xab"));
    assert_eq!(MetadataMsg::decode(&out), Ok(Some(msg)));
    let mut hdr = Vec::new();
    encode_data_header(1, PIECE_LEN as u32 + 100, &mut hdr);
    assert_eq!(&out[..hdr.len()], &hdr[..]);
    for m in [
        MetadataMsg::Request { piece: u32::MAX },
        MetadataMsg::Reject { piece: 0 },
    ] {
        let mut b = Vec::new();
        m.encode(&mut b);
        assert_eq!(MetadataMsg::decode(&b), Ok(Some(m)));
    }
    // A full-size piece and the largest metadata's last piece.
    let full = vec![1u8; PIECE_LEN];
    let m = MetadataMsg::Data {
        piece: MAX_PIECES - 1,
        total_size: MAX_METADATA_SIZE,
        data: &full,
    };
    let mut b = Vec::new();
    m.encode(&mut b);
    assert_eq!(MetadataMsg::decode(&b), Ok(Some(m)));
}

#[test]
fn codec_tolerates_what_bep9_allows() {
    // Unknown msg_type: ignored.
    assert_eq!(MetadataMsg::decode(b"d8:msg_typei3e5:piecei0ee"), Ok(None));
    assert_eq!(MetadataMsg::decode(b"d8:msg_typei-1ee"), Ok(None));
    // Unknown keys, unsorted keys, and libtorrent's total_size in a reject.
    assert_eq!(
        MetadataMsg::decode(b"d5:piecei2e8:msg_typei2e10:total_sizei5e1:xli1eee"),
        Ok(Some(MetadataMsg::Reject { piece: 2 }))
    );
}

#[test]
fn codec_refuses_hostile_messages() {
    let e = |b: &[u8]| MetadataMsg::decode(b).unwrap_err();
    assert_eq!(e(b""), MetadataError::NotADict);
    assert_eq!(e(b"li1ee"), MetadataError::NotADict);
    assert!(matches!(e(b"d8:msg_type"), MetadataError::Bencode(_)));
    assert!(matches!(e(b"d8:msg_typei01ee"), MetadataError::Bencode(_)));
    assert_eq!(e(b"d5:piecei0ee"), MetadataError::MissingKey("msg_type"));
    assert_eq!(e(b"d8:msg_type1:0e"), MetadataError::MissingKey("msg_type"));
    assert_eq!(e(b"d8:msg_typei0ee"), MetadataError::MissingKey("piece"));
    assert_eq!(
        e(b"d8:msg_typei0e5:piecei-1ee"),
        MetadataError::BadPiece(-1)
    );
    assert_eq!(
        e(b"d8:msg_typei0e5:piecei4294967296ee"),
        MetadataError::BadPiece(1 << 32)
    );
    assert_eq!(
        e(b"d8:msg_typei0e5:piecei0eexx"),
        MetadataError::TrailingData { len: 2 }
    );
    assert_eq!(
        e(b"d8:msg_typei1e5:piecei0eexx"),
        MetadataError::MissingKey("total_size")
    );
    assert_eq!(
        e(b"d8:msg_typei1e5:piecei0e10:total_sizei0ee"),
        MetadataError::SizeOutOfRange(0)
    );
    assert_eq!(
        e(b"d8:msg_typei1e5:piecei0e10:total_sizei-5ee"),
        MetadataError::SizeOutOfRange(-5)
    );
    assert_eq!(
        e(format!(
            "d8:msg_typei1e5:piecei0e10:total_sizei{}ee",
            MAX_METADATA_SIZE + 1
        )
        .as_bytes()),
        MetadataError::SizeOutOfRange(i64::from(MAX_METADATA_SIZE) + 1)
    );
    // Out of range: piece 1 of a 10-byte metadata.
    assert_eq!(
        e(b"d8:msg_typei1e5:piecei1e10:total_sizei10eexxxxxxxxxx"),
        MetadataError::PieceOutOfRange {
            piece: 1,
            pieces: 1
        }
    );
    // Wrong lengths: short last piece, short middle piece, empty, one too many.
    assert_eq!(
        e(b"d8:msg_typei1e5:piecei0e10:total_sizei10eexxxxxxxxx"),
        MetadataError::WrongPieceLength {
            piece: 0,
            expected: 10,
            got: 9
        }
    );
    let mut mid = b"d8:msg_typei1e5:piecei0e10:total_sizei20000ee".to_vec();
    mid.extend_from_slice(&[0; 3616]);
    assert_eq!(
        e(&mid),
        MetadataError::WrongPieceLength {
            piece: 0,
            expected: PIECE_LEN,
            got: 3616
        }
    );
    assert_eq!(
        e(b"d8:msg_typei1e5:piecei0e10:total_sizei10ee"),
        MetadataError::WrongPieceLength {
            piece: 0,
            expected: 10,
            got: 0
        }
    );
    // Oversize: a piece longer than 16 KiB inside a big metadata.
    let mut big = b"d8:msg_typei1e5:piecei0e10:total_sizei100000ee".to_vec();
    big.extend_from_slice(&[0; PIECE_LEN + 1]);
    assert!(matches!(
        e(&big),
        MetadataError::WrongPieceLength { got, .. } if got == PIECE_LEN + 1
    ));
    let huge = vec![b'd'; MAX_PAYLOAD_LEN + 1];
    assert_eq!(
        e(&huge),
        MetadataError::TooLarge {
            len: MAX_PAYLOAD_LEN + 1
        }
    );
    // A dictionary too long to be real (padding key) is cut off at MAX_DICT_LEN.
    let padded = format!("d1:x{}:{}8:msg_typei0e5:piecei0ee", 2000, "y".repeat(2000));
    assert!(matches!(
        e(padded.as_bytes()),
        MetadataError::Bencode(BencodeError::TooLarge { .. })
    ));
    for err in [
        MetadataError::TooLarge { len: 1 },
        MetadataError::Bencode(BencodeError::UnexpectedEof),
        MetadataError::NotADict,
        MetadataError::MissingKey("piece"),
        MetadataError::BadPiece(-1),
        MetadataError::SizeOutOfRange(0),
        MetadataError::PieceOutOfRange {
            piece: 1,
            pieces: 1,
        },
        MetadataError::WrongPieceLength {
            piece: 0,
            expected: 1,
            got: 2,
        },
        MetadataError::TrailingData { len: 1 },
    ] {
        assert!(err.to_string().contains("ut_metadata"), "{err}");
    }
}

#[test]
fn decoder_fuzz_never_panics() {
    let mut st = 0x9E37_79B9_7F4A_7C15u64;
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for m in [
        MetadataMsg::Request { piece: 3 },
        MetadataMsg::Reject { piece: 0 },
        MetadataMsg::Data {
            piece: 0,
            total_size: 40,
            data: &[7; 40],
        },
        MetadataMsg::Data {
            piece: 1,
            total_size: PIECE_LEN as u32 + 3,
            data: &[1, 2, 3],
        },
    ] {
        let mut b = Vec::new();
        m.encode(&mut b);
        seeds.push(b);
    }
    let alphabet = b"dile0123456789:-_msg_typepiecetotal_size";
    let mut ok = 0;
    for i in 0..50_000 {
        let mut b = seeds[(xorshift(&mut st) as usize) % seeds.len()].clone();
        let edits = 1 + xorshift(&mut st) % 4;
        for _ in 0..edits {
            let r = xorshift(&mut st);
            let at = (r as usize >> 8) % (b.len() + 1);
            let c = if r.is_multiple_of(3) {
                r as u8
            } else {
                alphabet[(r as usize >> 16) % alphabet.len()]
            };
            match r % 4 {
                0 if at < b.len() => b[at] = c,
                1 => b.insert(at, c),
                2 if at < b.len() => {
                    b.remove(at);
                }
                _ => b.truncate(at),
            }
        }
        if i % 7 == 0 {
            b.extend((0..xorshift(&mut st) % 64).map(|_| xorshift(&mut st) as u8));
        }
        if let Ok(Some(m)) = MetadataMsg::decode(&b) {
            ok += 1;
            if let MetadataMsg::Data {
                piece,
                total_size,
                data,
            } = m
            {
                assert_eq!(piece_len(total_size, piece), Some(data.len()));
            }
            let mut again = Vec::new();
            m.encode(&mut again);
            assert_eq!(MetadataMsg::decode(&again), Ok(Some(m)));
        }
    }
    // The mutations must exercise the accepting paths too.
    assert!(ok > 500, "only {ok} mutated messages decoded");
}

#[test]
fn piece_arithmetic() {
    assert_eq!(piece_count(1), 1);
    assert_eq!(piece_count(PIECE_LEN as u32), 1);
    assert_eq!(piece_count(PIECE_LEN as u32 + 1), 2);
    assert_eq!(piece_count(MAX_METADATA_SIZE), MAX_PIECES);
    assert_eq!(piece_len(PIECE_LEN as u32 + 1, 1), Some(1));
    assert_eq!(piece_len(PIECE_LEN as u32 + 1, 2), None);
    assert_eq!(piece_len(u32::MAX, u32::MAX), None);
}

// ------------------------------------------------------------------ server

fn server(len: usize) -> (MetadataServer<u32>, Vec<u8>, [u8; 20]) {
    let info = info_of(len, len as u64);
    let ih = sha1(&info);
    (MetadataServer::new(info.clone(), &ih).unwrap(), info, ih)
}

#[test]
fn server_checks_what_it_serves() {
    let info = info_of(100, 1);
    assert_eq!(
        MetadataServer::<u32>::new(info.clone(), &[0; 20]).unwrap_err(),
        ServerError::HashMismatch
    );
    assert_eq!(
        MetadataServer::<u32>::new(Vec::new(), &sha1(b"")).unwrap_err(),
        ServerError::BadSize { size: 0 }
    );
    let big = vec![0u8; MAX_METADATA_SIZE as usize + 1];
    assert!(matches!(
        MetadataServer::<u32>::new(big.clone(), &sha1(&big)),
        Err(ServerError::BadSize { .. })
    ));
    let (mut s, info, _) = server(40_000);
    assert_eq!(s.total_size(), 40_000);
    assert_eq!(s.piece_count(), 3);
    assert_eq!(s.info(), &info[..]);
    let now = t0();
    match s.on_request(1, 2, now).unwrap() {
        Reply::Data {
            piece,
            total_size,
            data,
        } => {
            assert_eq!((piece, total_size), (2, 40_000));
            assert_eq!(data, &info[2 * PIECE_LEN..]);
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(
        s.on_request(1, 3, now).unwrap(),
        Reply::Reject {
            piece: 3,
            reason: RejectReason::OutOfRange
        }
    );
    assert_eq!(
        s.on_request(1, 3, now).unwrap().msg(),
        MetadataMsg::Reject { piece: 3 }
    );
}

#[test]
fn server_rate_limits_and_detects_floods() {
    let (mut s, _, _) = server(40_000);
    let limits = ServerLimits::default();
    let capacity = 3 * limits.burst_factor + limits.burst_extra;
    let now = t0();
    for _ in 0..capacity {
        assert!(matches!(s.on_request(9, 0, now), Ok(Reply::Data { .. })));
    }
    assert_eq!(
        s.on_request(9, 0, now).unwrap(),
        Reply::Reject {
            piece: 0,
            reason: RejectReason::RateLimited
        }
    );
    // Another peer has its own bucket.
    assert!(matches!(s.on_request(10, 0, now), Ok(Reply::Data { .. })));
    // One token per refill interval.
    let later = now + limits.refill_interval;
    assert!(matches!(s.on_request(9, 1, later), Ok(Reply::Data { .. })));
    assert!(matches!(
        s.on_request(9, 1, later),
        Ok(Reply::Reject { .. })
    ));
    // Keeping at it while rejected is flooding (the one above counted).
    for _ in 1..limits.flood_limit {
        assert!(matches!(
            s.on_request(9, 1, later),
            Ok(Reply::Reject { .. })
        ));
    }
    assert_eq!(
        s.on_request(9, 1, later),
        Err(ServerError::Flooding {
            rejected: limits.flood_limit + 1
        })
    );
    // Waiting long enough refills the whole bucket, and clears the count.
    let much_later = later + limits.refill_interval * capacity;
    for _ in 0..capacity {
        assert!(matches!(
            s.on_request(9, 2, much_later),
            Ok(Reply::Data { .. })
        ));
    }
    s.peer_gone(9);
    assert!(matches!(
        s.on_request(9, 2, much_later),
        Ok(Reply::Data { .. })
    ));
}

#[test]
fn server_bucket_table_is_bounded() {
    let info = info_of(100, 5);
    let limits = ServerLimits {
        max_peers: 2,
        ..ServerLimits::default()
    };
    let mut s = MetadataServer::with_limits(info.clone(), &sha1(&info), limits).unwrap();
    let now = t0();
    assert!(matches!(s.on_request(1, 0, now), Ok(Reply::Data { .. })));
    assert!(matches!(s.on_request(2, 0, now), Ok(Reply::Data { .. })));
    // Table full, nobody's bucket full again yet: the newcomer waits.
    assert_eq!(
        s.on_request(3, 0, now).unwrap(),
        Reply::Reject {
            piece: 0,
            reason: RejectReason::RateLimited
        }
    );
    // Once the buckets refilled they carry no history and make room.
    let later = now + limits.refill_interval;
    assert!(matches!(s.on_request(3, 0, later), Ok(Reply::Data { .. })));
}

// ------------------------------------------------------------------ fetcher

#[derive(Debug)]
enum Remote {
    Honest(MetadataServer<u32>),
    /// Serves the right size with piece `bad` flipped.
    Liar(MetadataServer<u32>, u32),
    Rejecter,
    Silent,
}

/// Wire-level simulation: every request and reply goes through the codec.
struct Swarm {
    fetcher: MetadataFetcher<u32>,
    remotes: Vec<(u32, Remote)>,
    now: Instant,
    failures: Vec<HashFailure<u32>>,
    done: Option<Completed<u32>>,
}

impl Swarm {
    fn new(ih: [u8; 20]) -> Self {
        Swarm {
            fetcher: MetadataFetcher::new(ih),
            remotes: Vec::new(),
            now: t0(),
            failures: Vec::new(),
            done: None,
        }
    }

    fn join(&mut self, id: u32, remote: Remote, size: Option<u64>) {
        self.fetcher.add_peer(id, size).unwrap();
        self.remotes.push((id, remote));
    }

    /// One round: every peer fills its pipeline, then every request is
    /// answered (so pipelines really fill, as over a network).
    fn round(&mut self) {
        let ids: Vec<u32> = self.remotes.iter().map(|(i, _)| *i).collect();
        let mut sent = Vec::new();
        for id in ids {
            while let Some(piece) = self.fetcher.next_request(id, self.now) {
                let mut req = Vec::new();
                MetadataMsg::Request { piece }.encode(&mut req);
                sent.push((id, req));
            }
        }
        for (id, req) in sent {
            let Some(reply) = self.answer(id, &req) else {
                continue;
            };
            match MetadataMsg::decode(&reply).unwrap().unwrap() {
                MetadataMsg::Data {
                    piece,
                    total_size,
                    data,
                } => {
                    let got = self.fetcher.on_data(id, piece, total_size, data);
                    match settle(&mut self.fetcher, got).unwrap() {
                        Progress::Complete(c) => self.done = Some(c),
                        Progress::HashFailed(f) => self.failures.push(f),
                        _ => {}
                    }
                }
                MetadataMsg::Reject { piece } => {
                    let answered = self.fetcher.on_reject(id, piece, self.now);
                    assert!(answered || self.fetcher.is_complete());
                }
                MetadataMsg::Request { .. } => unreachable!(),
            }
        }
    }

    fn answer(&mut self, id: u32, req: &[u8]) -> Option<Vec<u8>> {
        let Ok(Some(MetadataMsg::Request { piece })) = MetadataMsg::decode(req) else {
            panic!("bad request");
        };
        let now = self.now;
        let remote = &mut self.remotes.iter_mut().find(|(i, _)| *i == id)?.1;
        let mut out = Vec::new();
        match remote {
            Remote::Honest(s) => s.on_request(id, piece, now).unwrap().msg().encode(&mut out),
            Remote::Liar(s, bad) => {
                let bad = *bad;
                match s.on_request(id, piece, now).unwrap() {
                    Reply::Data {
                        piece,
                        total_size,
                        data,
                    } => {
                        let mut forged = data.to_vec();
                        if piece == bad {
                            forged[0] ^= 0xff;
                        }
                        MetadataMsg::Data {
                            piece,
                            total_size,
                            data: &forged,
                        }
                        .encode(&mut out);
                    }
                    r => r.msg().encode(&mut out),
                }
            }
            Remote::Rejecter => MetadataMsg::Reject { piece }.encode(&mut out),
            Remote::Silent => return None,
        }
        Some(out)
    }

    /// Runs until complete or `rounds` are over; returns the rounds used.
    fn run(&mut self, rounds: usize, step: Duration) -> usize {
        for r in 0..rounds {
            if self.done.is_some() {
                return r;
            }
            self.round();
            self.now += step;
        }
        rounds
    }
}

fn honest(info: &[u8], ih: &[u8; 20]) -> Remote {
    Remote::Honest(MetadataServer::new(info.to_vec(), ih).unwrap())
}

#[test]
fn fetch_from_one_peer() {
    let (_, info, ih) = server(40_000);
    let mut sw = Swarm::new(ih);
    sw.join(1, honest(&info, &ih), Some(40_000));
    sw.run(10, Duration::from_millis(100));
    let done = sw.done.expect("complete");
    assert_eq!(done.info, info);
    assert_eq!(done.senders, vec![1]);
    assert!(done.liars.is_empty());
    assert!(sw.fetcher.is_complete());
    assert_eq!(sw.fetcher.next_request(1, sw.now), None);
    assert_eq!(
        sw.fetcher.on_data(1, 0, 40_000, &info[..PIECE_LEN]),
        Ok(Progress::Ignored)
    );
    assert_eq!(sw.fetcher.next_wake(), None);
}

#[test]
fn fetch_tiny_and_maximal_metadata() {
    for len in [64, PIECE_LEN, PIECE_LEN + 1, MAX_METADATA_SIZE as usize] {
        let info = info_of(len, 77);
        let ih = sha1(&info);
        let mut sw = Swarm::new(ih);
        sw.join(1, honest(&info, &ih), Some(len as u64));
        sw.join(2, honest(&info, &ih), Some(len as u64));
        sw.run(2000, Duration::from_millis(300));
        assert_eq!(sw.done.expect("complete").info.len(), len);
    }
}

#[test]
fn pieces_spread_over_peers() {
    let (_, info, ih) = server(7 * PIECE_LEN - 5);
    let mut sw = Swarm::new(ih);
    for id in 1..=4 {
        sw.join(id, honest(&info, &ih), Some(info.len() as u64));
    }
    sw.run(10, Duration::from_millis(100));
    let done = sw.done.expect("complete");
    assert_eq!(done.info, info);
    assert!(done.senders.len() >= 3, "{:?}", done.senders);
}

#[test]
fn a_liar_among_honest_peers_is_found_and_the_fetch_completes() {
    let len = 5 * PIECE_LEN;
    let (_, info, ih) = server(len);
    let mut sw = Swarm::new(ih);
    sw.join(
        1,
        Remote::Liar(MetadataServer::new(info.clone(), &ih).unwrap(), 0),
        Some(len as u64),
    );
    sw.join(2, honest(&info, &ih), Some(len as u64));
    sw.join(3, honest(&info, &ih), Some(len as u64));
    sw.run(50, Duration::from_millis(100));
    let done = sw.done.expect("complete");
    assert_eq!(done.info, info);
    // The liar got piece 0 in the shared first attempt, which failed: no sole
    // sender there, so nobody is convicted yet...
    let first = &sw.failures[0];
    assert_eq!(first.sole_sender, None);
    assert!(first.senders.contains(&1) && first.senders.len() > 1);
    assert_eq!(first.pieces.len(), 5);
    assert_eq!(first.total_size, len as u32);
    // ...the retry came from one peer; if that was the liar it failed alone.
    for f in &sw.failures[1..] {
        assert_eq!(f.sole_sender, Some(1));
    }
    // Either way the verified copy convicts the liar by its piece 0, and only it.
    assert_eq!(done.liars, vec![(1, 0)]);
    assert!(!done.senders.contains(&1) || sw.failures.len() == 1);
}

#[test]
fn a_lone_liar_is_the_sole_sender_and_is_not_asked_again() {
    let len = 3 * PIECE_LEN;
    let (_, info, ih) = server(len);
    let mut sw = Swarm::new(ih);
    sw.join(
        7,
        Remote::Liar(MetadataServer::new(info.clone(), &ih).unwrap(), 2),
        Some(len as u64),
    );
    sw.run(10, Duration::from_millis(100));
    assert!(sw.done.is_none());
    assert_eq!(sw.failures.len(), 1);
    let f = &sw.failures[0];
    assert_eq!(f.sole_sender, Some(7));
    assert_eq!(f.senders, vec![7]);
    // Digests are of what was sent: piece 2 differs from the good one.
    assert_ne!(f.pieces[2].2, sha1(&info[2 * PIECE_LEN..]));
    assert_eq!(f.pieces[0].2, sha1(&info[..PIECE_LEN]));
    assert_eq!(sw.fetcher.next_request(7, sw.now), None);
    // Nobody left to fetch from: no attempt is under way.
    assert_eq!(sw.fetcher.progress(), None);
    // An honest peer arrives: it serves the retry alone.
    sw.join(8, honest(&info, &ih), Some(len as u64));
    sw.run(10, Duration::from_millis(100));
    let done = sw.done.expect("complete");
    assert_eq!(done.senders, vec![8]);
    assert_eq!(done.liars, vec![(7, 2)]);
}

#[test]
fn after_a_failure_the_retry_is_reserved_for_one_peer() {
    let len = 2 * PIECE_LEN;
    let info = info_of(len, 3);
    let ih = sha1(&info);
    let mut f = MetadataFetcher::new(ih);
    let now = t0();
    f.add_peer(1u32, Some(len as u64)).unwrap();
    f.add_peer(2u32, Some(len as u64)).unwrap();
    let p1 = f.next_request(1, now).unwrap();
    let p2 = f.next_request(2, now).unwrap();
    assert_ne!(p1, p2);
    let bad = vec![0u8; PIECE_LEN];
    assert!(matches!(
        f.on_data(1, p1, len as u32, &bad),
        Ok(Progress::Stored { have: 1, total: 2 })
    ));
    let got = f.on_data(2, p2, len as u32, &bad);
    let Ok(Progress::HashFailed(fail)) = settle(&mut f, got) else {
        panic!("expected a hash failure");
    };
    assert_eq!(fail.sole_sender, None);
    assert_eq!(fail.senders.len(), 2);
    // Peer 2 asks first and holds the retry; peer 1 gets nothing meanwhile.
    assert_eq!(f.next_request(2, now), Some(0));
    assert_eq!(f.next_request(1, now), None);
    assert_eq!(f.next_request(2, now), Some(1));
    // Data from peer 1 (asked earlier) is not mixed in.
    assert_eq!(
        f.on_data(1, 0, len as u32, &info[..PIECE_LEN]),
        Ok(Progress::Ignored)
    );
    // The holder leaves: the other peer takes over.
    f.peer_gone(2);
    assert_eq!(f.next_request(1, now), Some(0));
}

#[test]
fn rejects_move_the_work_to_others() {
    let len = 4 * PIECE_LEN;
    let (_, info, ih) = server(len);
    let mut sw = Swarm::new(ih);
    sw.join(1, Remote::Rejecter, Some(len as u64));
    sw.join(2, honest(&info, &ih), Some(len as u64));
    sw.run(1, Duration::ZERO);
    // Peer 1 rejected its first requests and rests for a minute.
    assert_eq!(sw.fetcher.next_request(1, sw.now), None);
    sw.run(20, Duration::from_millis(100));
    let done = sw.done.expect("complete");
    assert_eq!(done.senders, vec![2]);
    // An unrequested reject is ignored.
    let mut f = MetadataFetcher::new(ih);
    f.add_peer(5u32, Some(len as u64)).unwrap();
    assert!(!f.on_reject(5, 0, sw.now));
    assert!(!f.on_reject(6, 0, sw.now));
}

#[test]
fn reject_backoff_ends() {
    let len = 2 * PIECE_LEN;
    let mut f = MetadataFetcher::new([0; 20]);
    let now = t0();
    f.add_peer(1u32, Some(len as u64)).unwrap();
    assert_eq!(f.next_request(1, now), Some(0));
    assert!(f.on_reject(1, 0, now));
    let cfg = FetcherConfig::default();
    assert_eq!(f.next_request(1, now + cfg.reject_backoff / 2), None);
    assert_eq!(f.next_wake(), Some(now + cfg.reject_backoff));
    assert_eq!(f.next_request(1, now + cfg.reject_backoff), Some(0));
}

#[test]
fn a_silent_peer_loses_its_pieces_after_the_timeout() {
    let len = 4 * PIECE_LEN;
    let (_, info, ih) = server(len);
    let cfg = FetcherConfig::default();
    let mut f = MetadataFetcher::new(ih);
    let now = t0();
    f.add_peer(1u32, Some(len as u64)).unwrap();
    f.add_peer(2u32, Some(len as u64)).unwrap();
    // Peer 1 (silent) takes 0 and 1, peer 2 takes 2 and 3 and answers.
    assert_eq!(f.next_request(1, now), Some(0));
    assert_eq!(f.next_request(1, now), Some(1));
    assert_eq!(f.next_request(1, now), None, "pipeline of 2");
    assert_eq!(f.next_request(2, now), Some(2));
    assert_eq!(f.next_request(2, now), Some(3));
    for p in [2, 3] {
        let s = p as usize * PIECE_LEN;
        f.on_data(2, p, len as u32, &info[s..s + PIECE_LEN])
            .unwrap();
    }
    // Before the timeout nothing is left for peer 2.
    assert_eq!(f.next_request(2, now + cfg.request_timeout / 2), None);
    assert_eq!(f.next_wake(), Some(now + cfg.request_timeout));
    let later = now + cfg.request_timeout;
    assert_eq!(f.next_request(2, later), Some(0));
    assert_eq!(f.next_request(2, later), Some(1));
    // The silent peer rests, so it does not get them straight back.
    assert_eq!(f.next_request(1, later), None);
    // Its late answer is still welcome (it was asked).
    assert!(matches!(
        f.on_data(1, 0, len as u32, &info[..PIECE_LEN]),
        Ok(Progress::Stored { have: 3, .. })
    ));
    // Peer 2's copy of piece 0 is then a duplicate; piece 1 completes it.
    assert_eq!(
        f.on_data(2, 0, len as u32, &info[..PIECE_LEN]),
        Ok(Progress::Duplicate)
    );
    let got = f.on_data(2, 1, len as u32, &info[PIECE_LEN..2 * PIECE_LEN]);
    let done = settle(&mut f, got).unwrap();
    let Progress::Complete(c) = done else {
        panic!("{done:?}")
    };
    assert_eq!(c.info, info);
    assert_eq!(c.senders, vec![1, 2]);
}

#[test]
fn silent_peers_alone_are_retried_after_resting() {
    let len = PIECE_LEN;
    let (_, _, ih) = server(len);
    let mut sw = Swarm::new(ih);
    sw.join(1, Remote::Silent, Some(len as u64));
    sw.run(1, Duration::ZERO);
    let cfg = FetcherConfig::default();
    assert_eq!(
        sw.fetcher.next_request(1, sw.now + cfg.request_timeout),
        None
    );
    assert_eq!(
        sw.fetcher.next_request(1, sw.now + cfg.request_timeout * 2),
        Some(0)
    );
}

#[test]
fn disagreeing_sizes_majority_wins() {
    let (_, info, ih) = server(3 * PIECE_LEN);
    let len = info.len() as u64;
    let mut sw = Swarm::new(ih);
    // The first peer announces another size; two announce the real one.
    let other = info_of(2 * PIECE_LEN, 9);
    let other_ih = sha1(&other);
    sw.join(
        1,
        Remote::Honest(MetadataServer::new(other, &other_ih).unwrap()),
        Some(2 * PIECE_LEN as u64),
    );
    sw.join(2, honest(&info, &ih), Some(len));
    sw.join(3, honest(&info, &ih), Some(len));
    sw.run(10, Duration::from_millis(100));
    assert_eq!(sw.done.expect("complete").info, info);
    assert!(sw.failures.is_empty());
}

#[test]
fn size_ties_go_to_the_first_announcer_and_failed_sizes_go_last() {
    let (_, info, ih) = server(2 * PIECE_LEN);
    let len = info.len() as u64;
    let fake = info_of(PIECE_LEN, 4);
    let fake_ih = sha1(&fake);
    let mut sw = Swarm::new(ih);
    // Two peers each: the wrong metadata's announcers come first.
    sw.join(
        1,
        Remote::Honest(MetadataServer::new(fake.clone(), &fake_ih).unwrap()),
        Some(PIECE_LEN as u64),
    );
    sw.join(
        2,
        Remote::Honest(MetadataServer::new(fake, &fake_ih).unwrap()),
        Some(PIECE_LEN as u64),
    );
    sw.join(3, honest(&info, &ih), Some(len));
    sw.join(4, honest(&info, &ih), Some(len));
    sw.run(10, Duration::from_millis(100));
    // The wrong size fails once (sole sender 1, excluded), then the other
    // size has fewer failures and wins although peer 2 still announces the first.
    assert_eq!(sw.failures.len(), 1);
    assert_eq!(sw.failures[0].sole_sender, Some(1));
    assert_eq!(sw.done.expect("complete").info, info);
}

#[test]
fn a_peer_changing_its_size_loses_its_requests() {
    let len = 3 * PIECE_LEN;
    let mut f = MetadataFetcher::new([1; 20]);
    let now = t0();
    f.add_peer(1u32, Some(len as u64)).unwrap();
    assert_eq!(f.next_request(1, now), Some(0));
    // A second handshake with another size.
    f.add_peer(1, Some(2 * PIECE_LEN as u64)).unwrap();
    assert_eq!(
        f.on_data(1, 0, len as u32, &[0; PIECE_LEN]),
        Err(FetchError::TotalSizeChanged {
            announced: Some(2 * PIECE_LEN as u32),
            got: len as u32
        })
    );
    // Piece 0 of the new size was never asked of it.
    assert_eq!(
        f.on_data(1, 0, 2 * PIECE_LEN as u32, &[0; PIECE_LEN]),
        Err(FetchError::Unrequested { piece: 0 })
    );
    // The same handshake again changes nothing.
    assert_eq!(f.next_request(1, now), Some(0));
    f.add_peer(1, Some(2 * PIECE_LEN as u64)).unwrap();
    assert!(matches!(
        f.on_data(1, 0, 2 * PIECE_LEN as u32, &[0; PIECE_LEN]),
        Ok(Progress::Stored { .. })
    ));
}

#[test]
fn absurd_sizes_are_not_trusted() {
    let mut f = MetadataFetcher::new([0; 20]);
    let now = t0();
    for (id, size) in [
        (1u32, 0u64),
        (2, u64::from(MAX_METADATA_SIZE) + 1),
        (3, u64::MAX),
    ] {
        let e = f.add_peer(id, Some(size)).unwrap_err();
        assert_eq!(e, FetchError::AbsurdSize { size });
        assert!(!e.is_protocol_violation());
        assert_eq!(f.next_request(id, now), None);
    }
    // No size at all: tracked, not asked.
    f.add_peer(4, None).unwrap();
    assert_eq!(f.next_request(4, now), None);
    assert_eq!(
        f.on_data(4, 0, 10, &[0; 10]),
        Err(FetchError::TotalSizeChanged {
            announced: None,
            got: 10
        })
    );
    assert_eq!(f.metadata_size(), None);
    // A sane later handshake makes it useful.
    f.add_peer(2, Some(100)).unwrap();
    assert_eq!(f.next_request(2, now), Some(0));
}

#[test]
fn hostile_data_is_refused_and_stores_nothing() {
    let len = 2 * PIECE_LEN + 10;
    let info = info_of(len, 11);
    let mut f = MetadataFetcher::new(sha1(&info));
    let now = t0();
    f.add_peer(1u32, Some(len as u64)).unwrap();
    assert_eq!(f.next_request(1, now), Some(0));
    assert_eq!(f.next_request(1, now), Some(1));
    let l = len as u32;
    let cases: Vec<(u32, u32, Vec<u8>, FetchError)> = vec![
        // total_size changed mid-way
        (
            0,
            l + 1,
            vec![0; PIECE_LEN],
            FetchError::TotalSizeChanged {
                announced: Some(l),
                got: l + 1,
            },
        ),
        // out of range
        (
            3,
            l,
            vec![0; 10],
            FetchError::PieceOutOfRange {
                piece: 3,
                pieces: 3,
            },
        ),
        (
            u32::MAX,
            l,
            vec![0; 10],
            FetchError::PieceOutOfRange {
                piece: u32::MAX,
                pieces: 3,
            },
        ),
        // short, oversize, last piece too long
        (
            0,
            l,
            vec![0; PIECE_LEN - 1],
            FetchError::WrongPieceLength {
                piece: 0,
                expected: PIECE_LEN,
                got: PIECE_LEN - 1,
            },
        ),
        (
            0,
            l,
            vec![0; PIECE_LEN + 1],
            FetchError::WrongPieceLength {
                piece: 0,
                expected: PIECE_LEN,
                got: PIECE_LEN + 1,
            },
        ),
        (
            2,
            l,
            vec![0; 11],
            FetchError::WrongPieceLength {
                piece: 2,
                expected: 10,
                got: 11,
            },
        ),
        // never asked
        (2, l, vec![0; 10], FetchError::Unrequested { piece: 2 }),
    ];
    for (piece, total, data, want) in cases {
        let got = f.on_data(1, piece, total, &data).unwrap_err();
        assert!(got.is_protocol_violation());
        assert!(!got.to_string().is_empty());
        assert_eq!(got, want);
    }
    // Unknown peer.
    assert_eq!(
        f.on_data(99, 0, l, &[0; PIECE_LEN]),
        Err(FetchError::Unrequested { piece: 0 })
    );
    assert_eq!(f.progress(), Some((0, 3)));
    // The honest answers still work.
    assert!(matches!(
        f.on_data(1, 0, l, &info[..PIECE_LEN]),
        Ok(Progress::Stored { have: 1, total: 3 })
    ));
}

#[test]
fn peer_table_is_bounded() {
    let cfg = FetcherConfig {
        max_peers: 2,
        ..FetcherConfig::default()
    };
    let mut f = MetadataFetcher::with_config([0; 20], cfg);
    f.add_peer(1u32, Some(10)).unwrap();
    f.add_peer(2, Some(10)).unwrap();
    assert_eq!(f.add_peer(3, Some(10)), Err(FetchError::TooManyPeers));
    f.add_peer(1, Some(10)).unwrap();
    f.peer_gone(2);
    f.add_peer(3, Some(10)).unwrap();
}

#[test]
fn when_its_announcers_leave_the_size_is_chosen_again() {
    let small = 2 * PIECE_LEN;
    let info = info_of(3 * PIECE_LEN, 21);
    let ih = sha1(&info);
    let mut f = MetadataFetcher::new(ih);
    let now = t0();
    f.add_peer(1u32, Some(small as u64)).unwrap();
    f.add_peer(2u32, Some(info.len() as u64)).unwrap();
    assert_eq!(f.next_request(1, now), Some(0));
    f.on_data(1, 0, small as u32, &[0; PIECE_LEN]).unwrap();
    // Peer 2 has another size: not asked while the stored size has an announcer.
    assert_eq!(f.next_request(2, now), None);
    f.peer_gone(1);
    assert_eq!(f.next_request(2, now), Some(0));
    assert_eq!(f.metadata_size(), Some(info.len() as u32));
}

#[test]
fn fetch_error_messages() {
    for e in [
        FetchError::AbsurdSize { size: 0 },
        FetchError::TooManyPeers,
        FetchError::TotalSizeChanged {
            announced: Some(1),
            got: 2,
        },
        FetchError::TotalSizeChanged {
            announced: None,
            got: 2,
        },
        FetchError::PieceOutOfRange {
            piece: 1,
            pieces: 1,
        },
        FetchError::WrongPieceLength {
            piece: 0,
            expected: 1,
            got: 2,
        },
        FetchError::Unrequested { piece: 0 },
    ] {
        assert!(e.to_string().contains("metadata") || e.to_string().contains("peers"));
    }
    for e in [
        ServerError::BadSize { size: 0 },
        ServerError::HashMismatch,
        ServerError::Flooding { rejected: 65 },
    ] {
        assert!(e.to_string().contains("metadata"));
    }
}

/// Randomised peers (honest, lying, rejecting, silent) in a random order and
/// timing: the fetch always ends with the right bytes, no honest peer is ever
/// a sole sender or a proven liar, and memory stays at one buffer.
#[test]
fn random_swarms_always_converge() {
    let mut st = 0xD1B5_4A32_D192_ED03u64;
    let mut slowest = 0;
    for round in 0..300 {
        let len = 1 + (xorshift(&mut st) % (6 * PIECE_LEN as u64)) as usize;
        let len = len.max(64);
        let info = info_of(len, round);
        let ih = sha1(&info);
        let mut sw = Swarm::new(ih);
        let n = 2 + xorshift(&mut st) % 5;
        let mut liars = Vec::new();
        for id in 0..n as u32 {
            let kind = xorshift(&mut st) % 5;
            let remote = match kind {
                0 => {
                    liars.push(id);
                    let pieces = piece_count(len as u32);
                    Remote::Liar(
                        MetadataServer::new(info.clone(), &ih).unwrap(),
                        (xorshift(&mut st) % u64::from(pieces)) as u32,
                    )
                }
                1 => Remote::Rejecter,
                2 => Remote::Silent,
                _ => honest(&info, &ih),
            };
            sw.join(id, remote, Some(len as u64));
        }
        // At least one honest peer, last.
        sw.join(100, honest(&info, &ih), Some(len as u64));
        slowest = slowest.max(sw.run(3000, Duration::from_secs(1)));
        let done = sw
            .done
            .unwrap_or_else(|| panic!("round {round} did not finish"));
        assert_eq!(done.info, info);
        for f in &sw.failures {
            if let Some(s) = f.sole_sender {
                assert!(liars.contains(&s), "honest {s} convicted in round {round}");
            }
        }
        for (l, _) in &done.liars {
            assert!(
                liars.contains(l),
                "honest {l} called a liar in round {round}"
            );
        }
    }
    // Silent and rejecting peers slow the fetch down but never stall it: the
    // worst swarm finishes within a few minutes of simulated time.
    eprintln!("slowest swarm: {slowest} s");
    assert!(slowest < 600, "slowest swarm took {slowest} s");
}

#[test]
fn silent_peers_cannot_starve_an_honest_one() {
    for retry in [false, true] {
        let len = PIECE_LEN;
        let (_, info, ih) = server(len);
        let mut sw = Swarm::new(ih);
        if retry {
            // A failed first attempt puts the fetcher in one-peer retry mode.
            sw.join(
                9,
                Remote::Liar(MetadataServer::new(info.clone(), &ih).unwrap(), 0),
                Some(len as u64),
            );
            sw.run(1, Duration::ZERO);
            assert_eq!(sw.failures.len(), 1);
        }
        sw.join(1, Remote::Silent, Some(len as u64));
        sw.join(2, Remote::Silent, Some(len as u64));
        sw.join(3, Remote::Rejecter, Some(len as u64));
        sw.join(4, honest(&info, &ih), Some(len as u64));
        let secs = sw.run(600, Duration::from_secs(1));
        assert!(sw.done.is_some(), "retry {retry}: not done");
        assert!(secs <= 25, "retry {retry}: took {secs} s");
    }
}
