//! The piece picker driven by peers that come and go, send blocks, and fail.
//!
//! Input: a torrent geometry (small) and a list of events: a peer's bitfield,
//! have or have-all, a pick of requests, a block arriving (requested or not,
//! valid or not), a rejected or dropped request, a hash verdict, a piece found on
//! disk, a peer leaving. A model beside the picker keeps each peer's pieces, the
//! requests in flight and the blocks received. Properties: the picker's own
//! cross-checks (`Picker::check_invariants`); availability is the number of
//! connected peers with the piece; requests in flight are exactly the model's;
//! a pick gives valid blocks of pieces the peer has and we lack, never a request
//! the peer already holds; an arriving block is accepted exactly when it is new,
//! names every other peer that asked for it as one to cancel, and completes its
//! piece exactly with the last block; a piece that failed its hash check is
//! requested from one peer at a time; and when everyone has left nothing is in
//! flight, and after every piece is verified the picker is finished and empty.
#![no_main]

use std::collections::{BTreeSet, HashMap, HashSet};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::picker::{BlockRef, PeerKey, Picker, Received};
use reactor_bittorrent::wire::Bitfield;

#[derive(Arbitrary, Debug)]
enum Op {
    Bitfield {
        peer: u8,
        bits: Vec<u8>,
    },
    Have {
        peer: u8,
        piece: u8,
    },
    HaveAll {
        peer: u8,
    },
    Pick {
        peer: u8,
        max: u8,
    },
    /// A block the peer was asked for (`which` indexes its requests).
    Deliver {
        peer: u8,
        which: u8,
    },
    /// Any block, requested or not, well-formed or not.
    Block {
        peer: u8,
        piece: u8,
        begin: u32,
        len: u32,
    },
    Abort {
        peer: u8,
        which: u8,
    },
    Dropped {
        peer: u8,
    },
    Verify {
        piece: u8,
        ok: bool,
    },
    MarkHave {
        piece: u8,
    },
    Leave {
        peer: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    total_len: u16,
    piece_length: u8,
    block_size: u8,
    seed: u64,
    ops: Vec<Op>,
}

const PEERS: u8 = 4;

#[derive(Default)]
struct Model {
    /// Connected peers and their pieces.
    peers: HashMap<PeerKey, Bitfield>,
    /// Outstanding (peer, block) requests.
    inflight: HashSet<(PeerKey, BlockRef)>,
    /// Blocks received of pieces not yet verified (cleared on a failed check).
    received: HashMap<u32, BTreeSet<u32>>,
    /// All blocks in, hash check pending.
    complete: BTreeSet<u32>,
    have: BTreeSet<u32>,
    /// Failed a hash check and not verified since.
    failed: BTreeSet<u32>,
}

fn check(p: &Picker, m: &Model) {
    p.check_invariants();
    assert_eq!(p.requests_in_flight(), m.inflight.len());
    for piece in 0..p.piece_count() {
        let avail = m.peers.values().filter(|b| b.has(piece)).count() as u32;
        assert_eq!(p.availability(piece), avail, "availability of {piece}");
        assert_eq!(p.have().has(piece), m.have.contains(&piece));
    }
    for piece in &m.failed {
        let owners: HashSet<PeerKey> = m
            .inflight
            .iter()
            .filter(|(_, b)| b.piece == *piece)
            .map(|(k, _)| *k)
            .collect();
        assert!(
            owners.len() <= 1,
            "failed piece {piece} requested from {owners:?}"
        );
    }
}

fn block_of(p: &Picker, piece: u32, b: u32) -> BlockRef {
    let size = p.block_size();
    BlockRef {
        piece,
        begin: b * size,
        len: size.min(p.piece_len(piece) - b * size),
    }
}

fn receive(p: &mut Picker, m: &mut Model, peer: PeerKey, block: BlockRef) {
    let mut cancel = Vec::new();
    let r = p.block_received(peer, block, &mut cancel);
    if !p.is_block(block) {
        assert_eq!(r, Received::Invalid);
        assert!(cancel.is_empty());
        return;
    }
    let b = block.begin / p.block_size();
    let done = m.have.contains(&block.piece) || m.complete.contains(&block.piece);
    let got = m.received.entry(block.piece).or_default();
    if done || got.contains(&b) {
        assert_eq!(r, Received::Duplicate, "{block:?}");
        assert!(cancel.is_empty());
        m.inflight.remove(&(peer, block));
        return;
    }
    got.insert(b);
    let complete = got.len() as u32 == p.block_count(block.piece);
    assert_eq!(
        r,
        Received::Accepted {
            piece_complete: complete
        },
        "{block:?}"
    );
    let others: HashSet<PeerKey> = m
        .inflight
        .iter()
        .filter(|(k, bl)| *bl == block && *k != peer)
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(cancel.iter().copied().collect::<HashSet<_>>(), others);
    assert_eq!(cancel.len(), others.len(), "a peer to cancel named twice");
    m.inflight.retain(|(_, bl)| *bl != block);
    if complete {
        m.received.remove(&block.piece);
        m.complete.insert(block.piece);
        m.inflight.retain(|(_, bl)| bl.piece != block.piece);
    }
}

fuzz_target!(|i: Input| {
    let piece_length = u32::from(i.piece_length).max(1) * 4;
    let Ok(mut p) = Picker::with_options(
        u64::from(i.total_len).max(1),
        piece_length,
        u32::from(i.block_size).max(1),
        i.seed,
    ) else {
        return;
    };
    if p.piece_count() > 300 || p.block_count(0) > 64 {
        return;
    }
    let n = p.piece_count();
    let mut m = Model::default();
    let key = |k: u8| PeerKey(u64::from(k % PEERS));
    let mut picks = Vec::new();

    for op in i.ops.iter().take(400) {
        match op {
            Op::Bitfield { peer, bits } => {
                // A peer's bitfield comes first, once: a fresh connection.
                let k = key(*peer);
                if m.peers.contains_key(&k) {
                    continue;
                }
                let mut bf = Bitfield::new(n);
                for piece in 0..n {
                    if bits
                        .get((piece / 8) as usize)
                        .is_some_and(|b| b & (0x80 >> (piece % 8)) != 0)
                    {
                        bf.set(piece);
                    }
                }
                p.peer_bitfield(&bf);
                m.peers.insert(k, bf);
            }
            Op::Have { peer, piece } => {
                let piece = u32::from(*piece) % n;
                if let Some(bf) = m.peers.get_mut(&key(*peer))
                    && bf.set(piece)
                {
                    p.peer_have(piece);
                }
            }
            Op::HaveAll { peer } => {
                let k = key(*peer);
                if m.peers.contains_key(&k) {
                    continue;
                }
                p.peer_have_all();
                m.peers.insert(k, Bitfield::full(n));
            }
            Op::Pick { peer, max } => {
                let k = key(*peer);
                let Some(has) = m.peers.get(&k) else { continue };
                picks.clear();
                let max = usize::from(*max % 16);
                let got = p.next_requests(k, has, max, &mut picks);
                assert_eq!(got, picks.len());
                assert!(got <= max);
                for &b in &picks {
                    assert!(p.is_block(b), "{b:?}");
                    assert!(
                        has.has(b.piece)
                            && !m.have.contains(&b.piece)
                            && !m.complete.contains(&b.piece)
                    );
                    assert!(
                        !m.received
                            .get(&b.piece)
                            .is_some_and(|r| r.contains(&(b.begin / p.block_size())))
                    );
                    assert!(
                        m.inflight.insert((k, b)),
                        "{b:?} requested twice from {k:?}"
                    );
                }
            }
            Op::Deliver { peer, which } => {
                let k = key(*peer);
                let mut mine: Vec<BlockRef> = m
                    .inflight
                    .iter()
                    .filter(|(q, _)| *q == k)
                    .map(|(_, b)| *b)
                    .collect();
                mine.sort_by_key(|b| (b.piece, b.begin));
                if let Some(&b) = mine.get(usize::from(*which) % mine.len().max(1)) {
                    receive(&mut p, &mut m, k, b);
                }
            }
            Op::Block {
                peer,
                piece,
                begin,
                len,
            } => {
                let piece = u32::from(*piece) % (n + 1);
                let b = if begin % 2 == 0 && piece < n {
                    block_of(&p, piece, (begin / 2) % p.block_count(piece))
                } else {
                    BlockRef {
                        piece,
                        begin: *begin,
                        len: *len,
                    }
                };
                receive(&mut p, &mut m, key(*peer), b);
            }
            Op::Abort { peer, which } => {
                let k = key(*peer);
                let mut mine: Vec<BlockRef> = m
                    .inflight
                    .iter()
                    .filter(|(q, _)| *q == k)
                    .map(|(_, b)| *b)
                    .collect();
                mine.sort_by_key(|b| (b.piece, b.begin));
                if let Some(&b) = mine.get(usize::from(*which) % mine.len().max(1)) {
                    assert!(p.abort_block(k, b));
                    m.inflight.remove(&(k, b));
                    assert!(!p.abort_block(k, b), "aborted twice");
                }
            }
            Op::Dropped { peer } => {
                let k = key(*peer);
                p.requests_dropped(k);
                m.inflight.retain(|(q, _)| *q != k);
            }
            Op::Verify { piece, ok } => {
                let piece = u32::from(*piece) % n;
                let pending = m.complete.remove(&piece);
                assert_eq!(p.piece_verified(piece, *ok), pending);
                if pending {
                    if *ok {
                        m.have.insert(piece);
                        m.failed.remove(&piece);
                    } else {
                        m.failed.insert(piece);
                    }
                }
            }
            Op::MarkHave { piece } => {
                let piece = u32::from(*piece) % n;
                p.mark_have(piece);
                m.have.insert(piece);
                m.failed.remove(&piece);
                m.complete.remove(&piece);
                m.received.remove(&piece);
                m.inflight.retain(|(_, b)| b.piece != piece);
            }
            Op::Leave { peer } => {
                let k = key(*peer);
                let Some(bf) = m.peers.remove(&k) else {
                    continue;
                };
                p.peer_left(k, &bf);
                m.inflight.retain(|(q, _)| *q != k);
            }
        }
        check(&p, &m);
    }

    for (k, bf) in std::mem::take(&mut m.peers) {
        p.peer_left(k, &bf);
    }
    m.inflight.clear();
    check(&p, &m);
    assert_eq!(p.requests_in_flight(), 0);
    for piece in 0..n {
        p.mark_have(piece);
        m.have.insert(piece);
    }
    m.failed.clear();
    check(&p, &m);
    assert!(p.is_finished());
    assert_eq!(p.partial_count(), 0);
});
