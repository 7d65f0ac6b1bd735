//! Sans-io blame for pieces that fail their hash check: which of the peers that
//! sent blocks of a bad piece to ban, without punishing the honest ones.
//!
//! A piece is assembled from blocks of several peers, and a failed SHA-1 says only
//! that *some* block was wrong. Closing every sender (as this crate once did) drops
//! honest peers whose only fault was to share a piece with a liar. The policy here
//! follows libtorrent's (trust points, a sole sender is guilty, "smart ban" by
//! comparing blocks once a good copy is known):
//!
//! - **Sole sender.** A failed piece all of whose blocks came from one peer is that
//!   peer's fault: it is banned at once.
//! - **Trust.** Each peer starts at 0. Every failed piece it sent blocks of costs
//!   [`FAIL_DEBIT`]; every verified piece it sent blocks of earns [`PASS_CREDIT`], up
//!   to [`TRUST_MAX`]. At [`BAN_TRUST`] or below it is banned: a fresh peer after three
//!   failed pieces it shared, a peer that earned some trust later.
//! - **Evidence.** The caller gives the digest of every block of a failed piece and
//!   who sent it. The piece is fetched again (the picker gives it to a single peer,
//!   so a second failure has a sole sender); when a good copy verifies, each
//!   recorded block is compared with it: a sender of a block that differs is banned
//!   (it sent wrong data, proven), and every other sender gets its debit back.
//! - **Explained failures.** When a peer is banned, the failures it took part in
//!   are blamed on it: the other senders get their debits back, and a later
//!   failure that includes a banned peer debits nobody.
//!
//! It must not do I/O, hash, read a clock, or keep a ban list of its own: the
//! caller hashes blocks (on the worker pool), acts on the bans it returns, and
//! says who is banned (`banned`, the peer manager's list, which may also forget a
//! ban: a peer it lets back is judged afresh). Memory is bounded: at most
//! [`MAX_RECORDS`] failed pieces are remembered (each with one digest and sender per
//! block) and at most [`MAX_TRACKED`] peers' trust; beyond that, new records or new
//! peers are not tracked (a failure still bans a sole sender).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;

/// SHA-1 of one block as the peer sent it.
pub type Digest = [u8; 20];

/// Trust lost for each failed piece a peer sent blocks of.
pub const FAIL_DEBIT: i32 = 2;
/// Trust earned for each verified piece a peer sent blocks of.
pub const PASS_CREDIT: i32 = 1;
/// Most trust a peer can bank, so a long honest history does not buy unlimited lies.
pub const TRUST_MAX: i32 = 8;
/// A peer at or below this trust is banned.
pub const BAN_TRUST: i32 = -6;
/// Failed pieces remembered for comparison with a good copy.
pub const MAX_RECORDS: usize = 64;
/// Peers whose trust is tracked at once.
pub const MAX_TRACKED: usize = 4096;

/// Why a peer is banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanReason {
    /// Every block of this failed piece came from the peer.
    SoleSender {
        /// The piece.
        piece: u32,
    },
    /// Its trust fell to [`BAN_TRUST`] (this value or below).
    Distrusted {
        /// Its trust after the last failure.
        trust: i32,
    },
    /// A block it sent differs from the verified copy.
    BadBlock {
        /// The piece.
        piece: u32,
        /// The block's index in the piece.
        block: u32,
    },
}

impl fmt::Display for BanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanReason::SoleSender { piece } => {
                write!(
                    f,
                    "sole sender of piece {piece}, which failed its hash check"
                )
            }
            BanReason::Distrusted { trust } => {
                write!(
                    f,
                    "sent blocks of too many pieces that failed (trust {trust})"
                )
            }
            BanReason::BadBlock { piece, block } => write!(
                f,
                "its block {block} of piece {piece} differs from the verified copy"
            ),
        }
    }
}

/// One failed piece: who sent each block and what it sent.
#[derive(Debug)]
struct Record<K> {
    piece: u32,
    /// (block index, sender, digest of what it sent).
    blocks: Vec<(u32, K, Digest)>,
    /// Senders whose trust was debited for this failure and not yet refunded.
    debited: Vec<K>,
}

/// Blame state for one torrent; `K` identifies a peer (an address, a key). See the
/// module docs.
#[derive(Debug)]
pub struct Blame<K> {
    trust: HashMap<K, i32>,
    records: VecDeque<Record<K>>,
}

impl<K: Copy + Eq + Hash> Default for Blame<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Eq + Hash> Blame<K> {
    /// No history.
    pub fn new() -> Self {
        Blame {
            trust: HashMap::new(),
            records: VecDeque::new(),
        }
    }

    /// The peer's trust (0 for a peer with no history).
    pub fn trust(&self, peer: K) -> i32 {
        self.trust.get(&peer).copied().unwrap_or(0)
    }

    /// A failed copy of `piece` waits for comparison: when it next verifies, pass the
    /// digests of its blocks to [`Blame::piece_passed`].
    pub fn wants_digests(&self, piece: u32) -> bool {
        self.records.iter().any(|r| r.piece == piece)
    }

    /// Number of failed pieces remembered.
    #[cfg(test)]
    pub(crate) fn records(&self) -> usize {
        self.records.len()
    }

    /// Moves `peer`'s trust by `by` (capped at [`TRUST_MAX`]) and returns it; `None`
    /// if the peer is not tracked and the table is full.
    fn adjust(&mut self, peer: K, by: i32) -> Option<i32> {
        if !self.trust.contains_key(&peer) && self.trust.len() >= MAX_TRACKED {
            return None;
        }
        let t = self.trust.entry(peer).or_insert(0);
        *t = (*t + by).min(TRUST_MAX);
        Some(*t)
    }

    /// Bans `peers` (each once). With proof (`explains`: a sole sender, a block
    /// that differs), the failures they took part in are blamed on them: the other
    /// senders of those pieces get their debits back, and the records stay only as
    /// evidence against a second liar. A ban on trust alone proves nothing about
    /// the others, so their debits stand.
    fn ban(
        &mut self,
        peers: &[(K, BanReason)],
        explains: bool,
        banned: &dyn Fn(K) -> bool,
        bans: &mut Vec<(K, BanReason)>,
    ) {
        let mut new = Vec::new();
        for &(peer, why) in peers {
            if banned(peer) || new.contains(&peer) {
                continue;
            }
            self.trust.remove(&peer);
            bans.push((peer, why));
            new.push(peer);
        }
        if !explains || new.is_empty() {
            return;
        }
        let mut refunds = Vec::new();
        for r in self.records.iter_mut() {
            if r.blocks.iter().any(|&(_, s, _)| new.contains(&s)) {
                refunds.append(&mut r.debited);
            }
        }
        for s in refunds {
            if !banned(s) && !new.contains(&s) {
                self.adjust(s, FAIL_DEBIT);
            }
        }
    }

    /// `piece` failed its hash check. `blocks` lists, for each block, its index,
    /// who sent it and the digest of what was sent; `banned` says who is banned
    /// already. Peers to ban are appended to `bans` (ban them, close them and do not
    /// dial them again); the other senders are kept.
    pub fn piece_failed(
        &mut self,
        piece: u32,
        blocks: Vec<(u32, K, Digest)>,
        banned: &dyn Fn(K) -> bool,
        bans: &mut Vec<(K, BanReason)>,
    ) {
        let mut senders: Vec<K> = Vec::new();
        for &(_, s, _) in &blocks {
            if !senders.contains(&s) {
                senders.push(s);
            }
        }
        let explained = senders.iter().any(|&s| banned(s));
        let mut debited = Vec::with_capacity(senders.len());
        let mut distrusted = Vec::new();
        if !explained {
            if let [only] = senders[..] {
                self.ban(
                    &[(only, BanReason::SoleSender { piece })],
                    true,
                    banned,
                    bans,
                );
                return;
            }
            for &s in &senders {
                let Some(t) = self.adjust(s, -FAIL_DEBIT) else {
                    continue;
                };
                debited.push(s);
                if t <= BAN_TRUST {
                    distrusted.push((s, BanReason::Distrusted { trust: t }));
                }
            }
        }
        if senders.len() > 1 {
            // Kept for comparison with a good copy (a failure explained by a
            // banned peer may still convict a second liar).
            if self.records.len() >= MAX_RECORDS {
                // The oldest failure will not be judged by evidence; its debits stay.
                self.records.pop_front();
            }
            self.records.push_back(Record {
                piece,
                blocks,
                debited,
            });
        }
        self.ban(&distrusted, false, banned, bans);
    }

    /// `piece` verified. `senders` are the peers that sent its blocks (each once);
    /// `good` the digests of its blocks by index, if [`Blame::wants_digests`] asked
    /// for them (`None` otherwise: no comparison); `banned` says who is banned
    /// already. Senders of recorded blocks that differ are appended to `bans`.
    pub fn piece_passed(
        &mut self,
        piece: u32,
        senders: &[K],
        good: Option<&[Digest]>,
        banned: &dyn Fn(K) -> bool,
        bans: &mut Vec<(K, BanReason)>,
    ) {
        for &s in senders {
            if !banned(s) {
                self.adjust(s, PASS_CREDIT);
            }
        }
        let Some(good) = good else {
            return;
        };
        let mut judged = Vec::new();
        let mut i = 0;
        while i < self.records.len() {
            if self.records[i].piece == piece {
                judged.extend(self.records.remove(i));
            } else {
                i += 1;
            }
        }
        let mut liars: Vec<(K, BanReason)> = Vec::new();
        for r in judged {
            for &(b, s, d) in &r.blocks {
                let differs = good.get(b as usize).is_none_or(|g| *g != d);
                if differs && !liars.iter().any(|&(l, _)| l == s) {
                    liars.push((s, BanReason::BadBlock { piece, block: b }));
                }
            }
            for &s in &r.debited {
                if !liars.iter().any(|&(l, _)| l == s) && !banned(s) {
                    self.adjust(s, FAIL_DEBIT);
                }
            }
        }
        self.ban(&liars, true, banned, bans);
    }

    /// A peer's connection closed. A peer with nothing against it is forgotten (so
    /// the table does not grow with every connection); one with debits keeps them,
    /// so reconnecting does not clear its record.
    pub fn peer_left(&mut self, peer: K) {
        if self.trust.get(&peer).is_some_and(|&t| t >= 0) {
            self.trust.remove(&peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The blame with the caller's side of it: a ban list (the engine's is the
    /// peer manager's) that records every ban the blame reports.
    struct Judge<K> {
        b: Blame<K>,
        banned: HashSet<K>,
    }

    impl<K: Copy + Eq + Hash> Judge<K> {
        fn new() -> Self {
            Judge {
                b: Blame::new(),
                banned: HashSet::new(),
            }
        }

        fn piece_failed(
            &mut self,
            piece: u32,
            blocks: Vec<(u32, K, Digest)>,
            bans: &mut Vec<(K, BanReason)>,
        ) {
            let set = &self.banned;
            self.b
                .piece_failed(piece, blocks, &|k| set.contains(&k), bans);
            self.banned.extend(bans.iter().map(|&(k, _)| k));
        }

        fn piece_passed(
            &mut self,
            piece: u32,
            senders: &[K],
            good: Option<&[Digest]>,
            bans: &mut Vec<(K, BanReason)>,
        ) {
            let set = &self.banned;
            self.b
                .piece_passed(piece, senders, good, &|k| set.contains(&k), bans);
            self.banned.extend(bans.iter().map(|&(k, _)| k));
        }

        fn is_banned(&self, peer: K) -> bool {
            self.banned.contains(&peer)
        }

        /// The ban list forgot `peer` (its oldest entries go first).
        fn forget_ban(&mut self, peer: K) {
            self.banned.remove(&peer);
        }
    }

    impl<K> std::ops::Deref for Judge<K> {
        type Target = Blame<K>;
        fn deref(&self) -> &Blame<K> {
            &self.b
        }
    }

    impl<K> std::ops::DerefMut for Judge<K> {
        fn deref_mut(&mut self) -> &mut Blame<K> {
            &mut self.b
        }
    }

    const H: u8 = 1; // honest
    const L: u8 = 2; // liar
    const G: u8 = 3; // another honest peer

    fn d(x: u8) -> Digest {
        [x; 20]
    }

    /// Blocks of a piece: (sender, what it sent), by index.
    fn blocks(v: &[(u8, u8)]) -> Vec<(u32, u8, Digest)> {
        v.iter()
            .enumerate()
            .map(|(i, &(s, x))| (i as u32, s, d(x)))
            .collect()
    }

    #[test]
    fn a_sole_sender_is_banned_at_once() {
        let mut b = Judge::new();
        let mut bans = Vec::new();
        b.piece_failed(4, blocks(&[(L, 9), (L, 9), (L, 9)]), &mut bans);
        assert_eq!(bans, vec![(L, BanReason::SoleSender { piece: 4 })]);
        assert!(b.is_banned(L));
        assert_eq!(b.records(), 0);
    }

    #[test]
    fn a_forgotten_ban_is_judged_afresh() {
        let mut b = Judge::new();
        let mut bans = Vec::new();
        b.piece_failed(4, blocks(&[(L, 9), (L, 9)]), &mut bans);
        assert_eq!(bans.len(), 1);
        // Still banned here, a second offence would be explained and ignored.
        b.piece_failed(6, blocks(&[(L, 9), (L, 9)]), &mut bans);
        assert_eq!(bans.len(), 1);
        // The peer manager forgot the ban and let it back: it is banned again.
        b.forget_ban(L);
        assert!(!b.is_banned(L));
        b.piece_failed(7, blocks(&[(L, 9), (L, 9)]), &mut bans);
        assert_eq!(bans[1], (L, BanReason::SoleSender { piece: 7 }));
    }

    #[test]
    fn shared_failure_bans_nobody_and_the_good_copy_names_the_liar() {
        let mut b = Judge::new();
        let mut bans = Vec::new();
        // Blocks 0 and 2 from the honest peer are right (digest 0, 2); the liar's
        // block 1 is wrong (the good one is 1, it sent 7).
        b.piece_failed(5, blocks(&[(H, 0), (L, 7), (H, 2)]), &mut bans);
        assert!(bans.is_empty(), "{bans:?}");
        assert_eq!(b.trust(H), -FAIL_DEBIT);
        assert_eq!(b.trust(L), -FAIL_DEBIT);
        assert!(b.wants_digests(5));
        assert!(!b.wants_digests(6));
        // Fetched again from the honest peer alone, it verifies.
        b.piece_passed(5, &[H], Some(&[d(0), d(1), d(2)]), &mut bans);
        assert_eq!(bans, vec![(L, BanReason::BadBlock { piece: 5, block: 1 })]);
        // The honest peer gets its debit back, plus the credit for the good piece.
        assert_eq!(b.trust(H), PASS_CREDIT);
        assert!(!b.is_banned(H));
        assert!(!b.wants_digests(5));
    }

    #[test]
    fn a_second_failure_from_a_single_peer_bans_it_and_clears_the_others() {
        let mut b = Judge::new();
        let mut bans = Vec::new();
        b.piece_failed(1, blocks(&[(H, 0), (L, 7)]), &mut bans);
        b.piece_failed(2, blocks(&[(G, 0), (L, 7)]), &mut bans);
        assert!(bans.is_empty());
        // The re-download of piece 1 went to the liar alone, and failed again.
        b.piece_failed(1, blocks(&[(L, 7), (L, 7)]), &mut bans);
        assert_eq!(bans, vec![(L, BanReason::SoleSender { piece: 1 })]);
        // Both failures it shared are blamed on it (their records stay as evidence).
        assert_eq!((b.trust(H), b.trust(G)), (0, 0));
        assert_eq!(b.records(), 2);
        // A late failure with the banned liar among the senders debits nobody.
        b.piece_failed(3, blocks(&[(H, 0), (L, 7)]), &mut bans);
        assert_eq!(b.trust(H), 0);
        assert_eq!(bans.len(), 1);
        // Records stay as evidence: if G's block of piece 2 was wrong too, the good
        // copy still catches it (L, banned already, is not reported again).
        let mut bans = Vec::new();
        b.piece_passed(2, &[H], Some(&[d(5), d(6)]), &mut bans);
        assert_eq!(bans, vec![(G, BanReason::BadBlock { piece: 2, block: 0 })]);
    }

    #[test]
    fn repeated_shared_failures_ban_by_trust() {
        let mut b = Judge::new();
        let mut bans = Vec::new();
        // Two peers that keep failing together, no good copy ever arriving: three
        // failures take a fresh peer to the ban threshold.
        for piece in 0..2 {
            b.piece_failed(piece, blocks(&[(H, 0), (L, 7)]), &mut bans);
            assert!(bans.is_empty());
        }
        b.piece_failed(2, blocks(&[(H, 0), (L, 7)]), &mut bans);
        // Which one lied is unknown, so both go.
        let banned: Vec<u8> = bans.iter().map(|&(k, _)| k).collect();
        assert_eq!(banned, vec![H, L], "{bans:?}");
        assert!(matches!(bans[0].1, BanReason::Distrusted { trust: -6 }));
        assert!(matches!(bans[1].1, BanReason::Distrusted { trust: -6 }));
    }

    #[test]
    fn earned_trust_absorbs_shared_failures() {
        let mut b = Judge::new();
        let mut bans = Vec::new();
        for piece in 10..20 {
            b.piece_passed(piece, &[H], None, &mut bans);
        }
        assert_eq!(b.trust(H), TRUST_MAX);
        // Failures shared with different one-off liars, never resolved: six leave
        // it at 8 - 12 = -4; the seventh reaches -6 and bans.
        for (i, piece) in (0..6).enumerate() {
            let liar = 100 + i as u8;
            b.piece_failed(piece, blocks(&[(H, 0), (liar, 7)]), &mut bans);
        }
        assert!(bans.is_empty(), "{bans:?}");
        assert_eq!(b.trust(H), TRUST_MAX - 6 * FAIL_DEBIT);
        b.piece_failed(6, blocks(&[(H, 0), (99, 7)]), &mut bans);
        assert_eq!(bans, vec![(H, BanReason::Distrusted { trust: -6 })]);
    }

    #[test]
    fn a_passing_piece_without_a_record_only_credits() {
        let mut b = Judge::<u8>::new();
        let mut bans = Vec::new();
        b.piece_passed(0, &[H, G], Some(&[d(0)]), &mut bans);
        assert!(bans.is_empty());
        assert_eq!((b.trust(H), b.trust(G)), (1, 1));
        b.peer_left(H);
        assert_eq!(b.trust(H), 0, "a peer with nothing against it is forgotten");
        b.piece_failed(1, blocks(&[(G, 0), (L, 7)]), &mut bans);
        b.piece_failed(2, blocks(&[(G, 0), (L, 7)]), &mut bans);
        b.peer_left(G);
        assert_eq!(b.trust(G), 1 - 2 * FAIL_DEBIT, "debits survive a reconnect");
    }

    #[test]
    fn memory_is_bounded() {
        let mut b = Judge::<u32>::new();
        let mut bans = Vec::new();
        for piece in 0..(MAX_RECORDS as u32 * 3) {
            // Fresh pairs each time: nobody reaches the threshold.
            let (x, y) = (piece * 2 + 10, piece * 2 + 11);
            let v = vec![(0, x, d(0)), (1, y, d(1))];
            b.piece_failed(piece, v, &mut bans);
        }
        assert!(bans.is_empty());
        assert_eq!(b.records(), MAX_RECORDS);
        assert!(!b.wants_digests(0), "the oldest record was dropped");
        assert!(b.wants_digests(MAX_RECORDS as u32 * 3 - 1));
        for k in 0..(MAX_TRACKED as u32 + 100) {
            b.piece_passed(0, &[1_000_000 + k], None, &mut bans);
        }
        assert!(b.trust.len() <= MAX_TRACKED);
        // A sole sender is still banned when the tables are full.
        b.piece_failed(9, vec![(0, 7, d(0))], &mut bans);
        assert_eq!(bans.len(), 1);
    }
}
