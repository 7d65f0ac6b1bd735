//! One peer connection: the handler that moves bytes between a socket and the
//! torrent's shared state.
//!
//! It frames and parses with [`super::wire`], asks the [`super::picker`] what to
//! request, copies received blocks into the piece being assembled in
//! [`Shared`], and serves requests from the chunk cache (asking the engine to read
//! missing chunks on the worker pool). Under the BitTorrent protocol it runs the
//! encryption layer ([`super::mse`]: detection, the handshake state machines, RC4
//! in place on the read buffer and the write queue); over it, the extension
//! protocol's `ut_metadata` ([`super::metadata`]) and `ut_pex` ([`super::pex`]).
//! It must not touch the disk, hash, or block: everything slow is the engine's or
//! the pool's (the Diffie-Hellman steps are this handler's own pool jobs).
//!
//! Hostile input (wrong protocol or info-hash, oversized or malformed messages,
//! out-of-range requests or blocks, bitfields of the wrong length, peers that stall
//! or trickle) closes this connection with a log line; nothing else is affected.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use mio::net::TcpStream;

use super::ext_handshake::{self, ExtHandshake, LOCAL_UT_METADATA_ID, LOCAL_UT_PEX_ID};
use super::metadata::{self as meta_x, MetadataMsg};
use super::mse::{
    self, Cipher, Encryption, Incoming, Initiator, InitiatorConfig, KeyPair, Progress, Responder,
    ResponderConfig, SharedSecret,
};
use super::peers::ConnStats;
use super::pex::{PexFlags, PexMessage, PexPeer, PexState};
use super::picker::{BlockRef, PeerKey, Received};
use super::torrent::{Assembly, SessionSlot, Shared, key_of};
use super::wire::{self, Bitfield, Message};
use reactor::CloseReason;
use reactor::TimerId;
use reactor::{Conn, ConnConfig};
use reactor::{Context, JobId, JobResult, Loop};
use reactor::{Event, Handler, HandlerResult, SourceId};

/// Largest block a peer may request from us; larger requests are rejected.
pub const MAX_REQUEST_LEN: u32 = 16 * 1024;

/// Blocks a peer may push without our request before it is closed (each is
/// dropped); a few are tolerated for peers that resend after a reconnect race.
const UNSOLICITED_LIMIT: u32 = 4;

/// Cap on excused late blocks: a choke forgets at most the request window, so more
/// than a few windows' worth is never legitimately on the way.
const MAX_EXCUSED: u32 = 256;

/// Stop filling the write queue with piece data above this many bytes; the rest
/// is served as the socket drains (bounded memory per peer). Below four I/O
/// buffers, so the queue's buffer goes back to the loop's pool for reuse.
const SERVE_HIGH: usize = 224 * 1024;

/// Serve-and-flush rounds per event before yielding to other connections.
const SERVE_ROUNDS: usize = 4;

/// Bytes of chunks asked of the engine at once when the next request misses the
/// cache (at least one chunk); small against the cache, so loads are not evicted
/// before their waiters run.
const READ_AHEAD_BYTES: usize = 1024 * 1024;

/// Why [`Session::serve`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// Nothing to serve now: no requests, choked, or a chunk is being read (its
    /// arrival wakes the session).
    Waiting,
    /// The write queue reached [`SERVE_HIGH`] with requests left: serve again once
    /// it drains.
    QueueFull,
}

/// Why a session closes (a hostile or broken peer, or a plain goodbye).
type Close = Cow<'static, str>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Dialling; our handshake is queued.
    Connecting,
    /// Waiting for the peer's handshake (ours sent, for outgoing sessions).
    Handshake,
    /// Incoming: info-hash accepted and our handshake sent; the peer id is due.
    PeerId,
    /// Exchanging messages.
    Open,
}

/// Everything a session knows except its socket (split so that a message borrowed
/// from the socket's read buffer can be handled while the state is mutated).
struct Peer {
    sh: Rc<RefCell<Shared>>,
    addr: SocketAddr,
    key: PeerKey,
    outgoing: bool,
    phase: Phase,
    fast: bool,
    ext: bool,
    peer_has: Bitfield,
    got_bitfield: bool,
    am_choking: bool,
    am_interested: bool,
    peer_choking: bool,
    peer_interested: bool,
    waiting_slot: bool,
    /// Our requests to the peer, oldest first.
    inflight: VecDeque<BlockRef>,
    max_inflight: usize,
    /// Requests we forgot without the peer's word (we cancelled them, or it choked
    /// us): that many blocks we no longer expect may still arrive legitimately.
    excused: u32,
    /// Blocks that arrived although we never asked for them (nor had forgotten
    /// asking): a protocol violation, tolerated up to [`UNSOLICITED_LIMIT`].
    unsolicited: u32,
    /// The peer's requests to us, oldest first.
    serve_q: VecDeque<BlockRef>,
    /// How much of the torrent's verified-piece log we have announced.
    have_idx: usize,
    stats: ConnStats,
    rejects: u32,
    started: Instant,
    last_msg: Instant,
    last_block: Instant,
    last_send: Instant,
    /// Last piece data in either direction (or the handshake).
    last_data: Instant,
    /// Last request the peer sent us (or when we unchoked it).
    last_request: Instant,
    /// Control messages to send, encoded; moved to the socket after each batch.
    out: Vec<u8>,
    picks: Vec<BlockRef>,
    cancels: Vec<PeerKey>,
    registered: bool,
    /// Largest message accepted (the torrent's biggest legitimate one).
    max_msg: u32,
    /// The peer's extension handshake (BEP 10), once received.
    ext_hs: Option<ExtHandshake>,
    /// What the peer announced before we had the metadata (magnet downloads),
    /// applied by [`Peer::upgrade`].
    pre: PreMeta,
    /// `peer_has` and the requests use the real torrent (not the placeholder of a
    /// magnet download still fetching its metadata).
    upgraded: bool,
    /// Peer exchange with this peer (BEP 11).
    pex: PexState,
    /// When `send_pex` looks at the peer list again: it costs a list per look,
    /// so not on every tick when nothing changed.
    pex_next_look: Instant,
}

/// Least time between two looks at whether a PEX message is due.
const PEX_LOOK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Most `have` messages kept from a peer before the metadata arrives (each is
/// 4 bytes; a peer that has pieces normally sends a bitfield instead).
const MAX_PRE_META_HAVES: usize = 65_536;

/// Announcements received before the piece count is known.
#[derive(Default)]
struct PreMeta {
    /// The last set announced: `bitfield` bytes (checked once the piece count is
    /// known), or `have_all` (true) / `have_none` (false).
    set: Option<Result<Vec<u8>, bool>>,
    /// `have`s since that set.
    haves: Vec<u32>,
}

/// How long an ending session waits for the peer to take our last bytes and close.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// The Diffie-Hellman steps of an encrypted handshake, computed on the worker
/// pool (each is a 768-bit exponentiation, over the loop's 100 µs budget; see
/// [`super::mse`]).
pub enum MseJob {
    /// Our key pair for this connection.
    Key(KeyPair),
    /// The shared secret.
    Secret(SharedSecret),
}

enum Machine {
    Init(Initiator),
    Resp(Responder),
}

/// The layer under the BitTorrent protocol: plaintext, or MSE and then RC4.
enum Crypto {
    /// Plaintext BitTorrent (decided, or never encrypted).
    Plain,
    /// Incoming and undecided: the first bytes tell plaintext from MSE.
    Detect,
    /// MSE handshake in progress; the machine exists once our key pair is
    /// computed. `job`: a Diffie-Hellman step is on the pool.
    Mse {
        machine: Option<Box<Machine>>,
        job: bool,
    },
    /// RC4 after the handshake; the first `clear` bytes of the read buffer are
    /// already decrypted.
    Rc4 { cipher: Box<Cipher>, clear: usize },
}

/// Appends an extended message (BEP 10) with the receiver's id `id`, its payload
/// written by `payload`.
fn encode_extended(out: &mut Vec<u8>, id: u8, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, wire::EXTENDED_ID, id]);
    payload(out);
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Queues `data`, encrypting it in the write queue (no copy of its own) when the
/// stream is RC4.
fn queue(conn: &mut Conn, crypto: &mut Crypto, cx: &mut Loop<'_>, data: &[u8]) {
    conn.queue(cx, data);
    if let Crypto::Rc4 { cipher, .. } = crypto {
        cipher.encrypt(conn.queued_tail_mut(data.len()));
    }
}

/// One peer connection. See the module docs.
pub struct Session {
    conn: Conn,
    crypto: Crypto,
    encryption: Encryption,
    p: Peer,
    tick: Option<TimerId>,
    /// Ending gracefully ([`Conn::close_when_done`]) since then, for this reason;
    /// the tick closes it at the linger bound.
    ending: Option<(CloseReason, Instant)>,
}

fn conn_config(max_msg: u32) -> ConnConfig {
    ConnConfig::default().max_read_buffer((max_msg as usize + 4).max(1024 * 1024))
}

impl Session {
    /// A session for an accepted connection.
    pub fn incoming(sh: Rc<RefCell<Shared>>, stream: TcpStream, addr: SocketAddr) -> Session {
        let max = sh.borrow().max_msg_len;
        let encryption = sh.borrow().cfg.encryption;
        Session {
            conn: Conn::new(stream, 0, conn_config(max)),
            crypto: Crypto::Detect,
            encryption,
            p: Peer::new(sh, addr, false),
            tick: None,
            ending: None,
        }
    }

    /// A session dialling `addr` (the connect runs in the background).
    pub fn outgoing(sh: Rc<RefCell<Shared>>, addr: SocketAddr) -> std::io::Result<Session> {
        let max = sh.borrow().max_msg_len;
        let encryption = sh.borrow().cfg.encryption;
        let crypto = match encryption {
            Encryption::Disabled => Crypto::Plain,
            Encryption::Enabled if sh.borrow().peers.plaintext_only(&addr) => Crypto::Plain,
            _ => Crypto::Mse {
                machine: None,
                job: false,
            },
        };
        let conn = Conn::connect(addr, 0, conn_config(max))?;
        Ok(Session {
            conn,
            crypto,
            encryption,
            p: Peer::new(sh, addr, true),
            tick: None,
            ending: None,
        })
    }

    /// Ends the session for `why`: a hostile peer is cut off at once (what we
    /// queued for it is dropped on purpose); anything else ends gracefully.
    fn close(&mut self, cx: &mut Loop<'_>, why: &str, hostile: bool) {
        if hostile {
            log::warn!("peer {}: {why}; closing", self.p.addr);
            self.conn.clear_write_queue(cx);
            cx.close_with(CloseReason::ProtocolError);
        } else {
            log::debug!("peer {}: {why}; closing", self.p.addr);
            self.end(cx, CloseReason::Local);
        }
    }

    /// The socket failed: nothing more can be delivered.
    fn broke(&mut self, cx: &mut Loop<'_>, why: &str) {
        log::debug!("peer {}: {why}; closing", self.p.addr);
        self.conn.clear_write_queue(cx);
        cx.close_with(CloseReason::PeerReset);
    }

    /// Ends the conversation gracefully: what is queued is delivered, then end of
    /// file; the peer's further input is dropped until it closes or [`LINGER`].
    fn end(&mut self, cx: &mut Loop<'_>, reason: CloseReason) {
        if self.ending.is_some() {
            return;
        }
        self.ending = Some((reason, cx.now()));
        if self.conn.close_when_done(cx).is_err() || self.conn.is_done() {
            cx.close_with(reason);
        }
    }

    /// An ending session's events: drop input, write what is left, close when done.
    fn finish_ending(&mut self, cx: &mut Loop<'_>, reason: CloseReason) {
        let ok = self.conn.fill(cx).is_ok() && self.conn.flush(cx).is_ok();
        if !ok || self.conn.is_done() {
            cx.close_with(reason);
        }
    }

    /// Reads, handles every complete message, then writes.
    fn pump(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        if let Some((reason, _)) = self.ending {
            self.finish_ending(cx, reason);
            return Ok(());
        }
        if self.p.phase == Phase::Connecting {
            match self.conn.poll_connect() {
                Ok(true) => {
                    self.p.phase = Phase::Handshake;
                    let now = cx.now();
                    self.p.sh.borrow_mut().peers.connected(self.p.addr, now);
                }
                Ok(false) => return Ok(()),
                Err(e) => {
                    let now = cx.now();
                    self.p
                        .sh
                        .borrow_mut()
                        .peers
                        .connect_failed(self.p.addr, now);
                    self.p.registered = false;
                    self.broke(cx, &format!("connect failed: {e}"));
                    return Ok(());
                }
            }
        }
        let st = match self.conn.fill(cx) {
            Ok(st) => st,
            Err(e) => {
                self.broke(cx, &format!("read error: {e}"));
                return Ok(());
            }
        };
        if let Err(why) = self.handle_input(cx) {
            self.input_failed(cx, &why);
            return Ok(());
        }
        if st.eof {
            log::debug!("peer {}: peer closed the connection; closing", self.p.addr);
            self.end(cx, CloseReason::PeerClosed);
            return Ok(());
        }
        self.after_input(cx)
    }

    /// Bad input closes at once; during our own encrypted dial under
    /// `--encryption enabled` that is not hostile but a reason to redial in
    /// plaintext (done in `on_close`).
    fn input_failed(&mut self, cx: &mut Loop<'_>, why: &str) {
        if self.retries_in_plaintext() {
            log::info!(
                "peer {}: {why}; closing, will retry in plaintext",
                self.p.addr
            );
            self.conn.clear_write_queue(cx);
            cx.close_with(CloseReason::ProtocolError);
        } else {
            self.close(cx, why, true);
        }
    }

    /// An outgoing MSE handshake under `enabled` that ends now is redialled in
    /// plaintext (libtorrent's fallback for peers without MSE).
    fn retries_in_plaintext(&self) -> bool {
        self.p.outgoing
            && self.encryption == Encryption::Enabled
            && matches!(self.crypto, Crypto::Mse { .. })
    }

    /// Moves read bytes through the encryption layer: decides plaintext or MSE
    /// for an incoming connection, drives the MSE handshake, decrypts RC4 in
    /// place. True when the read buffer holds BitTorrent plaintext to parse.
    fn crypto_input(&mut self, cx: &mut Context<'_, Self>) -> Result<bool, Close> {
        match &mut self.crypto {
            Crypto::Plain => Ok(true),
            Crypto::Rc4 { cipher, clear } => {
                let buf = self.conn.read_buf_mut();
                if *clear < buf.len() {
                    cipher.decrypt(&mut buf[*clear..]);
                    *clear = buf.len();
                }
                Ok(true)
            }
            Crypto::Detect => match mse::classify_incoming(self.conn.read_buf()) {
                Incoming::Undecided => Ok(false),
                Incoming::Plaintext if self.encryption.accepts_plaintext() => {
                    self.crypto = Crypto::Plain;
                    Ok(true)
                }
                Incoming::Plaintext => {
                    Err("plaintext handshake refused (--encryption forced)".into())
                }
                Incoming::Encrypted if self.encryption.accepts_mse() => {
                    self.crypto = Crypto::Mse {
                        machine: None,
                        job: false,
                    };
                    self.want_key(cx)?;
                    Ok(false)
                }
                Incoming::Encrypted => Err(
                    "bad handshake: not '\\x13BitTorrent protocol', and encrypted (MSE) handshakes are refused (--encryption disabled)"
                        .into(),
                ),
            },
            Crypto::Mse { .. } => self.drive_mse(cx),
        }
    }

    /// Asks the pool for our key pair.
    fn want_key(&mut self, cx: &mut Context<'_, Self>) -> Result<(), Close> {
        if let Crypto::Mse { job, .. } = &mut self.crypto {
            cx.offload(|| MseJob::Key(KeyPair::generate()))
                .map_err(|_| {
                    Close::from("worker pool full: no key pair for the encrypted handshake")
                })?;
            *job = true;
        }
        Ok(())
    }

    /// Feeds the MSE machine what has arrived and sends what it produces. True
    /// once the handshake is done and what is left in the read buffer is the
    /// BitTorrent stream.
    fn drive_mse(&mut self, cx: &mut Context<'_, Self>) -> Result<bool, Close> {
        let Crypto::Mse {
            machine: Some(m),
            job: false,
        } = &mut self.crypto
        else {
            return Ok(false);
        };
        let info_hash = self.p.sh.borrow().meta.info_hash;
        let lookup = |req2: &[u8; 20]| (mse::req2_hash(&info_hash) == *req2).then_some(info_hash);
        let buf = self.conn.read_buf();
        let used = match &mut **m {
            Machine::Init(i) => i.receive(buf),
            Machine::Resp(r) => r.receive(buf, &lookup),
        }
        .map_err(|e| Close::from(format!("encrypted handshake failed: {e}")))?;
        self.conn.consume(used);
        let mut out = std::mem::take(&mut self.p.out);
        match &mut **m {
            Machine::Init(i) => i.take_output(&mut out),
            Machine::Resp(r) => r.take_output(&mut out),
        }
        if !out.is_empty() {
            // Handshake bytes, already obfuscated by the machine.
            self.conn.queue(cx, &out);
            out.clear();
        }
        self.p.out = out;
        let progress = match &**m {
            Machine::Init(i) => i.poll(),
            Machine::Resp(r) => r.poll(),
        };
        match progress {
            Progress::NeedInput => Ok(false),
            Progress::Failed(e) => Err(format!("encrypted handshake failed: {e}").into()),
            Progress::NeedSecret => {
                let secret = match &mut **m {
                    Machine::Init(i) => i.take_secret_job(),
                    Machine::Resp(r) => r.take_secret_job(),
                };
                if let Some(j) = secret {
                    cx.offload(move || MseJob::Secret(j.compute()))
                        .map_err(|_| {
                            Close::from(
                                "worker pool full: no shared secret for the encrypted handshake",
                            )
                        })?;
                    if let Crypto::Mse { job, .. } = &mut self.crypto {
                        *job = true;
                    }
                }
                Ok(false)
            }
            Progress::Done => {
                let Crypto::Mse {
                    machine: Some(m), ..
                } = std::mem::replace(&mut self.crypto, Crypto::Plain)
                else {
                    return Ok(false);
                };
                let est = match *m {
                    Machine::Init(i) => i.finish(),
                    Machine::Resp(r) => r.finish(),
                }
                .ok_or_else(|| Close::from("encrypted handshake did not finish"))?;
                if !est.unsent.is_empty() {
                    self.conn.queue(cx, &est.unsent);
                }
                let rc4 = est.cipher.is_some();
                if let Some(cipher) = est.cipher {
                    self.crypto = Crypto::Rc4 {
                        cipher: Box::new(cipher),
                        clear: 0,
                    };
                }
                log::info!(
                    "peer {}: encrypted handshake done ({})",
                    self.p.addr,
                    if rc4 { "RC4" } else { "plaintext payload" }
                );
                if !est.initial_payload.is_empty() {
                    self.on_initial_payload(cx, &est.initial_payload)?;
                }
                // Decrypt what followed the handshake in the same reads.
                self.crypto_input(cx)
            }
        }
    }

    /// The initiator's first BitTorrent bytes, carried inside its MSE handshake
    /// (IA): its BitTorrent handshake, and possibly whole messages after it.
    fn on_initial_payload(&mut self, cx: &mut Loop<'_>, ia: &[u8]) -> Result<(), Close> {
        if self.p.outgoing || self.p.phase != Phase::Handshake {
            return Err("unexpected initial payload in the encrypted handshake".into());
        }
        let hs = wire::parse_handshake(ia)
            .map_err(|e| Close::from(format!("bad handshake in the encrypted handshake: {e}")))?
            .ok_or_else(|| {
                Close::from(format!(
                    "encrypted handshake carried {} bytes, not a whole BitTorrent handshake",
                    ia.len()
                ))
            })?;
        self.p.on_handshake(cx, hs.reserved, hs.info_hash, None)?;
        self.p.on_peer_id(cx, hs.peer_id)?;
        let mut rest = &ia[wire::HANDSHAKE_LEN..];
        while !rest.is_empty() {
            let (msg, used) = wire::decode(rest, self.p.max_msg)
                .map_err(|e| Close::from(format!("protocol error: {e}")))?
                .ok_or_else(|| Close::from("encrypted handshake ends inside a message"))?;
            self.p.on_message(cx, msg)?;
            rest = &rest[used..];
        }
        Ok(())
    }

    /// Consumes `n` parsed bytes of the read buffer.
    fn consume(&mut self, n: usize) {
        self.conn.consume(n);
        if let Crypto::Rc4 { clear, .. } = &mut self.crypto {
            *clear = clear.saturating_sub(n);
        }
    }

    /// A Diffie-Hellman step came back from the pool.
    fn on_mse_job(&mut self, done: MseJob) -> Result<(), Close> {
        let Crypto::Mse { machine, job } = &mut self.crypto else {
            return Ok(());
        };
        *job = false;
        match done {
            MseJob::Key(kp) => {
                let m = if self.p.outgoing {
                    let sh = self.p.sh.borrow();
                    let hs = wire::encode_handshake(
                        &sh.meta.info_hash,
                        &sh.peer_id,
                        wire::RESERVED_FAST_AND_EXTENSIONS,
                    );
                    let cfg = InitiatorConfig {
                        policy: self.encryption.initiator_policy(),
                        ..InitiatorConfig::default()
                    };
                    Initiator::new(kp, sh.meta.info_hash, &hs, cfg).map(Machine::Init)
                } else {
                    let cfg = ResponderConfig {
                        policy: self.encryption.responder_policy(),
                        ..ResponderConfig::default()
                    };
                    Responder::new(kp, cfg).map(Machine::Resp)
                }
                .map_err(|e| Close::from(format!("cannot start the encrypted handshake: {e}")))?;
                *machine = Some(Box::new(m));
            }
            MseJob::Secret(secret) => {
                let r = match machine.as_deref_mut() {
                    Some(Machine::Init(i)) => i.set_secret(secret),
                    Some(Machine::Resp(r)) => r.set_secret(secret),
                    None => return Err("shared secret before a key pair".into()),
                };
                r.map_err(|e| Close::from(format!("encrypted handshake failed: {e}")))?;
            }
        }
        Ok(())
    }

    fn handle_input(&mut self, cx: &mut Context<'_, Self>) -> Result<(), Close> {
        if !self.crypto_input(cx)? {
            return Ok(());
        }
        loop {
            match self.p.phase {
                Phase::Connecting => return Ok(()),
                Phase::Handshake => {
                    let buf = self.conn.read_buf();
                    let need = if self.p.outgoing { 68 } else { 48 };
                    let prefix = wire::parse_handshake_info_hash(buf)
                        .map_err(|e| Close::from(format!("bad handshake: {e}")))?;
                    let Some((reserved, info_hash)) = prefix else {
                        return Ok(());
                    };
                    if buf.len() < need {
                        return Ok(());
                    }
                    let peer_id = if self.p.outgoing {
                        let mut id = [0u8; 20];
                        id.copy_from_slice(&buf[48..68]);
                        Some(id)
                    } else {
                        None
                    };
                    self.consume(need);
                    self.p.on_handshake(cx, reserved, info_hash, peer_id)?;
                }
                Phase::PeerId => {
                    let buf = self.conn.read_buf();
                    if buf.len() < 20 {
                        return Ok(());
                    }
                    let mut id = [0u8; 20];
                    id.copy_from_slice(&buf[..20]);
                    self.consume(20);
                    self.p.on_peer_id(cx, id)?;
                }
                Phase::Open => {
                    let decoded = wire::decode(self.conn.read_buf(), self.p.max_msg)
                        .map_err(|e| Close::from(format!("protocol error: {e}")))?;
                    let Some((msg, used)) = decoded else {
                        return Ok(());
                    };
                    self.p.on_message(cx, msg)?;
                    self.consume(used);
                }
            }
        }
    }

    /// Sends what the messages produced, requests more, serves uploads, flushes.
    fn after_input(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        if self.p.phase == Phase::Open
            && !self.p.upgraded
            && self.p.sh.borrow().has_meta
            && let Err(why) = self.p.upgrade()
        {
            self.close(cx, &why, true);
            return Ok(());
        }
        if self.p.phase == Phase::Open
            && self.p.peer_has.all()
            && self.p.sh.borrow().picker.is_finished()
        {
            // Two seeds have nothing to give each other. The peer manager counts
            // this as a useless connection, so the redial backs off.
            log::info!("peer {}: both sides are seeds; closing", self.p.addr);
            self.end(cx, CloseReason::Local);
            return Ok(());
        }
        if self.p.phase == Phase::Open {
            self.p.sync(cx.now());
            self.p.fill_requests();
        }
        self.write_out(cx);
        self.serve_and_flush(cx);
        Ok(())
    }

    fn write_out(&mut self, cx: &mut Loop<'_>) {
        if !self.p.out.is_empty() {
            queue(&mut self.conn, &mut self.crypto, cx, &self.p.out);
            self.p.out.clear();
            self.p.last_send = cx.now();
        }
    }

    /// Writes requested blocks from the chunk cache while the write queue has
    /// room; a missing chunk is asked of the engine and serving resumes on wake-up.
    /// Says why it stopped.
    fn serve(&mut self, cx: &mut Loop<'_>) -> Served {
        if self.p.serve_q.is_empty() || self.p.am_choking {
            return Served::Waiting;
        }
        let mut waiting = false;
        let mut sh = self.p.sh.borrow_mut();
        let cs = sh.chunk_size;
        let mut sent = 0u64;
        while self.conn.write_pending() < SERVE_HIGH {
            let Some(&r) = self.p.serve_q.front() else {
                break;
            };
            let k0 = r.begin / cs;
            let k1 = (r.begin + r.len - 1) / cs;
            let Some(a) = sh.cached(r.piece, k0) else {
                // Ask for the next few missing chunks too, so the workers read in
                // parallel while this one loads.
                let mut asked = 0;
                let mut last = None;
                for q in self.p.serve_q.iter() {
                    let k = q.begin / cs;
                    if last == Some((q.piece, k)) {
                        continue;
                    }
                    last = Some((q.piece, k));
                    if sh.cached(q.piece, k).is_none() {
                        sh.want_chunk(cx, q.piece, k, self.p.key);
                        asked += 1;
                        if asked >= (READ_AHEAD_BYTES / cs as usize).max(1) {
                            break;
                        }
                    }
                }
                waiting = true;
                break;
            };
            let b = if k1 != k0 {
                match sh.cached(r.piece, k1) {
                    Some(b) => Some(b),
                    None => {
                        sh.want_chunk(cx, r.piece, k1, self.p.key);
                        waiting = true;
                        break;
                    }
                }
            } else {
                None
            };
            self.p.serve_q.pop_front();
            let Ok(header) = wire::encode_piece_header(r.piece, r.begin, r.len) else {
                continue;
            };
            queue(&mut self.conn, &mut self.crypto, cx, &header);
            let off = (r.begin - k0 * cs) as usize;
            match b {
                None => queue(
                    &mut self.conn,
                    &mut self.crypto,
                    cx,
                    &a[off..off + r.len as usize],
                ),
                Some(b) => {
                    queue(&mut self.conn, &mut self.crypto, cx, &a[off..]);
                    let rest = r.len as usize - (a.len() - off);
                    queue(&mut self.conn, &mut self.crypto, cx, &b[..rest]);
                }
            }
            sent += u64::from(r.len);
        }
        if sent > 0 {
            sh.uploaded += sent;
            self.p.stats.piece_bytes_up += sent;
            self.p.last_send = cx.now();
            self.p.last_data = cx.now();
        }
        if waiting || self.p.serve_q.is_empty() {
            Served::Waiting
        } else {
            Served::QueueFull
        }
    }

    /// Serves and flushes until the socket is full (a writable edge will follow),
    /// nothing more can be served now (a wake-up or a request will follow), or this
    /// event's share is spent (re-queued). Stopping after a flush that emptied the
    /// queue without filling the socket would wait for an edge that never comes:
    /// that includes the case where `serve` queued nothing because the queue was
    /// still above [`SERVE_HIGH`] when it was called, and the flush then emptied it
    /// (a peer that sends its requests in bursts, as Transmission does once a
    /// second, was left waiting until its next burst).
    fn serve_and_flush(&mut self, cx: &mut Loop<'_>) {
        let mut rounds = 0;
        loop {
            let served = self.serve(cx);
            if let Err(e) = self.conn.flush(cx) {
                self.broke(cx, &format!("write error: {e}"));
                return;
            }
            if served == Served::Waiting || self.conn.write_pending() > 0 {
                return;
            }
            rounds += 1;
            if rounds == SERVE_ROUNDS {
                cx.requeue(Event::writable(self.conn.source()));
                return;
            }
        }
    }

    fn on_tick(&mut self, cx: &mut Loop<'_>) {
        let now = cx.now();
        if let Some((reason, since)) = self.ending {
            if now.saturating_duration_since(since) >= LINGER {
                cx.close_with(reason);
            }
            return;
        }
        let cfg = self.p.sh.borrow().cfg.timeouts();
        let p = &self.p;
        let why: Option<String> = match p.phase {
            Phase::Connecting if now - p.started > cfg.connect_timeout => {
                let mut sh = p.sh.borrow_mut();
                sh.peers.connect_failed(p.addr, now);
                drop(sh);
                self.p.registered = false;
                self.broke(cx, "connect timed out");
                return;
            }
            Phase::Handshake | Phase::PeerId if now - p.started > cfg.handshake_timeout => Some(
                format!("no complete handshake within {:?}", cfg.handshake_timeout),
            ),
            Phase::Open if now - p.last_msg > cfg.idle_timeout => {
                Some(format!("no complete message for {:?}", cfg.idle_timeout))
            }
            // Connected but useless (neither side wants anything): free the slot; the
            // peer manager backs off before dialling it again.
            Phase::Open
                if !p.am_interested
                    && !p.peer_interested
                    && now - p.last_data > cfg.idle_timeout =>
            {
                log::info!(
                    "peer {}: no piece data either way for {:?}; closing",
                    p.addr,
                    cfg.idle_timeout
                );
                self.end(cx, CloseReason::IdleTimeout);
                return;
            }
            Phase::Open if !p.inflight.is_empty() && now - p.last_block > cfg.request_timeout => {
                Some(format!(
                    "holds {} of our requests without sending a block for {:?}",
                    p.inflight.len(),
                    cfg.request_timeout
                ))
            }
            _ => None,
        };
        if let Some(why) = why {
            self.close(cx, &why, true);
            return;
        }
        if self.p.phase == Phase::Open
            && !self.p.am_choking
            && self.p.serve_q.is_empty()
            && now - self.p.last_request > cfg.request_timeout
        {
            // Unchoked but asking for nothing: give the slot to a peer waiting for one.
            let mut sh = self.p.sh.borrow_mut();
            if !sh.choke_waiters.is_empty() {
                log::debug!("peer {}: idle in an upload slot; choking", self.p.addr);
                self.p.am_choking = true;
                sh.release_slot(cx);
                if self.p.peer_interested && !self.p.waiting_slot {
                    self.p.waiting_slot = true;
                    sh.choke_waiters.push_back(self.p.key);
                }
                drop(sh);
                self.p.send(Message::Choke);
                self.write_out(cx);
                if let Err(e) = self.conn.flush(cx) {
                    self.broke(cx, &format!("write error: {e}"));
                    return;
                }
            }
        }
        if self.p.phase == Phase::Open {
            // Metadata requests whose timeout or backoff ended, and PEX when due.
            self.p.request_metadata(now);
            let mut flags = if self.p.outgoing {
                PexFlags::REACHABLE
            } else {
                PexFlags::default()
            };
            if self.p.upgraded && self.p.peer_has.all() {
                flags = flags | PexFlags::SEED;
            }
            if !matches!(self.crypto, Crypto::Plain) {
                flags = flags | PexFlags::ENCRYPTION;
            }
            if let Some(slot) = self.p.sh.borrow_mut().sessions.get_mut(&self.p.key) {
                slot.pex_flags = flags;
            }
            self.p.send_pex(now);
        }
        if self.p.phase == Phase::Open && now - self.p.last_send > cfg.keepalive_interval {
            self.p.send(Message::KeepAlive);
        }
        if !self.p.out.is_empty() {
            self.write_out(cx);
            if let Err(e) = self.conn.flush(cx) {
                self.broke(cx, &format!("write error: {e}"));
            }
        }
    }
}

impl Peer {
    fn new(sh: Rc<RefCell<Shared>>, addr: SocketAddr, outgoing: bool) -> Peer {
        let now = Instant::now();
        let n = sh.borrow().meta.piece_count();
        let max_msg = sh.borrow().max_msg_len;
        let sh_has_meta = sh.borrow().has_meta;
        Peer {
            max_msg,
            sh,
            addr,
            key: PeerKey(u64::MAX),
            outgoing,
            phase: if outgoing {
                Phase::Connecting
            } else {
                Phase::Handshake
            },
            fast: false,
            ext: false,
            peer_has: Bitfield::new(n),
            got_bitfield: false,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            waiting_slot: false,
            inflight: VecDeque::new(),
            max_inflight: 64,
            excused: 0,
            unsolicited: 0,
            serve_q: VecDeque::new(),
            have_idx: 0,
            stats: ConnStats::default(),
            rejects: 0,
            started: now,
            last_msg: now,
            last_block: now,
            last_send: now,
            last_data: now,
            last_request: now,
            out: Vec::new(),
            picks: Vec::new(),
            cancels: Vec::new(),
            registered: true,
            ext_hs: None,
            pre: PreMeta::default(),
            upgraded: sh_has_meta,
            pex: PexState::new(addr),
            pex_next_look: now,
        }
    }

    fn send(&mut self, m: Message<'_>) {
        // Only fails for payloads beyond 4 GiB, which we never build.
        let _ = m.encode(&mut self.out);
    }

    fn our_handshake(&mut self) {
        let sh = self.sh.borrow();
        let hs = wire::encode_handshake(
            &sh.meta.info_hash,
            &sh.peer_id,
            wire::RESERVED_FAST_AND_EXTENSIONS,
        );
        drop(sh);
        self.out.extend_from_slice(&hs);
    }

    fn on_handshake(
        &mut self,
        cx: &mut Loop<'_>,
        reserved: [u8; 8],
        info_hash: [u8; 20],
        peer_id: Option<[u8; 20]>,
    ) -> Result<(), Close> {
        if info_hash != self.sh.borrow().meta.info_hash {
            return Err("handshake for another torrent (wrong info-hash)".into());
        }
        self.fast = wire::supports_fast(&reserved);
        self.ext = wire::supports_extensions(&reserved);
        match peer_id {
            Some(id) => self.on_peer_id(cx, id),
            None => {
                self.our_handshake();
                self.phase = Phase::PeerId;
                Ok(())
            }
        }
    }

    fn on_peer_id(&mut self, cx: &mut Loop<'_>, id: [u8; 20]) -> Result<(), Close> {
        if id == self.sh.borrow().peer_id {
            return Err("connected to ourselves".into());
        }
        self.phase = Phase::Open;
        self.stats.handshake_done = true;
        self.last_msg = cx.now();
        self.last_data = cx.now();
        if self.ext {
            let sh = self.sh.borrow();
            let size = sh.meta_server.as_ref().map(|m| m.total_size());
            let mut hs = ExtHandshake::ours(
                size,
                sh.cfg.max_peer_requests as u32,
                "reactor 0.1",
                sh.listen_port,
                Some(self.addr.ip()),
            );
            if !sh.pex_allowed() {
                // BEP 27: a private torrent has neither metadata exchange nor PEX.
                hs.ut_metadata = None;
                hs.ut_pex = None;
            }
            drop(sh);
            encode_extended(&mut self.out, 0, |out| out.extend_from_slice(&hs.encode()));
        }
        let sh = self.sh.borrow();
        let have = sh.picker.have();
        if self.fast && have.all() {
            self.out.extend_from_slice(&[0, 0, 0, 1, 14]);
        } else if self.fast && have.none() {
            self.out.extend_from_slice(&[0, 0, 0, 1, 15]);
        } else if !have.none() {
            let _ = Message::Bitfield(have.as_bytes()).encode(&mut self.out);
        }
        self.have_idx = sh.have_log.len();
        self.max_inflight = sh.cfg.max_requests.min(64);
        drop(sh);
        log::debug!(
            "peer {}: handshake done (fast: {}, extensions: {})",
            self.addr,
            self.fast,
            self.ext
        );
        Ok(())
    }

    fn on_message(&mut self, cx: &mut Loop<'_>, msg: Message<'_>) -> Result<(), Close> {
        let now = cx.now();
        self.last_msg = now;
        let n = self.peer_has.len();
        match msg {
            Message::KeepAlive => {}
            Message::Choke => {
                self.peer_choking = true;
                if !self.inflight.is_empty() {
                    // Without the fast extension the peer discards them silently, but
                    // blocks it had already sent are still on the wire.
                    Self::excuse(&mut self.excused, self.inflight.len());
                    self.inflight.clear();
                    self.sh.borrow_mut().picker.requests_dropped(self.key);
                }
            }
            Message::Unchoke => {
                self.peer_choking = false;
                self.last_block = now;
            }
            Message::Interested => self.peer_interested = true,
            Message::NotInterested => {
                self.peer_interested = false;
                if !self.am_choking {
                    self.am_choking = true;
                    self.send(Message::Choke);
                    self.serve_q.clear();
                    self.sh.borrow_mut().release_slot(cx);
                }
            }
            Message::Have { .. } | Message::Bitfield(_) | Message::HaveAll | Message::HaveNone
                if !self.upgraded =>
            {
                self.record_pre_meta(msg)?
            }
            Message::Have { piece } => {
                if piece >= n {
                    return Err(format!("have for piece {piece} of {n}").into());
                }
                self.got_bitfield = true;
                if self.peer_has.set(piece) {
                    self.sh.borrow_mut().picker.peer_have(piece);
                }
            }
            Message::Bitfield(bytes) => {
                // Malformed is hostile; late or repeated is not (aria2 sends its
                // bitfield after `have`s): it replaces what the peer announced.
                let bf = Bitfield::from_bytes(bytes, n)
                    .map_err(|e| Close::from(format!("bad bitfield: {e}")))?;
                if self.got_bitfield {
                    log::debug!("peer {}: late bitfield replaces its pieces", self.addr);
                }
                self.replace_has(bf);
            }
            Message::HaveAll | Message::HaveNone => {
                if !self.fast {
                    return Err("fast-extension message without negotiating BEP 6".into());
                }
                let bf = if msg == Message::HaveAll {
                    Bitfield::full(n)
                } else {
                    Bitfield::new(n)
                };
                self.replace_has(bf);
            }
            Message::Request {
                index,
                begin,
                length,
            } => {
                self.last_request = now;
                self.on_request(BlockRef {
                    piece: index,
                    begin,
                    len: length,
                })?
            }
            Message::Cancel {
                index,
                begin,
                length,
            } => {
                let r = BlockRef {
                    piece: index,
                    begin,
                    len: length,
                };
                if let Some(i) = self.serve_q.iter().position(|q| *q == r) {
                    self.serve_q.remove(i);
                }
            }
            Message::Piece {
                index,
                begin,
                block,
            } => self.on_block(cx, index, begin, block)?,
            Message::RejectRequest {
                index,
                begin,
                length,
            } => {
                if !self.fast {
                    return Err("reject_request without negotiating BEP 6".into());
                }
                let r = BlockRef {
                    piece: index,
                    begin,
                    len: length,
                };
                if let Some(i) = self.inflight.iter().position(|q| *q == r) {
                    self.inflight.remove(i);
                    self.sh.borrow_mut().picker.abort_block(self.key, r);
                    self.rejects += 1;
                    if self.rejects > 10_000 {
                        return Err("rejects every request".into());
                    }
                }
            }
            Message::Extended { .. } if !self.ext => {
                return Err("extension message without negotiating BEP 10".into());
            }
            Message::Extended { id: 0, payload } => {
                let hs = ext_handshake::parse_ext_handshake(payload)
                    .map_err(|e| Close::from(format!("bad extension handshake: {e}")))?;
                self.on_ext_handshake(cx, hs);
            }
            Message::Extended {
                id: LOCAL_UT_METADATA_ID,
                payload,
            } => self.on_ut_metadata(cx, payload)?,
            Message::Extended {
                id: LOCAL_UT_PEX_ID,
                payload,
            } => self.on_ut_pex(cx, payload)?,
            // Extensions we did not advertise, DHT port, suggestions, allowed-fast
            // sets and unknown ids are legal to ignore.
            Message::Extended { .. }
            | Message::Port(_)
            | Message::SuggestPiece(_)
            | Message::AllowedFast(_)
            | Message::Unknown { .. } => {}
        }
        Ok(())
    }

    /// Keeps an announcement made before we know the piece count (bounded).
    fn record_pre_meta(&mut self, msg: Message<'_>) -> Result<(), Close> {
        match msg {
            Message::Bitfield(b) => {
                self.pre.set = Some(Ok(b.to_vec()));
                self.pre.haves.clear();
            }
            Message::HaveAll | Message::HaveNone => {
                if !self.fast {
                    return Err("fast-extension message without negotiating BEP 6".into());
                }
                self.pre.set = Some(Err(msg == Message::HaveAll));
                self.pre.haves.clear();
            }
            Message::Have { piece } => {
                if self.pre.haves.len() >= MAX_PRE_META_HAVES {
                    return Err(format!(
                        "more than {MAX_PRE_META_HAVES} have messages before the metadata"
                    )
                    .into());
                }
                self.pre.haves.push(piece);
            }
            _ => {}
        }
        Ok(())
    }

    /// The metadata arrived: what the peer announced is checked against the
    /// real piece count (hostile input closes, as it would have on arrival) and
    /// counted in the picker.
    fn upgrade(&mut self) -> Result<(), Close> {
        let mut sh = self.sh.borrow_mut();
        let n = sh.meta.piece_count();
        let mut bf = match self.pre.set.take() {
            Some(Ok(bytes)) => Bitfield::from_bytes(&bytes, n)
                .map_err(|e| Close::from(format!("bad bitfield: {e}")))?,
            Some(Err(true)) => Bitfield::full(n),
            _ => Bitfield::new(n),
        };
        for &p in &self.pre.haves {
            if p >= n {
                return Err(format!("have for piece {p} of {n}").into());
            }
            bf.set(p);
        }
        self.pre = PreMeta::default();
        sh.picker.peer_bitfield(&bf);
        self.got_bitfield = true;
        self.peer_has = bf;
        self.max_msg = sh.max_msg_len;
        self.have_idx = 0;
        self.upgraded = true;
        Ok(())
    }

    /// The peer's extension handshake: its request queue, its extension ids, its
    /// listen port (for PEX), the metadata it can serve.
    fn on_ext_handshake(&mut self, cx: &mut Loop<'_>, hs: ExtHandshake) {
        let mut sh = self.sh.borrow_mut();
        if let Some(q) = hs.reqq {
            let cap = sh.cfg.max_requests;
            self.max_inflight = (q as usize).clamp(1, cap);
        }
        let merged = match self.ext_hs.take() {
            Some(mut old) => {
                old.update(&hs);
                old
            }
            None => hs,
        };
        if let Some(slot) = sh.sessions.get_mut(&self.key)
            && !self.outgoing
            && let Some(p) = merged.listen_port
        {
            slot.listen = Some(SocketAddr::new(self.addr.ip(), p));
        }
        if let Some(f) = sh.fetcher.as_mut() {
            let size = merged.metadata_id().and(merged.metadata_size);
            if let Err(e) = f.add_peer(self.addr, size) {
                log::info!("peer {}: {e}", self.addr);
            }
        }
        drop(sh);
        self.ext_hs = Some(merged);
        self.request_metadata(cx.now());
    }

    /// Asks this peer for metadata pieces while the fetcher wants some from it.
    fn request_metadata(&mut self, now: Instant) {
        let Some(their) = self.ext_hs.as_ref().and_then(|h| h.metadata_id()) else {
            return;
        };
        let mut sh = self.sh.borrow_mut();
        let Some(f) = sh.fetcher.as_mut() else {
            return;
        };
        while let Some(piece) = f.next_request(self.addr, now) {
            encode_extended(&mut self.out, their, |out| {
                MetadataMsg::Request { piece }.encode(out)
            });
        }
    }

    /// A `ut_metadata` message (BEP 9): a request we serve (or reject), or
    /// data and rejects for our fetch.
    fn on_ut_metadata(&mut self, cx: &mut Loop<'_>, payload: &[u8]) -> Result<(), Close> {
        let Some(msg) = MetadataMsg::decode(payload)
            .map_err(|e| Close::from(format!("bad ut_metadata message: {e}")))?
        else {
            return Ok(()); // an unknown msg_type is ignored (BEP 9)
        };
        let now = cx.now();
        match msg {
            MetadataMsg::Request { piece } => {
                let Some(their) = self.ext_hs.as_ref().and_then(|h| h.metadata_id()) else {
                    return Err("ut_metadata request without enabling ut_metadata".into());
                };
                let mut sh = self.sh.borrow_mut();
                let addr = self.addr;
                match sh.meta_server.as_mut() {
                    Some(server) => {
                        let reply = server
                            .on_request(addr, piece, now)
                            .map_err(|e| Close::from(e.to_string()))?;
                        encode_extended(&mut self.out, their, |out| reply.msg().encode(out));
                    }
                    // BEP 9: without the (verified) metadata, every request is rejected.
                    None => encode_extended(&mut self.out, their, |out| {
                        MetadataMsg::Reject { piece }.encode(out)
                    }),
                }
            }
            MetadataMsg::Data {
                piece,
                total_size,
                data,
            } => {
                let mut sh = self.sh.borrow_mut();
                let Some(f) = sh.fetcher.as_mut() else {
                    return Ok(()); // a late answer after the fetch: harmless
                };
                match f.on_data(self.addr, piece, total_size, data) {
                    Err(e) if e.is_protocol_violation() => {
                        return Err(format!("bad metadata: {e}").into());
                    }
                    Err(_) => {}
                    Ok(meta_x::Progress::Stored { have, total }) => {
                        log::debug!("peer {}: metadata piece {have}/{total}", self.addr);
                        sh.last_progress = now;
                    }
                    Ok(meta_x::Progress::Assembled) => {
                        sh.last_progress = now;
                        sh.wake_engine(cx);
                    }
                    Ok(_) => {}
                }
                drop(sh);
                self.request_metadata(now);
            }
            MetadataMsg::Reject { piece } => {
                if let Some(f) = self.sh.borrow_mut().fetcher.as_mut() {
                    f.on_reject(self.addr, piece, now);
                }
            }
        }
        Ok(())
    }

    /// A `ut_pex` message (BEP 11): the peers it names go to the peer manager,
    /// which keeps its limits and backoff; the engine dials them.
    fn on_ut_pex(&mut self, cx: &mut Loop<'_>, payload: &[u8]) -> Result<(), Close> {
        if !self.sh.borrow().pex_allowed() {
            return Ok(());
        }
        let decoded = PexMessage::decode(payload)
            .map_err(|e| Close::from(format!("bad ut_pex message: {e}")))?;
        let now = cx.now();
        let update = self
            .pex
            .on_message(&decoded.message, now)
            .map_err(|e| Close::from(e.to_string()))?;
        if update.added.is_empty() {
            return Ok(());
        }
        let mut sh = self.sh.borrow_mut();
        let mut added = 0;
        for p in &update.added {
            if sh.peers.peer(&p.addr).is_some_and(|s| s.dialable) || sh.peers.is_banned(&p.addr) {
                continue;
            }
            if sh.peers.add_peer(p.addr, now) {
                added += 1;
                log::info!("pex: learned peer {} from {}", p.addr, self.addr);
            }
        }
        if added > 0 {
            sh.wake_engine(cx);
        }
        Ok(())
    }

    /// Sends this peer the peers we are connected to, at most once a minute
    /// (`PexState`), if it enabled `ut_pex`.
    fn send_pex(&mut self, now: Instant) {
        let Some(their) = self.ext_hs.as_ref().and_then(|h| h.pex_id()) else {
            return;
        };
        if self.pex.next_due().is_some_and(|t| now < t) || now < self.pex_next_look {
            return;
        }
        self.pex_next_look = now + PEX_LOOK_INTERVAL;
        let sh = self.sh.borrow();
        if !sh.pex_allowed() {
            return;
        }
        let connected: Vec<PexPeer> = sh
            .sessions
            .iter()
            .filter(|(k, _)| **k != self.key)
            .filter_map(|(_, s)| {
                Some(PexPeer {
                    addr: s.listen?,
                    flags: s.pex_flags,
                })
            })
            .collect();
        drop(sh);
        if let Some(msg) = self.pex.next_message(&connected, now) {
            let mut payload = Vec::new();
            if msg.encode(&mut payload).is_ok() {
                encode_extended(&mut self.out, their, |out| out.extend_from_slice(&payload));
            }
        }
    }

    /// The peer's announcements become `bf` (its first, or a late one replacing
    /// the earlier ones, as libtorrent does): availability is counted down for what
    /// it had and up for what it has now.
    fn replace_has(&mut self, bf: Bitfield) {
        let mut sh = self.sh.borrow_mut();
        sh.picker.peer_lost(&self.peer_has);
        sh.picker.peer_bitfield(&bf);
        drop(sh);
        self.peer_has = bf;
        self.got_bitfield = true;
    }

    fn reject(&mut self, r: BlockRef) {
        if self.fast {
            self.send(Message::RejectRequest {
                index: r.piece,
                begin: r.begin,
                length: r.len,
            });
        }
    }

    fn on_request(&mut self, r: BlockRef) -> Result<(), Close> {
        if !self.upgraded {
            // We announced nothing yet: nothing to serve.
            self.reject(r);
            return Ok(());
        }
        let sh = self.sh.borrow();
        let plen = sh.picker.piece_len(r.piece);
        if r.piece >= sh.picker.piece_count()
            || r.len == 0
            || u64::from(r.begin) + u64::from(r.len) > u64::from(plen)
        {
            return Err(format!(
                "request outside the torrent (piece {}, begin {}, length {})",
                r.piece, r.begin, r.len
            )
            .into());
        }
        let have = sh.picker.have().has(r.piece) && sh.ready;
        let limit = sh.cfg.max_peer_requests;
        drop(sh);
        if r.len > MAX_REQUEST_LEN {
            if !self.fast {
                return Err(format!("oversized request of {} bytes", r.len).into());
            }
            log::info!(
                "peer {}: rejecting oversized request of {} bytes",
                self.addr,
                r.len
            );
            self.reject(r);
            return Ok(());
        }
        if self.am_choking || !have {
            self.reject(r);
            return Ok(());
        }
        if self.serve_q.len() >= limit {
            if !self.fast {
                return Err(format!("more than {limit} requests queued").into());
            }
            self.reject(r);
            return Ok(());
        }
        self.serve_q.push_back(r);
        Ok(())
    }

    fn on_block(
        &mut self,
        cx: &mut Loop<'_>,
        piece: u32,
        begin: u32,
        block: &[u8],
    ) -> Result<(), Close> {
        let r = BlockRef {
            piece,
            begin,
            len: block.len() as u32,
        };
        match self.inflight.iter().position(|q| *q == r) {
            Some(i) => {
                self.inflight.remove(i);
            }
            None => return self.on_unrequested_block(r),
        }
        let now = cx.now();
        self.last_block = now;
        self.last_data = now;
        let mut sh = self.sh.borrow_mut();
        self.cancels.clear();
        match sh.picker.block_received(self.key, r, &mut self.cancels) {
            Received::Invalid => {
                return Err(format!(
                    "block outside the torrent (piece {piece}, begin {begin}, length {})",
                    block.len()
                )
                .into());
            }
            Received::Duplicate => {}
            Received::Accepted { piece_complete } => {
                let plen = sh.picker.piece_len(piece) as usize;
                let bsize = sh.picker.block_size();
                let blocks = sh.picker.block_count(piece) as usize;
                let a = sh.assembling.entry(piece).or_insert_with(|| Assembly {
                    buf: bytes::BytesMut::zeroed(plen),
                    senders: vec![None; blocks],
                });
                a.buf[begin as usize..begin as usize + block.len()].copy_from_slice(block);
                // Who sent which block: a failed piece blames its senders by block.
                if let Some(s) = a.senders.get_mut((begin / bsize) as usize) {
                    *s = Some(self.addr);
                }
                sh.downloaded += block.len() as u64;
                sh.last_progress = now;
                self.stats.piece_bytes_down += block.len() as u64;
                for &k in &self.cancels {
                    if let Some(s) = sh.sessions.get_mut(&k) {
                        s.cancels.push(r);
                    }
                    sh.wake(cx, k);
                }
                if piece_complete {
                    sh.piece_complete(cx, piece);
                }
            }
        }
        Ok(())
    }

    /// A block we have no request for is dropped, never stored: accepting one would
    /// let a peer write into a piece another peer was chosen to fetch alone after a
    /// hash failure (mixing senders again, so the liar is never the sole sender and
    /// honest peers lose trust), and every block of a piece not yet started would
    /// make us allocate the whole piece. Blocks we cancelled or that a choke dropped
    /// may still be on the way, so those are excused; beyond that a peer pushing
    /// blocks breaks BEP 3 and is closed after [`UNSOLICITED_LIMIT`] of them.
    fn on_unrequested_block(&mut self, r: BlockRef) -> Result<(), Close> {
        if self.upgraded && !self.sh.borrow().picker.is_block(r) {
            return Err(format!(
                "block outside the torrent (piece {}, begin {}, length {})",
                r.piece, r.begin, r.len
            )
            .into());
        }
        if self.excused > 0 {
            self.excused -= 1;
            log::debug!(
                "peer {}: late block (piece {}, begin {}) after a cancel or choke; dropped",
                self.addr,
                r.piece,
                r.begin
            );
            return Ok(());
        }
        self.unsolicited += 1;
        if self.unsolicited > UNSOLICITED_LIMIT {
            return Err(format!(
                "sent {} blocks we never requested (the last: piece {}, begin {}, length {})",
                self.unsolicited, r.piece, r.begin, r.len
            )
            .into());
        }
        log::debug!(
            "peer {}: unrequested block (piece {}, begin {}, length {}); dropped",
            self.addr,
            r.piece,
            r.begin,
            r.len
        );
        Ok(())
    }

    /// Remembers in `excused` that `n` of our requests were forgotten without the
    /// peer's word (a function of the field alone, so it works while `sh` is held).
    fn excuse(excused: &mut u32, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        *excused = excused.saturating_add(n).min(MAX_EXCUSED);
    }

    /// Catches up with the torrent: cancels from end-game, new pieces to
    /// announce, interest, the upload slot.
    fn sync(&mut self, now: Instant) {
        let mut sh = self.sh.borrow_mut();
        if !self.upgraded {
            // Nothing to announce, want or serve before the metadata.
            if let Some(slot) = sh.sessions.get_mut(&self.key) {
                slot.woken = false;
            }
            return;
        }
        let mut cancels = Vec::new();
        if let Some(slot) = sh.sessions.get_mut(&self.key) {
            slot.woken = false;
            if !slot.cancels.is_empty() {
                cancels = std::mem::take(&mut slot.cancels);
            }
        }
        for r in cancels {
            if let Some(i) = self.inflight.iter().position(|q| *q == r) {
                self.inflight.remove(i);
                Self::excuse(&mut self.excused, 1);
                let _ = Message::Cancel {
                    index: r.piece,
                    begin: r.begin,
                    length: r.len,
                }
                .encode(&mut self.out);
            }
        }
        while self.have_idx < sh.have_log.len() {
            let p = sh.have_log[self.have_idx];
            self.have_idx += 1;
            let _ = Message::Have { piece: p }.encode(&mut self.out);
        }
        let interesting = !sh.picker.is_finished() && sh.picker.interesting(&self.peer_has);
        if interesting != self.am_interested && (interesting || self.inflight.is_empty()) {
            self.am_interested = interesting;
            let m = if interesting {
                Message::Interested
            } else {
                Message::NotInterested
            };
            let _ = m.encode(&mut self.out);
        }
        if self.peer_interested && self.am_choking {
            if sh.unchoked < sh.cfg.upload_slots && sh.ready {
                sh.unchoked += 1;
                self.am_choking = false;
                self.last_request = now;
                if self.waiting_slot {
                    // Leave the queue, so a freed slot wakes someone still waiting.
                    self.waiting_slot = false;
                    let me = self.key;
                    sh.choke_waiters.retain(|k| *k != me);
                }
                let _ = Message::Unchoke.encode(&mut self.out);
            } else if !self.waiting_slot {
                self.waiting_slot = true;
                sh.choke_waiters.push_back(self.key);
            }
        }
    }

    /// Keeps the request pipeline full.
    fn fill_requests(&mut self) {
        if !self.upgraded || self.peer_choking || !self.am_interested {
            return;
        }
        let want = self.max_inflight.saturating_sub(self.inflight.len());
        // Top up in batches: fewer, larger writes.
        if want < (self.max_inflight / 4).max(1) {
            return;
        }
        let mut sh = self.sh.borrow_mut();
        self.picks.clear();
        sh.picker
            .next_requests(self.key, &self.peer_has, want, &mut self.picks);
        drop(sh);
        for i in 0..self.picks.len() {
            let b = self.picks[i];
            self.inflight.push_back(b);
            let _ = Message::Request {
                index: b.piece,
                begin: b.begin,
                length: b.len,
            }
            .encode(&mut self.out);
        }
    }
}

impl Handler for Session {
    type Message = ();
    type Job = MseJob;

    fn name(&self) -> &str {
        "PeerSession"
    }

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.p.key = key_of(cx.id());
        self.p.sh.borrow_mut().sessions.insert(
            self.p.key,
            SessionSlot {
                id: cx.id(),
                addr: self.p.addr,
                cancels: Vec::new(),
                woken: false,
                penalised: false,
                listen: self.p.outgoing.then_some(self.p.addr),
                pex_flags: if self.p.outgoing {
                    PexFlags::REACHABLE
                } else {
                    PexFlags::default()
                },
            },
        );
        let now = cx.now();
        self.p.started = now;
        self.p.last_msg = now;
        self.p.last_send = now;
        self.conn.register(cx)?;
        if self.p.outgoing {
            if matches!(self.crypto, Crypto::Mse { .. }) {
                // Our BitTorrent handshake travels inside the MSE handshake.
                if let Err(why) = self.want_key(cx) {
                    self.close(cx, &why, false);
                }
            } else {
                self.p.our_handshake();
                self.write_out(cx);
            }
        }
        self.tick = Some(cx.timer_repeat(std::time::Duration::from_millis(500)));
        Ok(())
    }

    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        self.pump(cx)
    }

    fn on_writable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        if self.p.phase == Phase::Connecting || self.ending.is_some() {
            return self.pump(cx);
        }
        self.serve_and_flush(cx);
        Ok(())
    }

    /// Woken by the engine (`Shared::wake`): pieces to announce, blocks to request
    /// or serve.
    fn on_notify(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        if self.p.phase != Phase::Open || self.ending.is_some() {
            if let Some(s) = self.p.sh.borrow_mut().sessions.get_mut(&self.p.key) {
                s.woken = false;
            }
            return Ok(());
        }
        self.after_input(cx)
    }

    fn on_job(
        &mut self,
        cx: &mut Context<'_, Self>,
        _job: JobId,
        result: JobResult<MseJob>,
    ) -> HandlerResult {
        if self.ending.is_some() {
            return Ok(());
        }
        let done = result?;
        if let Err(why) = self.on_mse_job(done) {
            self.input_failed(cx, &why);
            return Ok(());
        }
        // Bytes may have arrived meanwhile: carry on with them.
        if let Err(why) = self.handle_input(cx) {
            self.input_failed(cx, &why);
            return Ok(());
        }
        self.after_input(cx)
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
        if Some(t) == self.tick {
            self.on_tick(cx);
        }
        Ok(())
    }

    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.end(cx, CloseReason::Shutdown);
        Ok(())
    }

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _reason: CloseReason) {
        self.conn.release(cx);
        if self.p.stats.handshake_done {
            log::info!(
                "peer {}: disconnected ({} piece bytes up, {} down)",
                self.p.addr,
                self.p.stats.piece_bytes_up,
                self.p.stats.piece_bytes_down
            );
        }
        let now = cx.now();
        let mut sh = self.p.sh.borrow_mut();
        let penalised = sh.sessions.remove(&self.p.key).is_some_and(|s| s.penalised);
        sh.blame.peer_left(self.p.addr);
        if let Some(f) = sh.fetcher.as_mut() {
            f.peer_gone(self.p.addr);
        }
        if let Some(m) = sh.meta_server.as_mut() {
            m.peer_gone(self.p.addr);
        }
        sh.picker.peer_left(self.p.key, &self.p.peer_has);
        if !self.p.am_choking {
            sh.release_slot(cx);
        }
        if self.p.registered && self.retries_in_plaintext() {
            log::info!(
                "peer {}: encrypted handshake did not complete; retrying in plaintext",
                self.p.addr
            );
            sh.peers.retry_plaintext(self.p.addr, now);
        } else if self.p.registered {
            let mut stats = self.p.stats;
            if penalised {
                // Bad data counts as no data: the peer backs off like a useless one.
                stats.piece_bytes_down = 0;
                stats.piece_bytes_up = 0;
            }
            sh.peers.disconnected(self.p.addr, now, stats);
        }
        // Requests this peer held are requestable again by the others.
        if !self.p.inflight.is_empty() {
            sh.wake_all(cx);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The protocol rules of a session, without a socket: a `Peer` is fed messages
    //! inside a real loop callback (for `cx.now()` and wake-ups) and its verdicts and
    //! encoded replies are checked.
    use super::*;
    use crate::metainfo::{Metainfo, build_torrent};
    use crate::torrent::TorrentConfig;
    use std::sync::Arc;

    /// 10 pieces of 32 KiB (the last one 1000 bytes shorter).
    fn shared() -> Rc<RefCell<Shared>> {
        let total = 10 * 32 * 1024 - 1000;
        let t = build_torrent("x", &[(vec![], total)], 32 * 1024, &[[0u8; 20]; 10], None).unwrap();
        let meta = Arc::new(Metainfo::parse(&t).unwrap());
        Rc::new(RefCell::new(
            Shared::new(meta, TorrentConfig::default()).unwrap(),
        ))
    }

    type Panic = Rc<RefCell<Option<Box<dyn std::any::Any + Send>>>>;

    type Step = Box<dyn FnOnce(&mut Loop<'_>)>;

    struct Run(Option<Step>, Panic);
    impl Handler for Run {
        type Message = ();
        type Job = ();

        fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
            if let Some(f) = self.0.take() {
                // The loop would log a panic and carry on; the test must fail.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(cx)));
                if let Err(p) = r {
                    *self.1.borrow_mut() = Some(p);
                }
            }
            cx.stop();
            Ok(())
        }
    }

    /// Runs `f` inside a loop callback; its assertion failures fail the test.
    fn in_loop(f: impl FnOnce(&mut Loop<'_>) + 'static) {
        let panic: Panic = Rc::new(RefCell::new(None));
        let mut r = reactor::Reactor::new().unwrap();
        r.spawn(Run(Some(Box::new(f)), panic.clone()));
        r.run().unwrap();
        if let Some(p) = panic.borrow_mut().take() {
            std::panic::resume_unwind(p);
        }
    }

    #[test]
    fn in_loop_propagates_failures() {
        let r = std::panic::catch_unwind(|| in_loop(|_| panic!("expected")));
        assert!(r.is_err());
    }

    /// An open peer; `seed` makes us have every piece (and be ready to serve).
    fn open_peer(seed: bool, fast: bool) -> Peer {
        let sh = shared();
        if seed {
            let mut s = sh.borrow_mut();
            for p in 0..10 {
                s.picker.mark_have(p);
            }
            s.ready = true;
        }
        let mut p = Peer::new(sh, "127.0.0.1:1".parse().unwrap(), false);
        p.key = PeerKey(1);
        p.phase = Phase::Open;
        p.fast = fast;
        p
    }

    fn decode_all(mut b: &[u8]) -> Vec<Message<'_>> {
        let mut v = Vec::new();
        while let Ok(Some((m, n))) = wire::decode(b, 1 << 20) {
            v.push(m);
            b = &b[n..];
        }
        v
    }

    #[test]
    fn requests_are_checked_before_they_are_queued() {
        in_loop(|_cx| {
            let mut p = open_peer(true, true);
            p.am_choking = false;
            let ok = BlockRef {
                piece: 9,
                begin: 16 * 1024,
                len: 32 * 1024 - 1000 - 16 * 1024,
            };
            assert!(p.on_request(ok).is_ok());
            assert_eq!(
                p.serve_q.len(),
                1,
                "a valid request for the short last piece"
            );
            // Past the end of the short last piece: hostile.
            let past = BlockRef {
                piece: 9,
                begin: 16 * 1024,
                len: 16 * 1024,
            };
            assert!(p.on_request(past).is_err());
            let beyond = BlockRef {
                piece: 10,
                begin: 0,
                len: 1,
            };
            assert!(p.on_request(beyond).is_err());
            let empty = BlockRef {
                piece: 0,
                begin: 0,
                len: 0,
            };
            assert!(p.on_request(empty).is_err());
            // Oversized but inside the piece: rejected (BEP 6), connection kept.
            let big = BlockRef {
                piece: 0,
                begin: 0,
                len: 32 * 1024,
            };
            assert!(p.on_request(big).is_ok());
            assert_eq!(p.serve_q.len(), 1);
            assert_eq!(
                decode_all(&p.out),
                vec![Message::RejectRequest {
                    index: 0,
                    begin: 0,
                    length: 32 * 1024
                }]
            );
            // Without BEP 6 there is no way to refuse politely: close.
            let mut q = open_peer(true, false);
            q.am_choking = false;
            assert!(q.on_request(big).is_err());
            // Choked: rejected, not queued.
            let mut c = open_peer(true, true);
            assert!(c.on_request(ok).is_ok());
            assert!(c.serve_q.is_empty());
            assert_eq!(decode_all(&c.out).len(), 1);
        });
    }

    #[test]
    fn announcements_are_validated() {
        in_loop(|cx| {
            let mut p = open_peer(false, false);
            assert!(
                p.on_message(cx, Message::Bitfield(&[0xff])).is_err(),
                "1 byte for 10 pieces"
            );
            assert!(
                p.on_message(cx, Message::Bitfield(&[0xff, 0xff])).is_err(),
                "spare bits set"
            );
            assert!(p.on_message(cx, Message::Bitfield(&[0xff, 0xc0])).is_ok());
            assert!(p.peer_has.all());
            assert_eq!(p.sh.borrow().picker.availability(9), 1);
            // A repeated bitfield replaces the first (libtorrent's tolerance);
            // availability is recounted, not added twice.
            assert!(p.on_message(cx, Message::Bitfield(&[0x80, 0x40])).is_ok());
            assert_eq!(p.sh.borrow().picker.availability(0), 1);
            assert_eq!(p.sh.borrow().picker.availability(1), 0);
            assert_eq!(p.sh.borrow().picker.availability(9), 1);
            assert_eq!(p.peer_has.count(), 2);
            // A have for a piece already announced changes nothing.
            assert!(p.on_message(cx, Message::Have { piece: 0 }).is_ok());
            assert_eq!(p.sh.borrow().picker.availability(0), 1);
            assert!(p.on_message(cx, Message::Have { piece: 3 }).is_ok());
            assert_eq!(p.sh.borrow().picker.availability(3), 1);
            assert!(p.on_message(cx, Message::Have { piece: 10 }).is_err());
            // Still hostile when late: the wrong length.
            assert!(p.on_message(cx, Message::Bitfield(&[0xff])).is_err());
            assert!(
                p.on_message(cx, Message::HaveAll).is_err(),
                "BEP 6 not negotiated"
            );
            // aria2's order: have messages first, then the bitfield.
            let mut a = open_peer(false, false);
            assert!(a.on_message(cx, Message::Have { piece: 2 }).is_ok());
            assert!(a.on_message(cx, Message::Bitfield(&[0x00, 0x40])).is_ok());
            assert_eq!(a.sh.borrow().picker.availability(2), 0);
            assert_eq!(a.sh.borrow().picker.availability(9), 1);
            let mut f = open_peer(false, true);
            assert!(f.on_message(cx, Message::HaveAll).is_ok());
            assert_eq!(f.sh.borrow().picker.availability(3), 1);
            assert!(f.on_message(cx, Message::HaveAll).is_ok());
            assert_eq!(f.sh.borrow().picker.availability(3), 1, "have_all twice");
            assert!(f.on_message(cx, Message::HaveNone).is_ok());
            assert_eq!(
                f.sh.borrow().picker.availability(3),
                0,
                "have_none after have_all"
            );
            assert!(f.peer_has.none());
        });
    }

    #[test]
    fn blocks_fill_pieces_and_hostile_blocks_close() {
        in_loop(|cx| {
            let mut p = open_peer(false, true);
            assert!(p.on_message(cx, Message::HaveAll).is_ok());
            p.peer_choking = false;
            p.am_interested = true;
            // A short request window, so that most blocks stay unrequested.
            p.max_inflight = 2;
            p.fill_requests();
            assert!(!p.inflight.is_empty());
            let first = p.inflight[0];
            let data = vec![7u8; first.len as usize];
            let block = Message::Piece {
                index: first.piece,
                begin: first.begin,
                block: &data,
            };
            assert!(p.on_message(cx, block).is_ok());
            assert_eq!(p.stats.piece_bytes_down, u64::from(first.len));
            let sh = p.sh.borrow();
            let a = sh
                .assembling
                .get(&first.piece)
                .expect("piece being assembled");
            let b = first.begin as usize;
            assert_eq!(&a.buf[b..b + data.len()], &data[..]);
            // Who sent the block is recorded by block, for the blame of a bad piece.
            let idx = (first.begin / 16384) as usize;
            let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
            assert_eq!(a.senders.len(), 2, "a 32 KiB piece has two blocks");
            for (i, s) in a.senders.iter().enumerate() {
                assert_eq!(*s, (i == idx).then_some(addr), "block {i}");
            }
            drop(sh);
            let odd = Message::Piece {
                index: 0,
                begin: 100,
                block: &[1, 2, 3],
            };
            assert!(p.on_message(cx, odd).is_err(), "not a block of the torrent");
            let outside = Message::Piece {
                index: 99,
                begin: 0,
                block: &[1],
            };
            assert!(p.on_message(cx, outside).is_err());
            // A valid block we never asked for is dropped, not stored; past
            // UNSOLICITED_LIMIT of them the peer is closed.
            let asked: Vec<BlockRef> = p.inflight.iter().copied().collect();
            let unasked = (0..p.sh.borrow().picker.piece_count())
                .flat_map(|piece| {
                    [0, 16384].map(|begin| BlockRef {
                        piece,
                        begin,
                        len: 16384,
                    })
                })
                .find(|b| p.sh.borrow().picker.is_block(*b) && !asked.contains(b) && *b != first)
                .expect("a block not requested");
            let pushed = Message::Piece {
                index: unasked.piece,
                begin: unasked.begin,
                block: &data,
            };
            let before = p.stats.piece_bytes_down;
            for _ in 0..UNSOLICITED_LIMIT {
                assert!(p.on_message(cx, pushed).is_ok());
            }
            assert_eq!(
                p.stats.piece_bytes_down, before,
                "an unrequested block was stored"
            );
            assert!(
                p.sh.borrow()
                    .assembling
                    .get(&unasked.piece)
                    .is_none_or(|a| a.senders[(unasked.begin / 16384) as usize].is_none()),
                "an unrequested block reached the piece buffer"
            );
            assert!(p.on_message(cx, pushed).is_err(), "a pusher is closed");
            // A choke drops what we asked for; the picker may give it to others,
            // and blocks of it still on the wire are excused.
            let mut q = open_peer(false, true);
            assert!(q.on_message(cx, Message::HaveAll).is_ok());
            q.peer_choking = false;
            q.am_interested = true;
            q.fill_requests();
            let late: Vec<BlockRef> = q.inflight.iter().copied().collect();
            assert!(late.len() > UNSOLICITED_LIMIT as usize);
            assert!(q.on_message(cx, Message::Choke).is_ok());
            assert!(q.inflight.is_empty());
            for b in &late {
                let m = Message::Piece {
                    index: b.piece,
                    begin: b.begin,
                    block: &data[..b.len as usize],
                };
                assert!(
                    q.on_message(cx, m).is_ok(),
                    "a late block after a choke closed it"
                );
            }
        });
    }

    #[test]
    fn a_fast_peer_gets_have_all_and_a_plain_one_a_bitfield() {
        in_loop(|cx| {
            let mut p = open_peer(true, true);
            p.ext = true;
            p.on_peer_id(cx, *b"-XX0000-abcdefghijkl").unwrap();
            let msgs = decode_all(&p.out);
            assert!(matches!(msgs[0], Message::Extended { id: 0, .. }));
            assert_eq!(msgs[1], Message::HaveAll);
            let mut q = open_peer(true, false);
            q.on_peer_id(cx, *b"-XX0000-abcdefghijkl").unwrap();
            assert_eq!(decode_all(&q.out), vec![Message::Bitfield(&[0xff, 0xc0])]);
            // Our own peer id: a connection to ourselves.
            let mut me = open_peer(true, false);
            let id = me.sh.borrow().peer_id;
            assert!(me.on_peer_id(cx, id).is_err());
        });
    }

    #[test]
    fn announcements_before_the_metadata_are_checked_when_it_arrives() {
        in_loop(|cx| {
            let real = shared();
            let meta = real.borrow().meta.clone();
            let mk = || {
                let sh = Rc::new(RefCell::new(
                    Shared::new_magnet(meta.info_hash, TorrentConfig::default()).unwrap(),
                ));
                let mut p = Peer::new(sh.clone(), "127.0.0.1:2".parse().unwrap(), false);
                p.key = PeerKey(2);
                p.phase = Phase::Open;
                p.fast = true;
                (sh, p)
            };
            // A bitfield of any length and haves of any index are only recorded...
            let (sh, mut p) = mk();
            assert!(!p.upgraded);
            assert!(p.on_message(cx, Message::Bitfield(&[0x80, 0x00])).is_ok());
            assert!(p.on_message(cx, Message::Have { piece: 9 }).is_ok());
            assert!(p.on_message(cx, Message::Have { piece: 9 }).is_ok());
            // ...requests before we have anything are rejected, not closed.
            let r = Message::Request {
                index: 3,
                begin: 0,
                length: 16384,
            };
            assert!(p.on_message(cx, r).is_ok());
            assert!(p.serve_q.is_empty());
            sh.borrow_mut().set_metadata(meta.clone(), None).unwrap();
            assert!(p.upgrade().is_ok());
            assert!(p.upgraded);
            assert!(p.peer_has.has(0) && p.peer_has.has(9) && p.peer_has.count() == 2);
            assert_eq!(sh.borrow().picker.availability(9), 1);
            // ...and judged once the piece count is known.
            let (sh, mut p) = mk();
            assert!(p.on_message(cx, Message::Bitfield(&[0xff])).is_ok());
            sh.borrow_mut().set_metadata(meta.clone(), None).unwrap();
            assert!(p.upgrade().is_err(), "one byte for 10 pieces");
            let (sh, mut p) = mk();
            assert!(p.on_message(cx, Message::Have { piece: 10 }).is_ok());
            sh.borrow_mut().set_metadata(meta.clone(), None).unwrap();
            assert!(p.upgrade().is_err(), "have beyond the last piece");
            // have_all still needs BEP 6.
            let (_sh, mut p) = mk();
            p.fast = false;
            assert!(p.on_message(cx, Message::HaveAll).is_err());
        });
    }
}
