//! One torrent on the reactor: the state its peer sessions share, and the engine
//! handler that owns the torrent's disk work, dials peers and reports progress.
//!
//! Layout (see `docs/peer-wire.md`):
//!
//! - [`Shared`] (behind `Rc<RefCell<_>>`, loop thread only) holds the piece picker,
//!   the pieces being assembled, the verified-piece log sessions announce from, a
//!   small cache of piece data for uploads, the upload slots and the peer manager.
//! - `Engine` is a handler living as long as the torrent. Sessions never touch the
//!   disk: they queue "piece complete" and "chunk needed" work in [`Shared`] and wake
//!   the engine, which runs hashing, writes and reads on the worker pool and wakes
//!   the sessions waiting for the result. Jobs belong to the engine, so a session
//!   closing mid-job loses nothing.
//! - [`super::session::Session`] is one handler per peer connection.
//! - A magnet download ([`start_magnet`]) starts with placeholder metadata (only the
//!   info-hash); sessions fetch the info dictionary through `ut_metadata`, the engine
//!   hashes and parses it on the pool and then opens the data as for a `.torrent`.
//! - With [`TorrentConfig::discovery`], a [`DiscoveryHandler`] child of the engine
//!   announces the torrent on the LAN and reports other nodes to the engine's
//!   `on_message`; a leecher adds those serving the same torrent to the peer
//!   manager ([`super::discover`] has the rules).
//!
//! This module must not parse wire bytes (that is [`super::wire`]) nor block: every
//! file access and every hash goes through `cx.offload`.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::blame::{Blame, Digest};
use super::discover::{Candidates, Change, DiscoverySettings};
use super::metadata::{MetadataFetcher, MetadataServer, Progress as MetaProgress, Verified};
use super::metainfo::{Metainfo, sha1};
use super::mse::Encryption;
use super::peers::PeerManager;
use super::pex::PexFlags;
use super::picker::{BlockRef, PeerKey, Picker};
use super::session::Session;
use super::storage::{OpenMode, Storage};
use super::tracker_client::{Announcer, Completed};
use reactor::CloseReason;
use reactor::TimerId;
use reactor::{Addr, Handler, HandlerId, HandlerResult};
use reactor::{Context, Loop, Reactor};
use reactor::{JobId, JobResult};
use reactor::{ListenOptions, Listener};
use reactor_discovery::{Discovery, DiscoveryHandler, PeerEvent};

/// Largest unit of piece data read from disk and cached for uploads: a whole
/// piece when pieces are small, else a slice of one.
pub const MAX_CHUNK: u32 = 1024 * 1024;

/// Tunables of one torrent. `TorrentConfig::default()` suits real use; tests
/// shorten the timeouts. Set the fields on a default (the struct may gain fields,
/// so it cannot be built as a literal outside this crate).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TorrentConfig {
    /// Address to accept peers on (`None`: outgoing connections only).
    pub listen: Option<SocketAddr>,
    /// Peers to connect to.
    pub peers: Vec<SocketAddr>,
    /// HTTP tracker to announce to (started, periodic, completed, stopped).
    pub tracker: Option<String>,
    /// Announce the torrent by UDP broadcast and, when downloading, dial the nodes
    /// that announce the same info-hash (`None`: no discovery). The announced TCP
    /// port is the [`listen`](TorrentConfig::listen) port, or 0 without a listener
    /// (others then ignore the announcement: such a leecher finds seeders but
    /// cannot be found). A seeder announces and ignores what it hears: it only
    /// needs to be found. See `docs/discovery.md`.
    pub discovery: Option<DiscoverySettings>,
    /// Message Stream Encryption (`--encryption`): refuse, accept and offer, or
    /// require it. See [`Encryption`].
    pub encryption: Encryption,
    /// A peer must complete its handshake (the MSE handshake included) within
    /// this time.
    pub handshake_timeout: Duration,
    /// A connection with no complete message for this long is closed.
    pub idle_timeout: Duration,
    /// A peer holding our requests without sending a block for this long is closed;
    /// a peer keeping an upload slot this long without requesting is choked when
    /// another peer waits for a slot.
    pub request_timeout: Duration,
    /// A keep-alive is sent after this long without sending anything.
    pub keepalive_interval: Duration,
    /// A non-blocking connect must finish within this time.
    pub connect_timeout: Duration,
    /// Downloading fails after this long without receiving piece data.
    pub no_progress_timeout: Duration,
    /// Peers we upload to at the same time.
    pub upload_slots: usize,
    /// Connections (both directions) at most.
    pub max_connections: usize,
    /// Our requests in flight per peer at most (also capped by the peer's `reqq`).
    pub max_requests: usize,
    /// Requests a peer may queue with us (advertised as `reqq`).
    pub max_peer_requests: usize,
    /// Bytes of piece data cached for uploads.
    pub cache_bytes: usize,
    /// Print progress to stderr while downloading.
    pub progress: bool,
    /// Stop the loop once the download completes (the leech CLI).
    pub exit_when_complete: bool,
}

/// The per-connection deadlines of a [`TorrentConfig`], copied cheaply.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// See [`TorrentConfig::handshake_timeout`].
    pub handshake_timeout: Duration,
    /// See [`TorrentConfig::idle_timeout`].
    pub idle_timeout: Duration,
    /// See [`TorrentConfig::request_timeout`].
    pub request_timeout: Duration,
    /// See [`TorrentConfig::keepalive_interval`].
    pub keepalive_interval: Duration,
    /// See [`TorrentConfig::connect_timeout`].
    pub connect_timeout: Duration,
}

impl TorrentConfig {
    /// The per-connection deadlines.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            request_timeout: self.request_timeout,
            keepalive_interval: self.keepalive_interval,
            connect_timeout: self.connect_timeout,
        }
    }
}

impl Default for TorrentConfig {
    fn default() -> TorrentConfig {
        TorrentConfig {
            listen: None,
            peers: Vec::new(),
            tracker: None,
            discovery: None,
            encryption: Encryption::default(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(180),
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            no_progress_timeout: Duration::from_secs(60),
            upload_slots: 16,
            max_connections: 64,
            max_requests: 250,
            max_peer_requests: 2000,
            cache_bytes: 32 * 1024 * 1024,
            progress: false,
            exit_when_complete: true,
        }
    }
}

/// Seed existing data or download it.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Serve `data` (a file, or the torrent's folder for multi-file torrents); it is
    /// verified first and must match the torrent.
    Seed(PathBuf),
    /// Download into `out`; pieces already there and correct are kept.
    Leech(PathBuf),
}

/// A session's mailbox in [`Shared`].
#[derive(Debug)]
pub(crate) struct SessionSlot {
    pub id: HandlerId,
    /// The peer's address (its identity for blame and bans).
    pub addr: SocketAddr,
    /// Requests to cancel (another peer delivered the block first, end-game).
    pub cancels: Vec<BlockRef>,
    /// A wake-up message is already on its way.
    pub woken: bool,
    /// Banned for sending data that failed the hash check.
    pub penalised: bool,
    /// Where the peer accepts connections, if known (the address we dialled, or
    /// its IP with the `p` of its extension handshake): what PEX advertises.
    pub listen: Option<SocketAddr>,
    /// PEX flags to advertise it with (seed, reachable, encryption).
    pub pex_flags: PexFlags,
}

/// A piece being received: its buffer and who sent each block of it.
#[derive(Debug)]
pub(crate) struct Assembly {
    pub buf: BytesMut,
    /// By block index.
    pub senders: Vec<Option<SocketAddr>>,
}

/// State shared by the engine and the sessions of one torrent (loop thread only).
pub struct Shared {
    pub(crate) meta: Arc<Metainfo>,
    pub(crate) cfg: TorrentConfig,
    pub(crate) peer_id: [u8; 20],
    pub(crate) engine: HandlerId,
    engine_woken: bool,
    pub(crate) storage: Option<Arc<Storage>>,
    pub(crate) picker: Picker,
    /// Verified pieces in the order they were verified; sessions announce from it.
    pub(crate) have_log: Vec<u32>,
    /// True once the data was checked: until then nothing is served or announced.
    pub(crate) ready: bool,
    pub(crate) sessions: HashMap<PeerKey, SessionSlot>,
    pub(crate) assembling: HashMap<u32, Assembly>,
    /// Complete pieces waiting for the engine to hash and write them, with who
    /// sent each block.
    completed: VecDeque<(u32, Bytes, Vec<Option<SocketAddr>>)>,
    /// Who to blame for pieces that fail their hash check.
    pub(crate) blame: Blame<SocketAddr>,
    cache: VecDeque<((u32, u32), Bytes)>,
    cache_bytes: usize,
    /// Chunk reads in flight (or queued) and the sessions waiting for each.
    loading: HashMap<(u32, u32), Vec<PeerKey>>,
    load_queue: VecDeque<(u32, u32)>,
    pub(crate) chunk_size: u32,
    pub(crate) unchoked: usize,
    pub(crate) choke_waiters: VecDeque<PeerKey>,
    pub(crate) peers: PeerManager,
    pub(crate) downloaded: u64,
    pub(crate) uploaded: u64,
    pub(crate) last_progress: Instant,
    pub(crate) max_msg_len: u32,
    /// False for a magnet download until its metadata is fetched and verified:
    /// until then `meta` and `picker` are one-piece placeholders (only the
    /// info-hash is real) and sessions only record what peers announce.
    pub(crate) has_meta: bool,
    /// Fetches the metadata from peers (magnet downloads, until it verifies).
    pub(crate) fetcher: Option<MetadataFetcher<SocketAddr>>,
    /// Serves our info dictionary (BEP 9); not for private torrents (BEP 27).
    pub(crate) meta_server: Option<MetadataServer<SocketAddr>>,
    /// Our listen port, for the `p` of our extension handshake.
    pub(crate) listen_port: Option<u16>,
}

/// Largest message accepted on a connection: a block or bitfield of the torrent,
/// an extension handshake, a `ut_metadata` piece, a `ut_pex` message.
fn max_msg_len(piece_count: u32) -> u32 {
    super::wire::max_message_len(piece_count, 16 * 1024)
        .max(super::wire::MAX_EXT_HANDSHAKE_LEN as u32 + 2)
        .max(super::metadata::MAX_PAYLOAD_LEN as u32 + 2)
        .max(super::pex::MAX_PAYLOAD_LEN as u32 + 2)
}

/// The key a session is known by in the picker and in [`Shared`].
pub(crate) fn key_of(id: HandlerId) -> PeerKey {
    PeerKey(id.as_u64())
}

impl Shared {
    /// Fresh state for `meta`: nothing verified, no sessions.
    pub(crate) fn new(meta: Arc<Metainfo>, cfg: TorrentConfig) -> std::io::Result<Shared> {
        let picker = Picker::new(meta.total_length, meta.piece_length)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let max_msg_len = max_msg_len(meta.piece_count());
        Ok(Shared {
            chunk_size: meta.piece_length.min(MAX_CHUNK),
            meta: meta.clone(),
            peer_id: random_peer_id(),
            engine: HandlerId::DANGLING,
            engine_woken: false,
            storage: None,
            picker,
            have_log: Vec::new(),
            ready: false,
            sessions: HashMap::new(),
            assembling: HashMap::new(),
            completed: VecDeque::new(),
            blame: Blame::new(),
            cache: VecDeque::new(),
            cache_bytes: 0,
            loading: HashMap::new(),
            load_queue: VecDeque::new(),
            unchoked: 0,
            choke_waiters: VecDeque::new(),
            peers: PeerManager::new(cfg.max_connections, 4096),
            downloaded: 0,
            uploaded: 0,
            last_progress: Instant::now(),
            max_msg_len,
            cfg: cfg.clone(),
            has_meta: true,
            fetcher: None,
            meta_server: None,
            listen_port: None,
        })
    }

    /// State for a magnet download of `info_hash`: no metadata yet (see
    /// [`Shared::has_meta`]); the fetcher asks peers for it.
    pub(crate) fn new_magnet(info_hash: [u8; 20], cfg: TorrentConfig) -> std::io::Result<Shared> {
        let invalid = |e: super::metainfo::MetainfoError| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
        };
        let t = super::metainfo::build_torrent("metadata", &[(vec![], 1)], 16384, &[[0; 20]], None)
            .map_err(invalid)?;
        let mut placeholder = Metainfo::parse(&t).map_err(invalid)?;
        placeholder.info_hash = info_hash;
        let mut sh = Shared::new(Arc::new(placeholder), cfg)?;
        // Peers may announce a bitfield before we know the piece count: allow the
        // largest one a fetchable torrent can have.
        sh.max_msg_len = max_msg_len(super::metadata::MAX_METADATA_SIZE / 20);
        sh.has_meta = false;
        sh.fetcher = Some(MetadataFetcher::new(info_hash));
        Ok(sh)
    }

    /// The metadata arrived and verified: the real torrent replaces the
    /// placeholders. Sessions catch up when next woken (`Peer::upgrade`).
    pub(crate) fn set_metadata(
        &mut self,
        meta: Arc<Metainfo>,
        server: Option<MetadataServer<SocketAddr>>,
    ) -> std::io::Result<()> {
        self.picker = Picker::new(meta.total_length, meta.piece_length)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        self.chunk_size = meta.piece_length.min(MAX_CHUNK);
        self.max_msg_len = self.max_msg_len.max(max_msg_len(meta.piece_count()));
        self.meta = meta;
        self.meta_server = server;
        self.fetcher = None;
        self.has_meta = true;
        Ok(())
    }

    /// Whether peer exchange may run (BEP 27: never for private torrents).
    pub(crate) fn pex_allowed(&self) -> bool {
        !self.has_meta || !self.meta.private
    }

    /// Wakes the engine (once until it runs).
    pub(crate) fn wake_engine(&mut self, cx: &mut Loop<'_>) {
        if !self.engine_woken {
            self.engine_woken = true;
            cx.notify(self.engine);
        }
    }

    /// Wakes one session (once until it runs).
    pub(crate) fn wake(&mut self, cx: &mut Loop<'_>, key: PeerKey) {
        if let Some(s) = self.sessions.get_mut(&key)
            && !s.woken
        {
            s.woken = true;
            cx.notify(s.id);
        }
    }

    /// Wakes every session: new pieces to announce or blocks to request.
    pub(crate) fn wake_all(&mut self, cx: &mut Loop<'_>) {
        for s in self.sessions.values_mut() {
            if !s.woken {
                s.woken = true;
                cx.notify(s.id);
            }
        }
    }

    /// Length of chunk `k` of `piece`.
    fn chunk_len(&self, piece: u32, k: u32) -> u32 {
        let plen = self.picker.piece_len(piece);
        plen.saturating_sub(k * self.chunk_size)
            .min(self.chunk_size)
    }

    /// Cached data of chunk `k` of `piece` (a cheap reference-counted handle).
    pub(crate) fn cached(&self, piece: u32, k: u32) -> Option<Bytes> {
        self.cache
            .iter()
            .find(|(key, _)| *key == (piece, k))
            .map(|(_, b)| b.clone())
    }

    /// Asks the engine for chunk `k` of `piece`; `who` is woken when it is cached.
    pub(crate) fn want_chunk(&mut self, cx: &mut Loop<'_>, piece: u32, k: u32, who: PeerKey) {
        match self.loading.get_mut(&(piece, k)) {
            Some(w) => {
                if !w.contains(&who) {
                    w.push(who);
                }
            }
            None => {
                self.loading.insert((piece, k), vec![who]);
                self.load_queue.push_back((piece, k));
                self.wake_engine(cx);
            }
        }
    }

    fn cache_insert(&mut self, piece: u32, k: u32, data: Bytes) {
        if self.cache.iter().any(|(key, _)| *key == (piece, k)) {
            return;
        }
        self.cache_bytes += data.len();
        self.cache.push_back(((piece, k), data));
        // FIFO is enough: uploads sweep pieces; keep at least two chunks.
        while self.cache_bytes > self.cfg.cache_bytes && self.cache.len() > 2 {
            if let Some((_, old)) = self.cache.pop_front() {
                self.cache_bytes -= old.len();
            }
        }
    }

    /// Called by a session whose block completed `piece`: hand it to the engine.
    pub(crate) fn piece_complete(&mut self, cx: &mut Loop<'_>, piece: u32) {
        if let Some(a) = self.assembling.remove(&piece) {
            self.completed.push_back((piece, a.buf.freeze(), a.senders));
            self.wake_engine(cx);
        }
    }

    /// A session gives back its upload slot; the first waiting peer gets a chance.
    pub(crate) fn release_slot(&mut self, cx: &mut Loop<'_>) {
        self.unchoked = self.unchoked.saturating_sub(1);
        while let Some(k) = self.choke_waiters.pop_front() {
            if self.sessions.contains_key(&k) {
                self.wake(cx, k);
                break;
            }
        }
    }

    /// Bytes left to download.
    pub fn left(&self) -> u64 {
        let have = self.picker.have();
        let mut left = 0u64;
        for p in 0..self.picker.piece_count() {
            if !have.has(p) {
                left += u64::from(self.picker.piece_len(p));
            }
        }
        left
    }
}

/// What the caller keeps of a started torrent.
pub struct TorrentHandle {
    /// The address peers can connect to, if listening.
    pub local_addr: Option<SocketAddr>,
    outcome: Rc<RefCell<Option<Result<(), String>>>>,
    shared: Rc<RefCell<Shared>>,
}

impl TorrentHandle {
    /// After the loop returned: `Ok` if the download completed (or a seed was stopped
    /// by a signal), `Err` with a one-line reason if it failed.
    pub fn outcome(&self) -> Result<(), String> {
        self.outcome.borrow().clone().unwrap_or(Ok(()))
    }

    /// Every piece is verified (and, when downloading, written).
    pub fn is_complete(&self) -> bool {
        self.shared.borrow().picker.is_finished()
    }

    /// Piece bytes downloaded and uploaded so far.
    pub fn transferred(&self) -> (u64, u64) {
        let s = self.shared.borrow();
        (s.downloaded, s.uploaded)
    }
}

fn random_peer_id() -> [u8; 20] {
    use std::hash::{BuildHasher, Hasher};
    let mut id = *b"-RE0100-000000000000";
    let s = std::collections::hash_map::RandomState::new();
    for (i, chunk) in id[8..].chunks_mut(6).enumerate() {
        let mut h = s.build_hasher();
        h.write_usize(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        let v = h.finish().to_le_bytes();
        for (c, b) in chunk.iter_mut().zip(v) {
            *c = b"0123456789abcdefghijklmnopqrstuvwxyz"[(b % 36) as usize];
        }
    }
    id
}

/// Adds a torrent to `reactor`: binds the listener and the discovery socket (if
/// any) now, so the caller can print the address and bind errors come back here
/// (with the address in the message), and spawns the engine, which checks the data
/// on the pool before accepting peers (connections wait in the kernel's backlog
/// meanwhile) and before announcing itself by discovery.
///
/// A seeder in a few lines (this is what `peer seed` does):
///
/// ```no_run
/// use reactor::Reactor;
/// use reactor_bittorrent::metainfo::Metainfo;
/// use reactor_bittorrent::torrent::{self, Mode, TorrentConfig};
///
/// let meta = Metainfo::parse(&std::fs::read("t.torrent")?).expect("a torrent");
/// let mut reactor = Reactor::new()?;
/// reactor.shutdown_on_signals()?;
/// let mut cfg = TorrentConfig::default();
/// cfg.listen = Some("127.0.0.1:0".parse().unwrap());
/// let t = torrent::start(&mut reactor, meta, Mode::Seed("data.bin".into()), cfg)?;
/// println!("listening on {}", t.local_addr.unwrap());
/// reactor.run()?;
/// t.outcome().map_err(std::io::Error::other)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn start(
    reactor: &mut Reactor,
    meta: Metainfo,
    mode: Mode,
    cfg: TorrentConfig,
) -> std::io::Result<TorrentHandle> {
    let meta = Arc::new(meta);
    let shared = Rc::new(RefCell::new(Shared::new(meta, cfg.clone())?));
    start_with(reactor, shared, mode, cfg, None)
}

/// Starts a download from a magnet link: only the info-hash is known, so the
/// info dictionary is fetched from peers first (BEP 9 `ut_metadata`, checked
/// against the info-hash on the pool), then saved as a `.torrent` to
/// `save_torrent` if given, and the download proceeds as with [`start`]. Peers
/// come from `cfg.peers`, `cfg.tracker`, discovery and PEX. `out` is as for
/// [`Mode::Leech`].
pub fn start_magnet(
    reactor: &mut Reactor,
    info_hash: [u8; 20],
    out: PathBuf,
    cfg: TorrentConfig,
    save_torrent: Option<PathBuf>,
) -> std::io::Result<TorrentHandle> {
    let shared = Rc::new(RefCell::new(Shared::new_magnet(info_hash, cfg.clone())?));
    start_with(reactor, shared, Mode::Leech(out), cfg, save_torrent)
}

/// The torrent's numbers in its loop's stats line and metrics, read from the
/// shared state when a snapshot is taken.
fn register_metrics(reactor: &mut Reactor, shared: &Rc<RefCell<Shared>>) {
    type Read = fn(&Shared) -> u64;
    let gauges: [(&str, Read); 5] = [
        ("peer_connections", |s| s.peers.active() as u64),
        ("peer_peers_known", |s| s.peers.len() as u64),
        ("peer_pieces_have", |s| s.picker.have().count() as u64),
        ("peer_pieces", |s| s.picker.have().len() as u64),
        ("peer_bans", |s| s.peers.ban_count() as u64),
    ];
    for (name, read) in gauges {
        let sh = shared.clone();
        reactor.gauge_fn(name, move || read(&sh.borrow()) as i64);
    }
    let counters: [(&str, Read); 2] = [
        ("peer_piece_bytes_downloaded", |s| s.downloaded),
        ("peer_piece_bytes_uploaded", |s| s.uploaded),
    ];
    for (name, read) in counters {
        let sh = shared.clone();
        reactor.counter_fn(name, move || read(&sh.borrow()));
    }
}

fn start_with(
    reactor: &mut Reactor,
    shared: Rc<RefCell<Shared>>,
    mode: Mode,
    cfg: TorrentConfig,
    save_torrent: Option<PathBuf>,
) -> std::io::Result<TorrentHandle> {
    let mut listener = None;
    let mut local_addr = None;
    if let Some(addr) = cfg.listen {
        let sh = shared.clone();
        let l = Listener::bind(addr, ListenOptions::default(), move |stream, peer| {
            let mut s = sh.borrow_mut();
            if !s.peers.accept_incoming(peer, Instant::now()) {
                log::info!(
                    "refusing peer {peer}: connection limit reached, already connected, or banned"
                );
                return None;
            }
            drop(s);
            Some(Session::incoming(sh.clone(), stream, peer))
        })
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        local_addr = Some(l.local_addr());
        shared.borrow_mut().listen_port = Some(l.local_addr().port());
        listener = Some(Box::new(move |cx: &mut Loop<'_>| {
            cx.spawn(l);
        }) as SpawnListener);
    }
    // After the listener, so the announced port is the one the OS chose.
    let discovery = match &cfg.discovery {
        None => None,
        Some(settings) => {
            let sh = shared.borrow();
            let role = match mode {
                Mode::Seed(_) => "seed",
                Mode::Leech(_) => "leech",
            };
            let port = local_addr.map_or(0, |a: SocketAddr| a.port());
            let dcfg = settings.config(role, &sh.peer_id, &sh.meta.info_hash, port);
            Some(Discovery::new(dcfg)?)
        }
    };
    register_metrics(reactor, &shared);
    let candidates = Candidates::new(&shared.borrow().meta.info_hash);
    let outcome = Rc::new(RefCell::new(None));
    let engine = Engine {
        sh: shared.clone(),
        mode,
        listener,
        outcome: outcome.clone(),
        verify_jobs: 0,
        tick: None,
        announcer: None,
        local_port: local_addr.map(|a: SocketAddr| a.port()),
        dial_buf: Vec::new(),
        last_report: None,
        report_bytes: 0,
        progress_tty: std::io::stderr().is_terminal(),
        finishing: false,
        started: Instant::now(),
        discovery,
        discovery_id: None,
        discovery_started: None,
        candidates,
        changes: Vec::new(),
        save_torrent,
    };
    let id = reactor.spawn(engine).id();
    shared.borrow_mut().engine = id;
    Ok(TorrentHandle {
        local_addr,
        outcome,
        shared,
    })
}

/// "a (3 blocks), b (1 block)" for a log line.
fn describe_senders(blocks: &[(u32, SocketAddr, Digest)]) -> String {
    let mut counts: Vec<(SocketAddr, usize)> = Vec::new();
    for &(_, s, _) in blocks {
        match counts.iter_mut().find(|(a, _)| *a == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(a, n)| format!("{a} ({n} block{})", if *n == 1 { "" } else { "s" }))
        .collect();
    parts.join(", ")
}

/// Spawns a handler whose type the engine does not name (the listener's).
type SpawnListener = Box<dyn FnOnce(&mut Loop<'_>)>;

/// Results of the engine's offloaded jobs.
pub(crate) enum Done {
    Opened(
        std::io::Result<Arc<Storage>>,
        bool,
        Option<MetadataServer<SocketAddr>>,
    ),
    /// Fetched metadata hashed, and parsed if it matched.
    Metadata(Box<(Verified, Option<ParsedMeta>)>),
    SavedTorrent(Result<(), String>),
    Verified(std::io::Result<Vec<u32>>),
    Checked {
        piece: u32,
        result: std::io::Result<bool>,
        data: Bytes,
        /// Who sent each block.
        senders: Vec<Option<SocketAddr>>,
        /// SHA-1 of each block: for a failed piece always, for a good one when a
        /// failed copy waits for comparison.
        digests: Option<Vec<Digest>>,
    },
    Read {
        piece: u32,
        chunk: u32,
        result: std::io::Result<Vec<u8>>,
    },
    Synced(std::io::Result<()>),
}

/// Fetched metadata parsed into a torrent, with the server for it.
pub(crate) type ParsedMeta =
    Result<(Metainfo, Option<MetadataServer<SocketAddr>>), super::metainfo::MetainfoError>;

/// The server for `meta`'s info dictionary (hashes it: call on the pool), none
/// for a private torrent (BEP 27) or one whose info dictionary is too large.
fn metadata_server(meta: &Metainfo) -> Option<MetadataServer<SocketAddr>> {
    if meta.private {
        return None;
    }
    MetadataServer::new(meta.info_dict.clone(), &meta.info_hash)
        .map_err(|e| log::info!("not serving the metadata: {e}"))
        .ok()
}

/// The torrent's engine handler. See the module docs.
pub(crate) struct Engine {
    sh: Rc<RefCell<Shared>>,
    mode: Mode,
    /// Spawns the listener once the data is checked.
    listener: Option<SpawnListener>,
    outcome: Rc<RefCell<Option<Result<(), String>>>>,
    verify_jobs: usize,
    tick: Option<TimerId>,
    announcer: Option<Addr<Completed>>,
    local_port: Option<u16>,
    dial_buf: Vec<SocketAddr>,
    last_report: Option<Instant>,
    report_bytes: u64,
    progress_tty: bool,
    finishing: bool,
    started: Instant,
    /// The discovery service, bound in `start`, spawned as our child once live.
    discovery: Option<Discovery>,
    discovery_id: Option<HandlerId>,
    /// When we started announcing (time-to-find is logged from it).
    discovery_started: Option<Instant>,
    /// Nodes announcing our torrent (leech only; a seeder ignores them).
    candidates: Candidates,
    changes: Vec<Change>,
    /// Where to write the `.torrent` of a magnet download once its metadata is in.
    save_torrent: Option<PathBuf>,
}

impl Engine {
    /// Opens (and for a seed, checks) the data on the pool; the metadata server
    /// is made there too (it hashes the info dictionary once).
    fn open(&mut self, cx: &mut Context<'_, Self>) -> Result<(), reactor::PoolFull> {
        let meta = self.sh.borrow().meta.clone();
        let (root, mode) = match &self.mode {
            Mode::Seed(p) => (p.clone(), OpenMode::Seed),
            Mode::Leech(p) => (p.clone(), OpenMode::Download),
        };
        cx.offload(move || {
            // Resume only from files that already have the right size.
            let existed = mode == OpenMode::Seed
                || meta.files.iter().enumerate().all(|(i, f)| {
                    super::storage::file_path(&meta, &root, i)
                        .and_then(|p| std::fs::metadata(p).ok())
                        .is_some_and(|m| m.len() == f.length)
                });
            let server = metadata_server(&meta);
            Done::Opened(
                Storage::open(meta, &root, mode).map(Arc::new),
                existed,
                server,
            )
        })?;
        Ok(())
    }

    /// A magnet download starts without metadata: accept and dial peers, announce,
    /// and fetch the info dictionary from whoever has it (`ut_metadata`).
    fn start_magnet(&mut self, cx: &mut Context<'_, Self>) {
        let info_hash = self.sh.borrow().meta.info_hash;
        log::info!(
            "magnet {}: fetching the metadata from peers",
            super::magnet::Magnet {
                info_hash,
                info_hash_v2: None,
                display_name: None,
                trackers: Vec::new(),
                peers: Vec::new(),
            }
            .info_hash_hex()
        );
        {
            let mut sh = self.sh.borrow_mut();
            sh.last_progress = cx.now();
            let now = cx.now();
            for p in sh.cfg.peers.clone() {
                sh.peers.add_peer(p, now);
            }
        }
        if let Some(spawn) = self.listener.take() {
            spawn(cx);
        }
        self.start_tick_and_tracker(cx);
        self.dial(cx);
    }

    fn start_tick_and_tracker(&mut self, cx: &mut Context<'_, Self>) {
        if self.tick.is_none() {
            self.tick = Some(cx.timer_repeat(Duration::from_millis(500)));
        }
        let tracker = self.sh.borrow().cfg.tracker.clone();
        if let Some(url) = tracker
            && self.announcer.is_none()
        {
            // A tracker needs a port even when we do not listen; 6881 is the
            // conventional one.
            let port = self.local_port.unwrap_or(6881);
            let a = Announcer::new(self.sh.clone(), url, port);
            self.announcer = Some(cx.spawn(a));
        }
    }

    /// The fetched metadata verified (and parsed, on the pool): the torrent
    /// becomes a normal download.
    fn metadata_ready(
        &mut self,
        cx: &mut Context<'_, Self>,
        meta: Metainfo,
        server: Option<MetadataServer<SocketAddr>>,
    ) {
        log::info!(
            "metadata received and verified: {:?}, {} bytes in {} pieces of {} bytes ({} bytes of metadata)",
            meta.name,
            meta.total_length,
            meta.piece_count(),
            meta.piece_length,
            meta.info_dict.len()
        );
        if let Some(path) = self.save_torrent.clone() {
            let announce = self.sh.borrow().cfg.tracker.clone();
            let bytes = meta.to_torrent_file(announce.as_deref());
            let job = cx.offload(move || {
                Done::SavedTorrent(
                    std::fs::write(&path, &bytes)
                        .map_err(|e| format!("cannot write {}: {e}", path.display())),
                )
            });
            if job.is_err() {
                return self.fail(cx, "worker pool full while saving the torrent".into());
            }
        }
        let r = self.sh.borrow_mut().set_metadata(Arc::new(meta), server);
        if let Err(e) = r {
            return self.fail(cx, format!("the fetched metadata is unusable: {e}"));
        }
        self.sh.borrow_mut().wake_all(cx);
        if self.open(cx).is_err() {
            self.fail(cx, "worker pool full while opening the download".into());
        }
    }

    /// Offloads the hashing of fetched metadata once all its pieces are in.
    fn verify_metadata(&mut self, cx: &mut Context<'_, Self>) {
        let job = self
            .sh
            .borrow_mut()
            .fetcher
            .as_mut()
            .and_then(|f| f.take_verify_job());
        let Some(job) = job else {
            return;
        };
        let r = cx.offload(move || {
            let v = job.run();
            let parsed = v.matches().then(|| {
                Metainfo::from_info_dict(v.data()).map(|m| {
                    let server = metadata_server(&m);
                    (m, server)
                })
            });
            Done::Metadata(Box::new((v, parsed)))
        });
        if r.is_err() {
            self.fail(cx, "worker pool full while verifying the metadata".into());
        }
    }

    fn on_metadata(&mut self, cx: &mut Context<'_, Self>, v: Verified, parsed: Option<ParsedMeta>) {
        let progress = match self.sh.borrow_mut().fetcher.as_mut() {
            Some(f) => f.on_verified(v),
            None => return,
        };
        match progress {
            MetaProgress::Complete(c) => {
                self.ban_all(
                    cx,
                    c.liars.iter().map(|&(p, i)| {
                        (
                            p,
                            format!(
                                "sent metadata piece {i} that differs from the verified metadata"
                            ),
                        )
                    }),
                );
                match parsed {
                    Some(Ok((meta, server))) => self.metadata_ready(cx, meta, server),
                    Some(Err(e)) => self.fail(
                        cx,
                        format!(
                            "the metadata matches the info-hash but is not a valid torrent: {e}"
                        ),
                    ),
                    None => self.fail(cx, "metadata verified but not parsed".into()),
                }
            }
            MetaProgress::HashFailed(f) => {
                let senders: Vec<String> = f.senders.iter().map(|a| a.to_string()).collect();
                log::warn!(
                    "metadata ({} bytes) failed its hash check; fetching it again from a single peer; sent by {}",
                    f.total_size,
                    senders.join(", ")
                );
                if let Some(liar) = f.sole_sender {
                    self.ban_all(
                        cx,
                        std::iter::once((
                            liar,
                            "sent metadata that does not match the info-hash".to_string(),
                        )),
                    );
                }
                self.sh.borrow_mut().wake_all(cx);
            }
            _ => {}
        }
    }

    /// Bans each peer (by host, off loopback) and closes its connections.
    fn ban_all(
        &mut self,
        cx: &mut Context<'_, Self>,
        bans: impl Iterator<Item = (SocketAddr, String)>,
    ) {
        let mut sh = self.sh.borrow_mut();
        for (addr, why) in bans {
            log::warn!(
                "banning peer {addr}: {why}; closing it, never dialling or accepting {} again",
                if addr.ip().to_canonical().is_loopback() {
                    "this address"
                } else {
                    "its host"
                }
            );
            sh.peers.ban(addr);
            let Shared {
                sessions, peers, ..
            } = &mut *sh;
            for s in sessions.values_mut() {
                if peers.is_banned(&s.addr) {
                    s.penalised = true;
                    cx.close_handler(s.id);
                }
            }
        }
    }

    fn fail(&mut self, cx: &mut Context<'_, Self>, msg: String) {
        log::error!("{msg}");
        *self.outcome.borrow_mut() = Some(Err(msg));
        cx.stop();
    }

    fn is_leech(&self) -> bool {
        matches!(self.mode, Mode::Leech(_))
    }

    /// Data checked: accept and dial peers.
    fn go_live(&mut self, cx: &mut Context<'_, Self>) {
        let (finished, count, have) = {
            let mut sh = self.sh.borrow_mut();
            sh.ready = true;
            sh.last_progress = cx.now();
            let now = cx.now();
            for p in sh.cfg.peers.clone() {
                sh.peers.add_peer(p, now);
            }
            (
                sh.picker.is_finished(),
                sh.picker.piece_count(),
                sh.picker.have().count(),
            )
        };
        match &self.mode {
            Mode::Seed(_) => {
                if have != count {
                    return self.fail(
                        cx,
                        format!(
                            "data does not match the torrent: {} of {count} pieces fail their hash check",
                            count - have
                        ),
                    );
                }
                log::info!("data verified ({count} pieces); seeding");
            }
            Mode::Leech(_) => {
                if have > 0 {
                    log::info!("{have} of {count} pieces already present and verified");
                }
                if finished {
                    return self.finish(cx);
                }
            }
        }
        if let Some(spawn) = self.listener.take() {
            spawn(cx);
        }
        // Announce only now: a peer that found us while the data was being checked
        // would wait in the backlog and could time out.
        if let Some(d) = self.discovery.take() {
            log::info!(
                "discovery {}: announcing this torrent (TCP port {}) to {} every {:?}",
                d.id(),
                self.local_port.unwrap_or(0),
                d.broadcast_addr(),
                d.interval()
            );
            self.discovery_started = Some(cx.now());
            let owner = cx.addr();
            self.discovery_id = Some(cx.spawn(DiscoveryHandler::to_owner(d, owner)).id());
        }
        self.start_tick_and_tracker(cx);
        self.dial(cx);
    }

    fn dial(&mut self, cx: &mut Context<'_, Self>) {
        let now = cx.now();
        self.dial_buf.clear();
        {
            let mut sh = self.sh.borrow_mut();
            if sh.picker.is_finished() && self.is_leech() {
                return;
            }
            sh.peers.next_candidates(now, 16, &mut self.dial_buf);
        }
        for i in 0..self.dial_buf.len() {
            let addr = self.dial_buf[i];
            match Session::outgoing(self.sh.clone(), addr) {
                Ok(s) => {
                    log::info!("connecting to {addr}");
                    cx.spawn(s);
                }
                Err(e) => {
                    log::info!("cannot connect to {addr}: {e}");
                    self.sh.borrow_mut().peers.connect_failed(addr, now);
                }
            }
        }
    }

    /// A discovery event: a leecher adds the nodes announcing our torrent to the
    /// peer manager like tracker peers, and stops dialling those that left.
    fn on_discovery(&mut self, cx: &mut Context<'_, Self>, ev: &PeerEvent) {
        if !self.is_leech() {
            return; // a seeder only needs to be found
        }
        self.changes.clear();
        self.candidates.on_event(ev, &mut self.changes);
        if let PeerEvent::Joined {
            id,
            addr,
            service,
            metadata,
            ..
        } = ev
            && !self.candidates.matches(service, metadata)
        {
            log::debug!("discovery: ignoring node {id} at {addr}: not this torrent");
        }
        let now = cx.now();
        let mut sh = self.sh.borrow_mut();
        for c in self.changes.drain(..) {
            match c {
                Change::Add(addr) => {
                    let known = sh.peers.peer(&addr).is_some_and(|p| p.dialable);
                    if !sh.peers.add_peer(addr, now) {
                        log::info!("discovery: peer {addr} not added: the peer table is full");
                    } else if !known {
                        let after = self
                            .discovery_started
                            .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
                        log::info!(
                            "discovery: found peer {addr} for this torrent {after:.3} s after announcing"
                        );
                    }
                }
                Change::Withdraw(addr) => {
                    // An address given by hand stays, whatever discovery says.
                    if !sh.cfg.peers.contains(&addr) && sh.peers.withdraw(&addr) {
                        log::info!("discovery: peer {addr} left; not dialling it any more");
                    }
                }
            }
        }
    }

    fn finish(&mut self, cx: &mut Context<'_, Self>) {
        if self.finishing {
            return;
        }
        self.finishing = true;
        let storage = self.sh.borrow().storage.clone();
        if let Some(st) = storage {
            let job = cx.offload(move || Done::Synced(st.sync()));
            if job.is_ok() {
                return;
            }
        }
        self.completed(cx);
    }

    fn completed(&mut self, cx: &mut Context<'_, Self>) {
        let (total, secs) = {
            let sh = self.sh.borrow();
            (sh.meta.total_length, self.started.elapsed().as_secs_f64())
        };
        if self.cfg_progress() && self.progress_tty {
            eprintln!();
        }
        log::info!(
            "download complete: {total} bytes in {secs:.2} s ({:.1} MiB/s)",
            total as f64 / secs.max(1e-9) / (1024.0 * 1024.0)
        );
        *self.outcome.borrow_mut() = Some(Ok(()));
        if let Some(a) = self.announcer {
            cx.send(a, Completed);
        }
        if self.sh.borrow().cfg.exit_when_complete {
            // Graceful: sessions close at once, the announcer says `stopped`. The
            // loop does not call our own on_shutdown (we are running), so close here.
            cx.shutdown();
            cx.close();
        }
    }

    fn cfg_progress(&self) -> bool {
        self.sh.borrow().cfg.progress
    }

    /// Offloads queued work: piece checks and chunk reads. A full pool leaves the
    /// rest queued for the next tick.
    fn pump(&mut self, cx: &mut Context<'_, Self>) {
        self.verify_metadata(cx);
        let mut sh = self.sh.borrow_mut();
        sh.engine_woken = false;
        let Some(storage) = sh.storage.clone() else {
            return;
        };
        while let Some((piece, data, senders)) = sh.completed.pop_front() {
            let st = storage.clone();
            let d = data.clone();
            let expected = sh.meta.piece_hash(piece).copied();
            let f = senders.clone();
            let compare = sh.blame.wants_digests(piece);
            let bsize = sh.picker.block_size() as usize;
            let r = cx.offload(move || {
                let ok = expected == Some(sha1(&d));
                let result = if ok {
                    st.write(piece, 0, &d).map(|()| true)
                } else {
                    Ok(false)
                };
                let digests = (!ok || compare).then(|| d.chunks(bsize).map(sha1).collect());
                Done::Checked {
                    piece,
                    result,
                    data: d,
                    senders: f,
                    digests,
                }
            });
            if r.is_err() {
                sh.completed.push_front((piece, data, senders));
                break;
            }
        }
        while let Some((piece, k)) = sh.load_queue.pop_front() {
            let st = storage.clone();
            let begin = k * sh.chunk_size;
            let len = sh.chunk_len(piece, k);
            let r = cx.offload(move || Done::Read {
                piece,
                chunk: k,
                result: st.read(piece, begin, len),
            });
            if r.is_err() {
                sh.load_queue.push_front((piece, k));
                break;
            }
        }
    }

    fn on_done(&mut self, cx: &mut Context<'_, Self>, done: Done) {
        match done {
            Done::Opened(Err(e), _, _) => self.fail(cx, format!("cannot open the data: {e}")),
            Done::Metadata(b) => {
                let (v, parsed) = *b;
                self.on_metadata(cx, v, parsed)
            }
            Done::SavedTorrent(Err(e)) => self.fail(cx, e),
            Done::SavedTorrent(Ok(())) => log::info!("saved the torrent file"),
            Done::Opened(Ok(st), existed, server) => {
                let n = self.sh.borrow().meta.piece_count();
                self.sh.borrow_mut().storage = Some(st.clone());
                if server.is_some() {
                    self.sh.borrow_mut().meta_server = server;
                }
                if !existed {
                    return self.go_live(cx);
                }
                // Hash in parallel slices, one job per worker.
                let parts = (cx.config().workers.max(1) as u32).min(n);
                let per = n.div_ceil(parts);
                for i in 0..parts {
                    let range = i * per..((i + 1) * per).min(n);
                    let st = st.clone();
                    if cx
                        .offload(move || Done::Verified(st.verify(range)))
                        .is_err()
                    {
                        return self.fail(cx, "worker pool full while verifying".into());
                    }
                    self.verify_jobs += 1;
                }
            }
            Done::Verified(Err(e)) => self.fail(cx, format!("cannot read the data: {e}")),
            Done::Verified(Ok(good)) => {
                {
                    let mut sh = self.sh.borrow_mut();
                    for p in good {
                        sh.picker.mark_have(p);
                        sh.have_log.push(p);
                    }
                }
                self.verify_jobs -= 1;
                if self.verify_jobs == 0 {
                    self.go_live(cx);
                }
            }
            Done::Checked {
                piece,
                result,
                data,
                senders,
                digests,
            } => {
                let ok = match result {
                    Err(e) => return self.fail(cx, format!("cannot write piece {piece}: {e}")),
                    Ok(ok) => ok,
                };
                let mut sh = self.sh.borrow_mut();
                sh.picker.piece_verified(piece, ok);
                let mut bans = Vec::new();
                {
                    // The peer manager keeps the one ban list.
                    let Shared { blame, peers, .. } = &mut *sh;
                    let banned = |a: SocketAddr| peers.is_banned(&a);
                    if ok {
                        let mut distinct: Vec<SocketAddr> = Vec::new();
                        for s in senders.iter().flatten() {
                            if !distinct.contains(s) {
                                distinct.push(*s);
                            }
                        }
                        blame.piece_passed(
                            piece,
                            &distinct,
                            digests.as_deref(),
                            &banned,
                            &mut bans,
                        );
                    } else {
                        let digests = digests.unwrap_or_default();
                        let blocks: Vec<_> = senders
                            .iter()
                            .zip(&digests)
                            .enumerate()
                            .filter_map(|(i, (s, d))| Some((i as u32, (*s)?, *d)))
                            .collect();
                        log::warn!(
                            "piece {piece} failed its hash check; discarded, will be fetched again from a single peer; sent by {}",
                            describe_senders(&blocks)
                        );
                        blame.piece_failed(piece, blocks, &banned, &mut bans);
                    }
                }
                if ok {
                    sh.have_log.push(piece);
                    let cs = sh.chunk_size;
                    let chunks = data.len().div_ceil(cs as usize) as u32;
                    for k in 0..chunks {
                        let a = (k * cs) as usize;
                        let b = (a + cs as usize).min(data.len());
                        sh.cache_insert(piece, k, data.slice(a..b));
                    }
                }
                for (addr, why) in bans {
                    log::warn!(
                        "banning peer {addr}: {why}; closing it, never dialling or accepting {} again",
                        if addr.ip().to_canonical().is_loopback() {
                            "this address"
                        } else {
                            "its host"
                        }
                    );
                    sh.peers.ban(addr);
                    let Shared {
                        sessions, peers, ..
                    } = &mut *sh;
                    for s in sessions.values_mut() {
                        if peers.is_banned(&s.addr) {
                            s.penalised = true;
                            cx.close_handler(s.id);
                        }
                    }
                }
                sh.wake_all(cx);
                let finished = sh.picker.is_finished();
                drop(sh);
                if finished && self.is_leech() {
                    self.finish(cx);
                }
            }
            Done::Read {
                piece,
                chunk,
                result,
            } => {
                let mut sh = self.sh.borrow_mut();
                let waiters = sh.loading.remove(&(piece, chunk)).unwrap_or_default();
                match result {
                    Ok(data) => {
                        sh.cache_insert(piece, chunk, Bytes::from(data));
                        for w in waiters {
                            sh.wake(cx, w);
                        }
                    }
                    Err(e) => {
                        drop(sh);
                        self.fail(cx, format!("cannot read piece {piece}: {e}"));
                    }
                }
            }
            Done::Synced(r) => match r {
                Ok(()) => self.completed(cx),
                Err(e) => self.fail(cx, format!("cannot flush the download to disk: {e}")),
            },
        }
    }

    fn report(&mut self, cx: &mut Context<'_, Self>) {
        let now = cx.now();
        let sh = self.sh.borrow();
        if !sh.cfg.progress || !self.is_leech() || self.finishing {
            return;
        }
        let last = *self.last_report.get_or_insert(now);
        let dt = now.duration_since(last);
        if dt < Duration::from_secs(1) {
            return;
        }
        if !sh.has_meta {
            self.last_report = Some(now);
            let (have, total) = sh
                .fetcher
                .as_ref()
                .and_then(|f| f.progress())
                .unwrap_or((0, 0));
            eprintln!(
                "progress: fetching metadata ({have}/{total} pieces), {} peers",
                sh.sessions.len()
            );
            return;
        }
        let rate = (sh.downloaded - self.report_bytes) as f64 / dt.as_secs_f64();
        self.report_bytes = sh.downloaded;
        self.last_report = Some(now);
        let total = sh.meta.total_length.max(1);
        let done = total - sh.left();
        let pct = done as f64 * 100.0 / total as f64;
        let mib = 1024.0 * 1024.0;
        let mut err = std::io::stderr().lock();
        if self.progress_tty {
            let filled = (pct / 5.0) as usize;
            let _ = write!(
                err,
                "\r[{:<20}] {pct:5.1}% {:.1}/{:.1} MiB {:.1} MiB/s {} peers ",
                "#".repeat(filled.min(20)),
                done as f64 / mib,
                total as f64 / mib,
                rate / mib,
                sh.sessions.len()
            );
        } else {
            let _ = writeln!(
                err,
                "progress: {pct:.1}% ({}/{} pieces) {:.1} MiB/s, {} peers",
                sh.picker.have().count(),
                sh.picker.piece_count(),
                rate / mib,
                sh.sessions.len()
            );
        }
        let _ = err.flush();
    }

    /// A download that cannot progress fails instead of waiting forever.
    fn check_stalled(&mut self, cx: &mut Context<'_, Self>) {
        if !self.is_leech() || self.finishing {
            return;
        }
        let now = cx.now();
        let msg = {
            let sh = self.sh.borrow();
            let deadline = sh.last_progress + sh.cfg.no_progress_timeout;
            let wake = sh.peers.next_wake(now);
            let have_peers = !sh.sessions.is_empty() || sh.peers.active() > 0;
            if now >= deadline && !sh.has_meta {
                Some(format!(
                    "metadata fetch stalled: no metadata from any peer for {:?} ({} peers connected)",
                    sh.cfg.no_progress_timeout,
                    sh.sessions.len()
                ))
            } else if now >= deadline {
                Some(format!(
                    "download stalled: no piece data for {:?} ({} of {} pieces, {} peers connected)",
                    sh.cfg.no_progress_timeout,
                    sh.picker.have().count(),
                    sh.picker.piece_count(),
                    sh.sessions.len()
                ))
            } else if !have_peers
                && !sh.cfg.peers.is_empty()
                && sh.cfg.listen.is_none()
                && sh.cfg.tracker.is_none()
                && sh.cfg.discovery.is_none()
                && wake.is_none_or(|w| w >= deadline)
            {
                Some(format!(
                    "cannot finish: all peers are gone and none may be retried before the {:?} timeout ({} of {} pieces)",
                    sh.cfg.no_progress_timeout,
                    sh.picker.have().count(),
                    sh.picker.piece_count()
                ))
            } else {
                None
            }
        };
        if let Some(m) = msg {
            if self.progress_tty && self.cfg_progress() {
                eprintln!();
            }
            self.fail(cx, m);
        }
    }
}

impl Handler for Engine {
    type Message = PeerEvent;
    type Job = Done;

    fn name(&self) -> &str {
        "TorrentEngine"
    }

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        if self.sh.borrow().has_meta {
            self.open(cx)?;
        } else {
            self.start_magnet(cx);
        }
        Ok(())
    }

    fn on_job(
        &mut self,
        cx: &mut Context<'_, Self>,
        _job: JobId,
        result: JobResult<Done>,
    ) -> HandlerResult {
        let done = result?;
        self.on_done(cx, done);
        self.pump(cx);
        Ok(())
    }

    fn on_message(&mut self, cx: &mut Context<'_, Self>, ev: PeerEvent) -> HandlerResult {
        self.on_discovery(cx, &ev);
        self.pump(cx);
        self.dial(cx);
        Ok(())
    }

    /// A session woke the engine (`Shared::wake_engine`).
    fn on_notify(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.pump(cx);
        self.dial(cx);
        Ok(())
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
        if Some(t) == self.tick {
            self.pump(cx);
            self.dial(cx);
            self.report(cx);
            self.check_stalled(cx);
        }
        Ok(())
    }

    fn on_child_closed(&mut self, cx: &mut Context<'_, Self>, child: HandlerId) -> HandlerResult {
        if self.discovery_id == Some(child) {
            self.discovery_id = None;
            if !cx.is_shutting_down() {
                log::warn!("discovery stopped; peers already found are kept");
            }
        }
        // A dialled peer went away: another candidate may be due now.
        self.dial(cx);
        Ok(())
    }

    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.close_with(CloseReason::Shutdown);
        Ok(())
    }

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _reason: CloseReason) {
        // Children are not closed with their parent; discovery without the engine
        // would announce a torrent nobody serves. (It says goodbye as it closes.)
        if let Some(d) = self.discovery_id.take() {
            cx.close_handler(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::build_torrent;

    fn shared(total: u64, piece_length: u32, cfg: TorrentConfig) -> Shared {
        let n = total.div_ceil(u64::from(piece_length)) as usize;
        let t = build_torrent(
            "x",
            &[(vec![], total)],
            piece_length,
            &vec![[0u8; 20]; n],
            None,
        )
        .unwrap();
        Shared::new(Arc::new(Metainfo::parse(&t).unwrap()), cfg).unwrap()
    }

    #[test]
    fn chunks_split_big_pieces_and_keep_small_ones_whole() {
        let s = shared(
            3 * 4 * 1024 * 1024 + 100,
            4 * 1024 * 1024,
            TorrentConfig::default(),
        );
        assert_eq!(s.chunk_size, MAX_CHUNK);
        assert_eq!(s.chunk_len(0, 3), MAX_CHUNK);
        assert_eq!(s.chunk_len(0, 4), 0);
        assert_eq!(s.chunk_len(3, 0), 100, "short last piece");
        let s = shared(1000, 256, TorrentConfig::default());
        assert_eq!(s.chunk_size, 256);
        assert_eq!(s.chunk_len(3, 0), 1000 - 3 * 256);
        assert_eq!(s.left(), 1000);
    }

    #[test]
    fn cache_is_bounded_and_evicts_oldest() {
        let cfg = TorrentConfig {
            cache_bytes: 3 * 256,
            ..TorrentConfig::default()
        };
        let mut s = shared(10 * 256, 256, cfg);
        for p in 0..10 {
            s.cache_insert(p, 0, Bytes::from(vec![p as u8; 256]));
            s.cache_insert(p, 0, Bytes::from(vec![0xff; 256])); // duplicate ignored
            assert!(s.cache_bytes <= 3 * 256);
        }
        assert!(s.cached(6, 0).is_none());
        assert_eq!(s.cached(9, 0).unwrap()[0], 9);
        assert_eq!(s.cached(7, 0).unwrap().len(), 256);
        // Even a tiny budget keeps two chunks, so a straddling block can be served.
        let mut s = shared(
            10 * 256,
            256,
            TorrentConfig {
                cache_bytes: 1,
                ..TorrentConfig::default()
            },
        );
        s.cache_insert(0, 0, Bytes::from(vec![0; 256]));
        s.cache_insert(1, 0, Bytes::from(vec![1; 256]));
        s.cache_insert(2, 0, Bytes::from(vec![2; 256]));
        assert!(s.cached(1, 0).is_some() && s.cached(2, 0).is_some());
        assert!(s.cached(0, 0).is_none());
    }

    #[test]
    fn peer_ids_are_azureus_style_and_random() {
        let a = random_peer_id();
        let b = random_peer_id();
        assert!(a.starts_with(b"-RE0100-"));
        assert!(a[8..].iter().all(u8::is_ascii_alphanumeric));
        assert_ne!(a, b);
    }
}
