//! Sans-io piece picker for a downloading peer: decides which blocks to
//! request from which peer (rarest first, finishing started pieces first,
//! end-game duplication at the tail) and tracks which blocks are in flight.
//!
//! It must not do I/O, store block data, or hash pieces: the caller writes
//! data, hashes complete pieces and reports the verdict with
//! [`Picker::piece_verified`]. Peers are identified by an opaque
//! [`PeerKey`] chosen by the caller (e.g. the connection token).
//!
//! A piece that failed its hash check is fetched again from a single peer: the
//! first peer given a block of it becomes its owner, and no other peer is given
//! its blocks (not even in end-game) while the owner stays. So a second failure
//! has one sender to blame (see [`super::blame`]).
//!
//! Memory is O(pieces + blocks in flight + blocks of partially received
//! pieces); because started pieces are always finished first, the last term
//! stays small. Pieces are kept in an array ordered by availability
//! (libtorrent-style buckets) so availability changes cost O(1) swaps and
//! picking usually stops after a short scan.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::wire::Bitfield;

/// Standard request size; most clients reject larger requests.
pub const DEFAULT_BLOCK_SIZE: u32 = 16 * 1024;

/// Most pieces a torrent may have (bounds the picker's arrays).
pub const MAX_PIECES: u32 = 1 << 22;

/// Most blocks per piece (bounds a partial piece's bitmaps).
pub const MAX_BLOCKS_PER_PIECE: u32 = 1 << 16;

/// Caller-chosen identity of a peer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub u64);

/// One block request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockRef {
    /// Piece index.
    pub piece: u32,
    /// Byte offset in the piece (a multiple of the block size).
    pub begin: u32,
    /// Block length.
    pub len: u32,
}

/// Errors from constructing a picker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PickerError {
    /// The torrent's size, piece length or block size cannot be handled.
    InvalidGeometry(&'static str),
}

impl fmt::Display for PickerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PickerError::InvalidGeometry(why) => write!(f, "invalid torrent geometry: {why}"),
        }
    }
}

impl std::error::Error for PickerError {}

/// Outcome of [`Picker::block_received`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// New data: store it. If `piece_complete`, every block of the piece is
    /// now received; hash it and call [`Picker::piece_verified`].
    Accepted {
        /// The piece has all its blocks.
        piece_complete: bool,
    },
    /// We already have this block (end-game duplicate or late arrival): drop it.
    Duplicate,
    /// The block does not match the torrent's geometry (bad piece, offset
    /// or length): drop it; the peer is misbehaving.
    Invalid,
}

const MISSING: u8 = 0;
const PARTIAL: u8 = 1;
const COMPLETE: u8 = 2;
const HAVE: u8 = 3;

#[derive(Debug, Clone, Copy)]
struct Geometry {
    total_len: u64,
    piece_length: u32,
    block_size: u32,
    piece_count: u32,
}

impl Geometry {
    fn piece_len(&self, piece: u32) -> u32 {
        if piece >= self.piece_count {
            return 0;
        }
        if piece + 1 == self.piece_count {
            let before = u64::from(piece) * u64::from(self.piece_length);
            // Fits: the last piece is at most piece_length long.
            (self.total_len - before) as u32
        } else {
            self.piece_length
        }
    }

    fn block_count(&self, piece: u32) -> u32 {
        self.piece_len(piece).div_ceil(self.block_size)
    }

    fn block(&self, piece: u32, b: u32) -> BlockRef {
        let begin = b * self.block_size;
        BlockRef {
            piece,
            begin,
            len: self.block_size.min(self.piece_len(piece) - begin),
        }
    }
}

fn bit(v: &[u8], i: u32) -> bool {
    v.get((i / 8) as usize)
        .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
}

fn set_bit(v: &mut [u8], i: u32, on: bool) {
    if let Some(b) = v.get_mut((i / 8) as usize) {
        if on {
            *b |= 0x80 >> (i % 8);
        } else {
            *b &= !(0x80 >> (i % 8));
        }
    }
}

/// A piece with at least one block requested or received.
#[derive(Debug)]
struct Partial {
    n_blocks: u32,
    received: Vec<u8>,
    /// Blocks not received with at least one outstanding request.
    requested: Vec<u8>,
    n_received: u32,
    n_requested: u32,
    /// Outstanding requests: (block index, peer). Several entries per block
    /// only in end-game.
    requests: Vec<(u32, PeerKey)>,
    /// The only peer its blocks are requested from (pieces fetched again after a
    /// failed hash check).
    owner: Option<PeerKey>,
}

impl Partial {
    fn new(n_blocks: u32) -> Self {
        let bytes = n_blocks.div_ceil(8) as usize;
        Partial {
            n_blocks,
            received: vec![0; bytes],
            requested: vec![0; bytes],
            n_received: 0,
            n_requested: 0,
            requests: Vec::new(),
            owner: None,
        }
    }

    /// Blocks of this piece may be requested from `peer`.
    fn open_to(&self, peer: PeerKey) -> bool {
        self.owner.is_none_or(|o| o == peer)
    }

    fn fully_requested(&self) -> bool {
        self.n_received + self.n_requested >= self.n_blocks
    }

    /// Recompute the requested bitmap after requests were removed.
    fn rebuild_requested(&mut self) {
        self.requested.fill(0);
        self.n_requested = 0;
        for &(b, _) in &self.requests {
            if !bit(&self.requested, b) {
                set_bit(&mut self.requested, b, true);
                self.n_requested += 1;
            }
        }
    }

    /// Hand out never-requested blocks to `peer`.
    fn take_fresh(
        &mut self,
        g: &Geometry,
        piece: u32,
        peer: PeerKey,
        max: usize,
        out: &mut Vec<BlockRef>,
    ) {
        let mut b = 0;
        while b < self.n_blocks && out.len() < max && !self.fully_requested() {
            if !bit(&self.received, b) && !bit(&self.requested, b) {
                set_bit(&mut self.requested, b, true);
                self.n_requested += 1;
                self.requests.push((b, peer));
                out.push(g.block(piece, b));
            }
            b += 1;
        }
    }
}

/// Piece picker state for one torrent. See the module docs.
#[derive(Debug)]
pub struct Picker {
    geo: Geometry,
    state: Vec<u8>,
    avail: Vec<u32>,
    /// Pieces not yet verified, sorted by availability, then verified ones.
    order: Vec<u32>,
    /// Position of each piece in `order`.
    pos: Vec<u32>,
    /// Number of unverified pieces (prefix of `order`).
    n_active: u32,
    /// `bucket_start[k]`: first index in `order` with availability >= k.
    bucket_start: Vec<u32>,
    partials: BTreeMap<u32, Partial>,
    have: Bitfield,
    missing_unstarted: u32,
    /// Pieces that failed their hash check and are not verified yet: fetched
    /// from one peer at a time.
    single_source: BTreeSet<u32>,
    rng: u64,
}

impl Picker {
    /// A picker for a torrent of `total_len` bytes split into pieces of
    /// `piece_length`, requesting [`DEFAULT_BLOCK_SIZE`] blocks.
    pub fn new(total_len: u64, piece_length: u32) -> Result<Self, PickerError> {
        Self::with_options(
            total_len,
            piece_length,
            DEFAULT_BLOCK_SIZE,
            0x9e37_79b9_7f4a_7c15,
        )
    }

    /// Like [`Picker::new`] with an explicit block size (clamped to the
    /// piece length) and random seed (ties between equally rare pieces are
    /// broken by a xorshift generator so peers don't all fetch the same pieces).
    pub fn with_options(
        total_len: u64,
        piece_length: u32,
        block_size: u32,
        seed: u64,
    ) -> Result<Self, PickerError> {
        if total_len == 0 {
            return Err(PickerError::InvalidGeometry("torrent is empty"));
        }
        if piece_length == 0 || block_size == 0 {
            return Err(PickerError::InvalidGeometry(
                "piece length and block size must be non-zero",
            ));
        }
        let count = total_len.div_ceil(u64::from(piece_length));
        if count > u64::from(MAX_PIECES) {
            return Err(PickerError::InvalidGeometry("too many pieces"));
        }
        let block_size = block_size.min(piece_length);
        if piece_length.div_ceil(block_size) > MAX_BLOCKS_PER_PIECE {
            return Err(PickerError::InvalidGeometry(
                "block size too small for the piece length",
            ));
        }
        let piece_count = count as u32;
        let mut p = Picker {
            geo: Geometry {
                total_len,
                piece_length,
                block_size,
                piece_count,
            },
            state: vec![MISSING; piece_count as usize],
            avail: vec![0; piece_count as usize],
            order: (0..piece_count).collect(),
            pos: (0..piece_count).collect(),
            n_active: piece_count,
            bucket_start: vec![0],
            partials: BTreeMap::new(),
            have: Bitfield::new(piece_count),
            missing_unstarted: piece_count,
            single_source: BTreeSet::new(),
            rng: if seed == 0 {
                0x2545_f491_4f6c_dd1d
            } else {
                seed
            },
        };
        // Fisher-Yates so initially-equal pieces are picked in random order.
        for i in (1..piece_count).rev() {
            let j = p.rand_below(i + 1);
            p.swap_order(i, j);
        }
        Ok(p)
    }

    fn rand_below(&mut self, n: u32) -> u32 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x % u64::from(n.max(1))) as u32
    }

    fn swap_order(&mut self, a: u32, b: u32) {
        self.order.swap(a as usize, b as usize);
        let pa = self.order[a as usize];
        let pb = self.order[b as usize];
        self.pos[pa as usize] = a;
        self.pos[pb as usize] = b;
    }

    fn bucket_end(&self, k: usize) -> u32 {
        self.bucket_start
            .get(k + 1)
            .copied()
            .unwrap_or(self.n_active)
    }

    /// Move `piece` to a random slot of bucket `k` it already belongs to.
    fn shuffle_into(&mut self, piece: u32, k: usize) {
        let s = self.bucket_start[k];
        let e = self.bucket_end(k);
        if e > s + 1 {
            let r = s + self.rand_below(e - s);
            self.swap_order(self.pos[piece as usize], r);
        }
    }

    fn inc_avail(&mut self, piece: u32) {
        let i = piece as usize;
        let k = self.avail[i] as usize;
        if k == u32::MAX as usize {
            return;
        }
        if self.state[i] != HAVE {
            while self.bucket_start.len() < k + 2 {
                self.bucket_start.push(self.n_active);
            }
            let end = self.bucket_start[k + 1];
            self.swap_order(self.pos[i], end - 1);
            self.bucket_start[k + 1] = end - 1;
            self.avail[i] += 1;
            self.shuffle_into(piece, k + 1);
        } else {
            self.avail[i] += 1;
        }
    }

    fn dec_avail(&mut self, piece: u32) {
        let i = piece as usize;
        let k = self.avail[i] as usize;
        if k == 0 {
            return;
        }
        if self.state[i] != HAVE {
            let start = self.bucket_start[k];
            self.swap_order(self.pos[i], start);
            self.bucket_start[k] = start + 1;
            self.avail[i] -= 1;
            self.shuffle_into(piece, k - 1);
        } else {
            self.avail[i] -= 1;
        }
    }

    /// Move a piece out of the active prefix of `order` (it became HAVE),
    /// bubbling it past every higher bucket with one swap each.
    fn remove_active(&mut self, piece: u32) {
        let k = self.avail[piece as usize] as usize;
        let end = self.bucket_end(k);
        self.swap_order(self.pos[piece as usize], end - 1);
        for j in k + 1..self.bucket_start.len() {
            let e = self.bucket_end(j);
            let s = self.bucket_start[j];
            self.swap_order(s - 1, e - 1);
            self.bucket_start[j] = s - 1;
        }
        self.n_active -= 1;
    }

    // ------------------------------------------------------------ queries

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        self.geo.piece_count
    }

    /// Length of `piece` in bytes (0 if out of range).
    pub fn piece_len(&self, piece: u32) -> u32 {
        self.geo.piece_len(piece)
    }

    /// Blocks in `piece` (the last piece may have fewer).
    pub fn block_count(&self, piece: u32) -> u32 {
        self.geo.block_count(piece)
    }

    /// Block size in use.
    pub fn block_size(&self) -> u32 {
        self.geo.block_size
    }

    /// Verified pieces, ready to send in a `Bitfield` message.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// All pieces verified.
    pub fn is_finished(&self) -> bool {
        self.have.all()
    }

    /// How many connected peers announced `piece`.
    pub fn availability(&self, piece: u32) -> u32 {
        self.avail.get(piece as usize).copied().unwrap_or(0)
    }

    /// Does the peer have any piece we lack? (Decides `Interested`.)
    pub fn interesting(&self, peer_has: &Bitfield) -> bool {
        peer_has
            .as_bytes()
            .iter()
            .zip(self.have.as_bytes())
            .any(|(p, h)| p & !h != 0)
    }

    /// Number of pieces with blocks requested or received but not all received.
    pub fn partial_count(&self) -> usize {
        self.partials.len()
    }

    /// The piece failed its hash check and waits to be fetched again from a single
    /// peer.
    #[cfg(test)]
    pub(crate) fn is_single_source(&self, piece: u32) -> bool {
        self.single_source.contains(&piece)
    }

    /// The peer a piece's blocks are reserved for, if any (see the module docs).
    #[cfg(test)]
    pub(crate) fn owner(&self, piece: u32) -> Option<PeerKey> {
        self.partials.get(&piece).and_then(|p| p.owner)
    }

    /// Number of outstanding requests across all peers.
    pub fn requests_in_flight(&self) -> usize {
        self.partials.values().map(|p| p.requests.len()).sum()
    }

    /// End-game: every piece is started and every missing block is
    /// requested, so further requests duplicate ones already in flight.
    pub fn is_endgame(&self) -> bool {
        self.missing_unstarted == 0 && self.partials.values().all(Partial::fully_requested)
    }

    // ------------------------------------------------------- availability

    /// A peer sent its bitfield (bits beyond the piece count are ignored).
    pub fn peer_bitfield(&mut self, has: &Bitfield) {
        for p in has.iter_set() {
            if p < self.geo.piece_count {
                self.inc_avail(p);
            }
        }
    }

    /// A peer announced `piece`. Call only when the peer's own bitfield
    /// newly gained the bit, or availability drifts upward.
    pub fn peer_have(&mut self, piece: u32) {
        if piece < self.geo.piece_count {
            self.inc_avail(piece);
        }
    }

    /// A peer sent `HaveAll`.
    pub fn peer_have_all(&mut self) {
        for p in 0..self.geo.piece_count {
            self.inc_avail(p);
        }
    }

    /// A peer's announcements are replaced (a late or repeated `bitfield`,
    /// `have_all` or `have_none`): forget the availability `has` added, without
    /// touching its requests. The caller then adds the new set.
    pub fn peer_lost(&mut self, has: &Bitfield) {
        for p in has.iter_set() {
            if p < self.geo.piece_count {
                self.dec_avail(p);
            }
        }
    }

    /// A peer disconnected: forget its availability (`has` is its final
    /// bitfield) and make its outstanding requests requestable again.
    pub fn peer_left(&mut self, peer: PeerKey, has: &Bitfield) {
        self.peer_lost(has);
        self.requests_dropped(peer);
    }

    // ------------------------------------------------------------ picking

    /// Append up to `max - out.len()` new requests for `peer` to `out`.
    ///
    /// `peer_has` is the set of pieces this peer may serve: its bitfield,
    /// or its allowed-fast set while it chokes us. Blocks of started pieces
    /// come first, then new pieces rarest first. In end-game, blocks already
    /// requested from other peers are returned too (never twice to the same
    /// peer); when one arrives [`Picker::block_received`] names the peers to
    /// send `Cancel` to. Returns how many requests were appended.
    pub fn next_requests(
        &mut self,
        peer: PeerKey,
        peer_has: &Bitfield,
        max: usize,
        out: &mut Vec<BlockRef>,
    ) -> usize {
        let before = out.len();
        let g = self.geo;
        let single = &self.single_source;
        for (&piece, part) in self.partials.iter_mut() {
            if out.len() >= max {
                return out.len() - before;
            }
            if !part.fully_requested() && peer_has.has(piece) && part.open_to(peer) {
                if single.contains(&piece) {
                    part.owner = Some(peer);
                }
                part.take_fresh(&g, piece, peer, max, out);
            }
        }
        let mut i = 0;
        while i < self.n_active && out.len() < max && self.missing_unstarted > 0 {
            let piece = self.order[i as usize];
            i += 1;
            if self.state[piece as usize] != MISSING || !peer_has.has(piece) {
                continue;
            }
            self.state[piece as usize] = PARTIAL;
            self.missing_unstarted -= 1;
            let mut part = Partial::new(g.block_count(piece));
            if self.single_source.contains(&piece) {
                part.owner = Some(peer);
            }
            part.take_fresh(&g, piece, peer, max, out);
            self.partials.insert(piece, part);
        }
        if out.len() < max && self.is_endgame() {
            for (&piece, part) in self.partials.iter_mut() {
                if !peer_has.has(piece) || !part.open_to(peer) {
                    continue;
                }
                for b in 0..part.n_blocks {
                    if out.len() >= max {
                        break;
                    }
                    if bit(&part.received, b) || part.requests.contains(&(b, peer)) {
                        continue;
                    }
                    part.requests.push((b, peer));
                    out.push(g.block(piece, b));
                }
            }
        }
        out.len() - before
    }

    /// Index of `block` within its piece, if it matches the geometry exactly.
    fn block_index(&self, block: BlockRef) -> Option<u32> {
        let g = &self.geo;
        if block.piece >= g.piece_count || !block.begin.is_multiple_of(g.block_size) {
            return None;
        }
        let b = block.begin / g.block_size;
        (b < g.block_count(block.piece) && g.block(block.piece, b).len == block.len).then_some(b)
    }

    /// True if `block` is exactly one block of the torrent (piece, offset and
    /// length on the block grid).
    pub fn is_block(&self, block: BlockRef) -> bool {
        self.block_index(block).is_some()
    }

    /// Record a block from `peer`. Other peers that still have the same
    /// block outstanding (end-game) are appended to `cancel`: send each a
    /// `Cancel`; the picker already forgot those requests, so a later
    /// `abort_block` for them is a harmless no-op. Unrequested blocks of
    /// pieces we still need are accepted here: the session drops blocks it did
    /// not request before they reach the picker (it alone knows what it asked).
    pub fn block_received(
        &mut self,
        peer: PeerKey,
        block: BlockRef,
        cancel: &mut Vec<PeerKey>,
    ) -> Received {
        let g = self.geo;
        let piece = block.piece;
        let Some(b) = self.block_index(block) else {
            return Received::Invalid;
        };
        match self.state[piece as usize] {
            HAVE | COMPLETE => return Received::Duplicate,
            MISSING => {
                self.state[piece as usize] = PARTIAL;
                self.missing_unstarted -= 1;
                self.partials
                    .insert(piece, Partial::new(g.block_count(piece)));
            }
            _ => {}
        }
        let Some(part) = self.partials.get_mut(&piece) else {
            return Received::Invalid;
        };
        if bit(&part.received, b) {
            part.requests.retain(|&(rb, rp)| !(rb == b && rp == peer));
            return Received::Duplicate;
        }
        part.requests.retain(|&(rb, rp)| {
            if rb != b {
                return true;
            }
            if rp != peer {
                cancel.push(rp);
            }
            false
        });
        if bit(&part.requested, b) {
            set_bit(&mut part.requested, b, false);
            part.n_requested -= 1;
        }
        set_bit(&mut part.received, b, true);
        part.n_received += 1;
        let complete = part.n_received == part.n_blocks;
        if complete {
            self.partials.remove(&piece);
            self.state[piece as usize] = COMPLETE;
        }
        Received::Accepted {
            piece_complete: complete,
        }
    }

    /// Report the hash check of a complete piece. On failure all its blocks
    /// become missing again, to be fetched from a single peer. Returns false if
    /// the piece was not awaiting verification.
    pub fn piece_verified(&mut self, piece: u32, ok: bool) -> bool {
        if self.state.get(piece as usize) != Some(&COMPLETE) {
            return false;
        }
        if ok {
            self.state[piece as usize] = HAVE;
            self.have.set(piece);
            self.remove_active(piece);
            self.single_source.remove(&piece);
        } else {
            self.state[piece as usize] = MISSING;
            self.missing_unstarted += 1;
            self.single_source.insert(piece);
        }
        true
    }

    /// Mark a piece as already verified (e.g. found on disk at start-up).
    /// Any outstanding requests for it are forgotten.
    pub fn mark_have(&mut self, piece: u32) {
        match self.state.get(piece as usize) {
            None | Some(&HAVE) => return,
            Some(&MISSING) => self.missing_unstarted -= 1,
            Some(&PARTIAL) => {
                self.partials.remove(&piece);
            }
            _ => {}
        }
        self.state[piece as usize] = HAVE;
        self.have.set(piece);
        self.remove_active(piece);
        self.single_source.remove(&piece);
    }

    /// Forget one outstanding request (the peer rejected it, or the caller
    /// timed it out). Returns true if such a request was in flight.
    pub fn abort_block(&mut self, peer: PeerKey, block: BlockRef) -> bool {
        let Some(b) = self.block_index(block) else {
            return false;
        };
        let Some(part) = self.partials.get_mut(&block.piece) else {
            return false;
        };
        let before = part.requests.len();
        part.requests.retain(|&(rb, rp)| !(rb == b && rp == peer));
        if part.requests.len() == before {
            return false;
        }
        if !part.requests.iter().any(|&(rb, _)| rb == b) && bit(&part.requested, b) {
            set_bit(&mut part.requested, b, false);
            part.n_requested -= 1;
        }
        self.drop_idle_partials();
        true
    }

    /// Forget every request outstanding to `peer` (it choked us without the
    /// Fast extension, or disconnected): those blocks become requestable, and
    /// pieces it owned may go to another single peer.
    pub fn requests_dropped(&mut self, peer: PeerKey) {
        for part in self.partials.values_mut() {
            if part.owner == Some(peer) {
                part.owner = None;
            }
            let before = part.requests.len();
            part.requests.retain(|&(_, rp)| rp != peer);
            if part.requests.len() != before {
                part.rebuild_requested();
            }
        }
        self.drop_idle_partials();
    }

    /// Started pieces with nothing received and nothing requested go back
    /// to unstarted so they don't occupy memory.
    fn drop_idle_partials(&mut self) {
        let state = &mut self.state;
        let missing = &mut self.missing_unstarted;
        self.partials.retain(|&piece, part| {
            if part.n_received == 0 && part.requests.is_empty() {
                state[piece as usize] = MISSING;
                *missing += 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl Picker {
    /// Checks the ordering structure and the partial pieces against a brute-force
    /// recomputation and panics on the first disagreement. For tests and the fuzz
    /// targets (feature `fuzzing`); O(pieces), never on a hot path.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        use std::collections::HashSet;
        let p = self;
        let n = p.geo.piece_count;
        let mut seen = vec![false; n as usize];
        for (i, &piece) in p.order.iter().enumerate() {
            assert_eq!(p.pos[piece as usize], i as u32);
            assert!(!seen[piece as usize]);
            seen[piece as usize] = true;
            let active = (i as u32) < p.n_active;
            assert_eq!(active, p.state[piece as usize] != HAVE);
            if active && i > 0 {
                let prev = p.order[i - 1];
                assert!(p.avail[prev as usize] <= p.avail[piece as usize]);
            }
        }
        for (k, &s) in p.bucket_start.iter().enumerate() {
            let first = (0..p.n_active)
                .find(|&i| p.avail[p.order[i as usize] as usize] >= k as u32)
                .unwrap_or(p.n_active);
            assert_eq!(s, first, "bucket {k}");
        }
        let unstarted = p.state.iter().filter(|&&s| s == MISSING).count() as u32;
        assert_eq!(unstarted, p.missing_unstarted);
        for (&piece, part) in &p.partials {
            assert_eq!(p.state[piece as usize], PARTIAL);
            let distinct: HashSet<u32> = part.requests.iter().map(|r| r.0).collect();
            assert_eq!(distinct.len() as u32, part.n_requested);
            for b in distinct {
                assert!(bit(&part.requested, b) && !bit(&part.received, b));
            }
            assert!(part.n_received < part.n_blocks);
            let pairs: HashSet<_> = part.requests.iter().collect();
            assert_eq!(pairs.len(), part.requests.len(), "same peer twice");
        }
        assert_eq!(p.have.count(), n - p.n_active);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    use reactor_test_support::fuzz::Rng;

    const A: PeerKey = PeerKey(1);
    const B: PeerKey = PeerKey(2);

    fn pick(p: &mut Picker, peer: PeerKey, has: &Bitfield, max: usize) -> Vec<BlockRef> {
        let mut v = Vec::new();
        p.next_requests(peer, has, max, &mut v);
        p.check_invariants();
        v
    }

    fn recv(p: &mut Picker, peer: PeerKey, b: BlockRef) -> (Received, Vec<PeerKey>) {
        let mut c = Vec::new();
        let r = p.block_received(peer, b, &mut c);
        p.check_invariants();
        (r, c)
    }

    #[test]
    fn geometry_and_errors() {
        let g = |t, l, b| Picker::with_options(t, l, b, 1).map(|_| ()).unwrap_err();
        assert_eq!(
            g(0, 16384, 16384),
            PickerError::InvalidGeometry("torrent is empty")
        );
        assert!(matches!(g(10, 0, 16384), PickerError::InvalidGeometry(_)));
        assert!(matches!(g(10, 10, 0), PickerError::InvalidGeometry(_)));
        assert_eq!(
            g(u64::from(MAX_PIECES) + 1, 1, 1),
            PickerError::InvalidGeometry("too many pieces")
        );
        assert!(matches!(
            g(1 << 30, 1 << 30, 1),
            PickerError::InvalidGeometry(_)
        ));
        assert!(g(0, 1, 1).to_string().contains("geometry"));

        let p = Picker::with_options(100_000, 32_768, 16_384, 5).unwrap();
        assert_eq!(p.piece_count(), 4);
        assert_eq!(p.piece_len(0), 32_768);
        assert_eq!(p.piece_len(3), 100_000 - 3 * 32_768);
        assert_eq!(p.piece_len(4), 0);
        assert_eq!(p.geo.block_count(3), 1);
        assert_eq!(p.geo.block(3, 0).len, 1696);
        // Block size larger than the piece is clamped.
        let p = Picker::with_options(10, 4, 16384, 5).unwrap();
        assert_eq!(p.block_size(), 4);
        assert_eq!(p.piece_len(2), 2);
        p.check_invariants();
        // The big case from the brief: 100k pieces of 16 MiB.
        let mut p = Picker::new(100_000 * (16 << 20), 16 << 20).unwrap();
        assert_eq!(p.piece_count(), 100_000);
        p.peer_have_all();
        let v = pick(&mut p, A, &Bitfield::full(100_000), 2000);
        assert_eq!(v.len(), 2000);
        assert_eq!(p.partial_count(), 2);
        assert_eq!(p.requests_in_flight(), 2000);
    }

    #[test]
    fn rarest_first_and_only_what_peer_has() {
        let mut p = Picker::with_options(4 * 100, 100, 100, 7).unwrap();
        let avail = [3u32, 1, 2, 4];
        for (piece, &n) in avail.iter().enumerate() {
            for _ in 0..n {
                p.peer_have(piece as u32);
                p.check_invariants();
            }
        }
        assert_eq!(p.availability(3), 4);
        let all = Bitfield::full(4);
        let v = pick(&mut p, A, &all, 4);
        let order: Vec<u32> = v.iter().map(|b| b.piece).collect();
        assert_eq!(order, vec![1, 2, 0, 3]);
        let mut p2 = Picker::with_options(400, 100, 100, 7).unwrap();
        p2.peer_have_all();
        let mut only0 = Bitfield::new(4);
        only0.set(0);
        let v = pick(&mut p2, A, &only0, 10);
        assert_eq!(
            v,
            vec![BlockRef {
                piece: 0,
                begin: 0,
                len: 100
            }]
        );
        assert!(pick(&mut p2, B, &Bitfield::new(4), 10).is_empty());
    }

    #[test]
    fn ties_are_shuffled_by_seed() {
        let firsts: HashSet<u32> = (1..20u64)
            .map(|seed| {
                let mut p = Picker::with_options(64 * 10, 10, 10, seed).unwrap();
                p.peer_have_all();
                pick(&mut p, A, &Bitfield::full(64), 1)[0].piece
            })
            .collect();
        assert!(firsts.len() > 5, "{firsts:?}");
    }

    #[test]
    fn partial_pieces_are_finished_first_and_no_double_requests() {
        let mut p = Picker::with_options(4 * 40, 40, 10, 3).unwrap();
        p.peer_have_all();
        let all = Bitfield::full(4);
        let a = pick(&mut p, A, &all, 2);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].piece, a[1].piece);
        let b = pick(&mut p, B, &all, 2);
        // B continues A's piece rather than starting a new one.
        assert!(b.iter().all(|x| x.piece == a[0].piece));
        let set: HashSet<_> = a.iter().chain(&b).collect();
        assert_eq!(set.len(), 4);
        assert!(!p.is_endgame());
        let c = pick(&mut p, PeerKey(3), &all, 100);
        // 12 fresh blocks, then end-game starts and the 4 blocks held by
        // A and B are duplicated.
        assert_eq!(c.len(), 16);
        assert!(c[..12].iter().all(|x| x.piece != a[0].piece));
        assert!(c[12..].iter().all(|x| set.contains(x)));
        assert!(p.is_endgame());
    }

    const C: PeerKey = PeerKey(3);

    #[test]
    fn a_failed_piece_is_fetched_again_from_one_peer_only() {
        // 2 pieces of 4 blocks.
        let mut p = Picker::with_options(2 * 40, 40, 10, 5).unwrap();
        p.peer_have_all();
        p.peer_have_all();
        p.peer_have_all();
        let all = Bitfield::full(2);
        // The first copy of a piece is shared: A and B each fetch half of it.
        let a = pick(&mut p, A, &all, 2);
        let piece = a[0].piece;
        assert!(a.iter().all(|b| b.piece == piece));
        let b = pick(&mut p, B, &all, 2);
        assert!(b.iter().all(|r| r.piece == piece), "{b:?}");
        assert_eq!(p.owner(piece), None);
        for r in a.iter().chain(&b) {
            recv(&mut p, if a.contains(r) { A } else { B }, *r);
        }
        assert!(p.piece_verified(piece, false));
        assert!(p.is_single_source(piece));
        // Fetched again: B asks first and gets part of it (room for 2 now).
        let b1 = pick(&mut p, B, &all, 2);
        assert!(b1.iter().all(|r| r.piece == piece), "{b1:?}");
        assert_eq!(p.owner(piece), Some(B));
        // A and C get only the other piece: the rest of this one waits for B.
        for peer in [A, C] {
            let got = pick(&mut p, peer, &all, 10);
            assert!(got.iter().all(|r| r.piece != piece), "{peer:?} got {got:?}");
        }
        let b2 = pick(&mut p, B, &all, 10);
        let rest: Vec<_> = b2.iter().filter(|r| r.piece == piece).collect();
        assert_eq!(rest.len(), 2, "{b2:?}");
        // Everything is requested now; end-game duplicates blocks of the other
        // piece for A and C, never those reserved for B.
        assert!(p.is_endgame());
        for peer in [A, C] {
            let got = pick(&mut p, peer, &all, 10);
            assert!(
                got.iter().all(|r| r.piece != piece),
                "end-game {peer:?} {got:?}"
            );
            if peer == C {
                assert_eq!(got.len(), 4, "C duplicates A's blocks: {got:?}");
            }
        }
        // B delivers one block and leaves: the piece goes to one other peer.
        recv(&mut p, B, b1[0]);
        p.peer_left(B, &all);
        assert_eq!(p.owner(piece), None);
        let c = pick(&mut p, C, &all, 10);
        assert_eq!(c.iter().filter(|r| r.piece == piece).count(), 3, "{c:?}");
        assert_eq!(p.owner(piece), Some(C));
        assert!(pick(&mut p, A, &all, 10).iter().all(|r| r.piece != piece));
        for r in c.iter().filter(|r| r.piece == piece) {
            recv(&mut p, C, *r);
        }
        assert!(p.piece_verified(piece, true));
        assert!(!p.is_single_source(piece));
    }

    #[test]
    fn a_piece_that_verifies_is_shared_again() {
        let mut p = Picker::with_options(40, 40, 10, 5).unwrap();
        p.peer_have_all();
        let all = Bitfield::full(1);
        for r in pick(&mut p, A, &all, 4) {
            recv(&mut p, A, r);
        }
        assert!(p.piece_verified(0, false));
        // Nothing received and the owner choked us: no owner, anyone may start it.
        let a = pick(&mut p, A, &all, 1);
        assert_eq!(p.owner(0), Some(A));
        p.requests_dropped(A);
        assert_eq!(p.partial_count(), 0);
        let b = pick(&mut p, B, &all, 1);
        assert_eq!(a, b);
        assert_eq!(p.owner(0), Some(B));
        // mark_have (found on disk) clears the flag too.
        p.mark_have(0);
        assert!(!p.is_single_source(0));
        assert!(p.is_finished());
    }

    #[test]
    fn receive_verify_and_hash_failure() {
        let mut p = Picker::with_options(2 * 20, 20, 10, 3).unwrap();
        p.peer_have_all();
        let all = Bitfield::full(2);
        let v = pick(&mut p, A, &all, 2);
        let piece = v[0].piece;
        assert_eq!(
            recv(&mut p, A, v[0]).0,
            Received::Accepted {
                piece_complete: false
            }
        );
        assert_eq!(recv(&mut p, A, v[0]).0, Received::Duplicate);
        assert!(!p.piece_verified(piece, true), "not complete yet");
        assert_eq!(
            recv(&mut p, A, v[1]).0,
            Received::Accepted {
                piece_complete: true
            }
        );
        assert_eq!(recv(&mut p, A, v[1]).0, Received::Duplicate);
        assert_eq!(p.partial_count(), 0);
        assert!(p.piece_verified(piece, false));
        assert!(!p.piece_verified(piece, false));
        // The failed piece is requestable again from scratch.
        let again = pick(&mut p, B, &all, 2);
        assert_eq!(again, v);
        for b in &again {
            recv(&mut p, B, *b);
        }
        assert!(p.piece_verified(piece, true));
        assert!(p.have().has(piece));
        assert_eq!(recv(&mut p, A, v[0]).0, Received::Duplicate);
        assert!(!p.is_finished());
        assert!(p.interesting(&all));
        let rest = pick(&mut p, A, &all, 10);
        assert!(rest.iter().all(|b| b.piece != piece));
        for b in &rest {
            recv(&mut p, A, *b);
        }
        assert!(p.piece_verified(1 - piece, true));
        assert!(p.is_finished());
        assert!(!p.interesting(&all));
        assert!(pick(&mut p, A, &all, 10).is_empty());
        assert!(!p.piece_verified(9, true));
    }

    #[test]
    fn invalid_blocks_are_rejected() {
        let mut p = Picker::with_options(25, 20, 10, 3).unwrap();
        let bad = [
            BlockRef {
                piece: 2,
                begin: 0,
                len: 10,
            },
            BlockRef {
                piece: 0,
                begin: 5,
                len: 10,
            },
            BlockRef {
                piece: 0,
                begin: 20,
                len: 10,
            },
            BlockRef {
                piece: 0,
                begin: 0,
                len: 9,
            },
            BlockRef {
                piece: 1,
                begin: 0,
                len: 10,
            },
            BlockRef {
                piece: 0,
                begin: u32::MAX - 9,
                len: 10,
            },
        ];
        for b in bad {
            assert_eq!(recv(&mut p, A, b).0, Received::Invalid, "{b:?}");
        }
        // Unsolicited but valid: accepted (last piece is 5 bytes).
        let ok = BlockRef {
            piece: 1,
            begin: 0,
            len: 5,
        };
        assert_eq!(
            recv(&mut p, A, ok).0,
            Received::Accepted {
                piece_complete: true
            }
        );
    }

    #[test]
    fn endgame_duplicates_and_cancels() {
        let mut p = Picker::with_options(20, 20, 10, 3).unwrap();
        p.peer_have_all();
        p.peer_have_all();
        let all = Bitfield::full(1);
        assert!(!p.is_endgame());
        let a = pick(&mut p, A, &all, 10);
        assert_eq!(a.len(), 2);
        assert!(p.is_endgame());
        // A never gets its own blocks twice.
        assert!(pick(&mut p, A, &all, 10).is_empty());
        let b = pick(&mut p, B, &all, 10);
        assert_eq!(a, b);
        assert_eq!(p.requests_in_flight(), 4);
        let (r, cancel) = recv(&mut p, B, b[0]);
        assert_eq!(
            r,
            Received::Accepted {
                piece_complete: false
            }
        );
        assert_eq!(cancel, vec![A]);
        // A's copy arrives anyway / its cancel is a no-op.
        assert!(!p.abort_block(A, a[0]));
        assert_eq!(recv(&mut p, A, a[0]).0, Received::Duplicate);
        let (r, cancel) = recv(&mut p, A, a[1]);
        assert_eq!(
            r,
            Received::Accepted {
                piece_complete: true
            }
        );
        assert_eq!(cancel, vec![B]);
        assert_eq!(p.requests_in_flight(), 0);
    }

    #[test]
    fn dropped_and_aborted_requests_become_requestable() {
        let mut p = Picker::with_options(3 * 30, 30, 10, 9).unwrap();
        p.peer_have_all();
        let all = Bitfield::full(3);
        let a = pick(&mut p, A, &all, 4);
        assert_eq!(p.requests_in_flight(), 4);
        recv(&mut p, A, a[0]);
        p.requests_dropped(A);
        p.check_invariants();
        assert_eq!(p.requests_in_flight(), 0);
        // Piece with a received block stays partial; the other one is freed.
        assert_eq!(p.partial_count(), 1);
        let b = pick(&mut p, B, &all, 3);
        assert_eq!(&b[..2], &a[1..3]);
        assert_eq!(b[2], a[3]);
        assert!(p.abort_block(B, b[2]));
        assert!(!p.abort_block(B, b[2]));
        assert!(!p.abort_block(
            B,
            BlockRef {
                piece: 0,
                begin: 3,
                len: 10
            }
        ));
        assert!(!p.abort_block(
            B,
            BlockRef {
                piece: 99,
                begin: 0,
                len: 10
            }
        ));
        p.check_invariants();
        assert_eq!(pick(&mut p, A, &all, 1), vec![b[2]]);
        // peer_left drops requests and availability.
        let before = p.availability(0);
        p.peer_left(A, &all);
        p.check_invariants();
        assert_eq!(p.availability(0), before - 1);
        assert_eq!(p.requests_in_flight(), 2);
    }

    #[test]
    fn mark_have_from_every_state() {
        let mut p = Picker::with_options(4 * 20, 20, 10, 9).unwrap();
        let mut bf = Bitfield::new(4);
        bf.set(1);
        bf.set(3);
        p.peer_bitfield(&bf);
        p.peer_bitfield(&Bitfield::full(4));
        p.check_invariants();
        let v = pick(&mut p, A, &Bitfield::full(4), 1);
        p.mark_have(v[0].piece);
        p.check_invariants();
        p.mark_have(v[0].piece);
        for piece in 0..5 {
            p.mark_have(piece);
            p.check_invariants();
        }
        assert!(p.is_finished());
        p.peer_left(A, &bf);
        p.peer_have(7);
        p.peer_have(0);
        p.check_invariants();
        assert_eq!(p.availability(0), 2);
    }

    #[test]
    fn random_swarm_simulation_never_panics_and_finishes() {
        for seed in 1..6u64 {
            let mut rng = Rng::new(seed * 0x9e37_79b9);
            let pieces = 40u32;
            let mut p = Picker::with_options(u64::from(pieces) * 50 - 7, 50, 16, seed).unwrap();
            let peers: Vec<(PeerKey, Bitfield)> = (0..5)
                .map(|i| {
                    let mut bf = Bitfield::new(pieces);
                    for x in 0..pieces {
                        if rng.below(3) != 0 || i == 0 {
                            bf.set(x);
                        }
                    }
                    (PeerKey(i), bf)
                })
                .collect();
            for (_, bf) in &peers {
                p.peer_bitfield(bf);
            }
            p.check_invariants();
            let mut inflight: Vec<Vec<BlockRef>> = vec![Vec::new(); peers.len()];
            let mut steps = 0;
            while !p.is_finished() {
                steps += 1;
                assert!(steps < 100_000, "no progress");
                let i = rng.below(peers.len());
                let (key, bf) = &peers[i];
                let endgame = p.is_endgame();
                let mut out = Vec::new();
                p.next_requests(*key, bf, 8, &mut out);
                for b in &out {
                    assert!(bf.has(b.piece));
                    assert!(!inflight[i].contains(b), "same block twice to one peer");
                    if !endgame && !p.is_endgame() {
                        assert!(
                            inflight.iter().all(|f| !f.contains(b)),
                            "dup outside endgame"
                        );
                    }
                }
                inflight[i].extend(out);
                match rng.below(10) {
                    0 => {
                        p.requests_dropped(*key);
                        inflight[i].clear();
                    }
                    1 if !inflight[i].is_empty() => {
                        let b = inflight[i].remove(0);
                        p.abort_block(*key, b);
                    }
                    2 => {
                        let garbage = BlockRef {
                            piece: rng.next_u64() as u32 % 50,
                            begin: rng.next_u64() as u32 % 100,
                            len: rng.next_u64() as u32 % 20,
                        };
                        let mut cancel = Vec::new();
                        let r = p.block_received(*key, garbage, &mut cancel);
                        inflight[i].retain(|x| *x != garbage);
                        for c in cancel {
                            inflight[c.0 as usize].retain(|x| *x != garbage);
                        }
                        if r == (Received::Accepted {
                            piece_complete: true,
                        }) {
                            p.piece_verified(garbage.piece, false);
                        }
                        assert!(!p.abort_block(*key, garbage));
                        assert!(!p.piece_verified(garbage.piece, false));
                    }
                    _ => {
                        if inflight[i].is_empty() {
                            continue;
                        }
                        let j = rng.below(inflight[i].len());
                        let b = inflight[i].swap_remove(j);
                        let mut cancel = Vec::new();
                        let r = p.block_received(*key, b, &mut cancel);
                        assert_ne!(r, Received::Invalid);
                        for c in cancel {
                            inflight[c.0 as usize].retain(|x| *x != b);
                        }
                        if r == (Received::Accepted {
                            piece_complete: true,
                        }) {
                            p.piece_verified(b.piece, rng.below(5) != 0);
                        }
                    }
                }
                p.check_invariants();
                assert!(p.requests_in_flight() <= inflight.iter().map(Vec::len).sum());
            }
            assert_eq!(p.partial_count(), 0);
        }
    }
}
