//! Blame for failed pieces, with honest peers and liars.
//!
//! Input: which of a few peers lie, and rounds of pieces: for each block, who sent
//! it and (for a liar) whether it sent wrong data; peers leaving; bans the caller
//! forgets. A piece fails exactly when a block is wrong; failed pieces are judged
//! with `piece_failed`, good ones with `piece_passed` (with the good digests when
//! the blame asks for them). Properties: a ban with proof (sole sender, a block
//! that differs from the verified copy) never names an honest peer, and names the
//! block the liar really sent wrong; no peer is reported banned twice while the
//! caller keeps the ban; a distrust ban carries a trust at or below `BAN_TRUST`;
//! trust never passes `TRUST_MAX`; a banned peer's trust is forgotten; a peer with
//! nothing against it is forgotten when it leaves.
#![no_main]

use std::collections::{HashMap, HashSet};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::blame::{BAN_TRUST, BanReason, Blame, Digest, TRUST_MAX};

#[derive(Arbitrary, Debug)]
enum Op {
    /// Blocks as (sender, corrupt-if-a-liar) pairs; piece `n` has `n + 1` blocks,
    /// missing pairs are sent correctly by peer 0.
    Piece {
        piece: u8,
        blocks: Vec<(u8, bool)>,
    },
    Left(u8),
    Forgive(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    liars: u8,
    ops: Vec<Op>,
}

const PEERS: u8 = 6;

fn good(piece: u32, block: u32) -> Digest {
    let mut d = [0u8; 20];
    d[..4].copy_from_slice(&piece.to_be_bytes());
    d[4..8].copy_from_slice(&block.to_be_bytes());
    d
}

fn bad(piece: u32, block: u32, peer: u8) -> Digest {
    let mut d = good(piece, block);
    d[19] = 1 + peer;
    d
}

fuzz_target!(|i: Input| {
    let liar = |p: u8| i.liars & (1 << p) != 0;
    let mut blame: Blame<u8> = Blame::new();
    let mut banned: HashSet<u8> = HashSet::new();
    // (piece, block) -> peers that sent it wrong, ever.
    let mut lies: HashMap<(u32, u32), HashSet<u8>> = HashMap::new();
    let mut bans = Vec::new();

    for op in i.ops.iter().take(256) {
        bans.clear();
        match op {
            Op::Piece { piece, blocks } => {
                let piece = u32::from(*piece % 8);
                let blocks: Vec<(u32, u8, Digest)> = (0..=piece)
                    .map(|b| {
                        let (s, corrupt) = blocks.get(b as usize).copied().unwrap_or((0, false));
                        let s = s % PEERS;
                        if liar(s) && corrupt {
                            lies.entry((piece, b)).or_default().insert(s);
                            (b, s, bad(piece, b, s))
                        } else {
                            (b, s, good(piece, b))
                        }
                    })
                    .collect();
                let failed = blocks.iter().any(|&(b, _, d)| d != good(piece, b));
                let is_banned = |p: u8| banned.contains(&p);
                if failed {
                    let sole = blocks.iter().all(|&(_, s, _)| s == blocks[0].1);
                    blame.piece_failed(piece, blocks.clone(), &is_banned, &mut bans);
                    if sole && !banned.contains(&blocks[0].1) {
                        assert_eq!(bans, [(blocks[0].1, BanReason::SoleSender { piece })]);
                    }
                } else {
                    let mut senders: Vec<u8> = blocks.iter().map(|&(_, s, _)| s).collect();
                    senders.sort_unstable();
                    senders.dedup();
                    let digests: Vec<Digest> =
                        (0..blocks.len() as u32).map(|b| good(piece, b)).collect();
                    let wants = blame.wants_digests(piece);
                    blame.piece_passed(
                        piece,
                        &senders,
                        wants.then_some(&digests[..]),
                        &is_banned,
                        &mut bans,
                    );
                    assert!(
                        !blame.wants_digests(piece) || !wants,
                        "judged, yet still waiting"
                    );
                }
                let mut seen = HashSet::new();
                for &(p, why) in &bans {
                    assert!(seen.insert(p), "{p} banned twice in one call");
                    assert!(!banned.contains(&p), "{p} was banned already");
                    match why {
                        BanReason::SoleSender { piece: q } => {
                            assert!(liar(p), "honest peer {p} banned as sole sender");
                            assert_eq!(q, piece);
                        }
                        BanReason::BadBlock { piece: q, block } => {
                            assert!(liar(p), "honest peer {p} banned for a bad block");
                            assert!(
                                lies.get(&(q, block)).is_some_and(|s| s.contains(&p)),
                                "{p} never sent block {block} of {q} wrong"
                            );
                        }
                        BanReason::Distrusted { trust } => assert!(trust <= BAN_TRUST),
                    }
                    assert_eq!(blame.trust(p), 0, "a banned peer's trust is forgotten");
                    banned.insert(p);
                }
            }
            Op::Left(p) => {
                let p = p % PEERS;
                let t = blame.trust(p);
                blame.peer_left(p);
                assert_eq!(blame.trust(p), t.min(0));
            }
            Op::Forgive(p) => {
                banned.remove(&(p % PEERS));
            }
        }
        for p in 0..PEERS {
            assert!(blame.trust(p) <= TRUST_MAX);
        }
    }
});
