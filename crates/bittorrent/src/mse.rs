//! BitTorrent Message Stream Encryption (MSE, also called Protocol
//! Encryption or PE), as implemented by libtorrent, Transmission, Vuze and
//! aria2: a 768-bit Diffie-Hellman exchange followed by an RC4-obfuscated
//! negotiation that ends in either an RC4 stream or plaintext.
//!
//! The handshake, A = [`Initiator`] (outgoing), B = [`Responder`]
//! (incoming), SKEY = the torrent's info-hash:
//!
//! ```text
//! 1 A->B: Ya, PadA
//! 2 B->A: Yb, PadB
//! 3 A->B: HASH('req1', S), HASH('req2', SKEY) xor HASH('req3', S),
//!         ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)
//! 4 B->A: ENCRYPT(VC, crypto_select, len(PadD), PadD), ENCRYPT2(payload)
//! 5 A->B: ENCRYPT2(payload)
//! ```
//!
//! ENCRYPT is RC4 keyed with `SHA1("keyA"|S|SKEY)` (A to B) or
//! `SHA1("keyB"|S|SKEY)` (B to A), first 1024 keystream bytes discarded.
//! ENCRYPT2 is whatever `crypto_select` chose: the same RC4 streams continued
//! ([`Cipher`]), or plaintext. IA is always RC4, even when plaintext is
//! selected.
//!
//! This module is sans-IO: it converts bytes to bytes and never touches a
//! socket, a clock or a thread. It must not decide timeouts (the caller
//! enforces the handshake deadline), parse the BitTorrent handshake carried
//! in IA, or choose which torrents exist (the responder asks a
//! [`SkeyLookup`]). Every length read from the peer is checked before it is
//! used, memory held per handshake is bounded (see [`REQ1_SYNC_WINDOW`],
//! [`VC_SYNC_WINDOW`], [`ResponderConfig::max_initial_payload`]), and bad
//! input yields a [`MseError`], never a panic.
//!
//! # Driving a state machine
//!
//! `receive(input)` consumes a prefix of `input` and returns its length; it
//! never consumes a byte past the end of the handshake, so whatever the
//! caller still holds once [`Progress::Done`] is reached is ENCRYPT2 payload
//! to feed through [`Established::cipher`] (when RC4 was selected).
//! `take_output` hands over bytes to send. When [`Progress::NeedSecret`] is
//! reported, the expensive Diffie-Hellman step is due: take the
//! [`SecretJob`] with `take_secret_job`, run [`SecretJob::compute`] anywhere
//! (it is `Send`), and hand the result back with `set_secret`; or call
//! `compute_secret_inline` to do it on the spot. Key pairs are generated
//! separately with [`KeyPair::generate`] so that can be offloaded (or
//! pooled) too. After `set_secret`, call `receive` again with any bytes
//! still held: while the secret is pending `receive` consumes nothing.
//!
//! # Choices where implementations differ
//!
//! - The responder sends Yb only after Ya has arrived (as libtorrent and
//!   Transmission do), and step 4 only after the whole IA (as Transmission
//!   does; libtorrent answers after `crypto_provide`). Initiators send IA in
//!   the same flush as step 3, so this costs no round trip, and it lets the
//!   responder refuse a bad PadC or len(IA) before answering.
//! - `crypto_select` must be exactly one bit we offered (libtorrent and
//!   Transmission only check for overlap). Unknown `crypto_provide` bits are
//!   ignored, so a future method does not break the handshake.
//! - Public keys 0, 1, P-1 and values >= P are refused.
//! - IA is buffered whole up to [`ResponderConfig::max_initial_payload`]
//!   (default [`DEFAULT_MAX_INITIAL_PAYLOAD`]); the wire allows 65535.
//!
//! MSE is obfuscation against traffic shaping, not authenticated security:
//! RC4 is broken as a cipher and nothing authenticates the peer. The
//! exponentiation is constant-time because the big-number crate is, not
//! because the protocol needs it.
//!
//! # Cost of the Diffie-Hellman steps, and where they run
//!
//! Generating a [`KeyPair`] and computing a shared secret
//! ([`SecretJob::compute`]) each cost one 768-bit modular exponentiation
//! with a 160-bit exponent (crypto-bigint, constant-time, no allocation):
//! about 61 µs median on the shared 2-core development machine, p99 145 µs to
//! several ms when other jobs compete for the cores
//! (`cargo run --release -p reactor-bittorrent --example dh_bench 5000`; the
//! numbers of the last run are in `docs/peer-wire.md`). That is at the event
//! loop's 100 µs budget with a tail well over it, so the peer session runs
//! both on the worker pool (`cx.offload`): two jobs per encrypted handshake,
//! one key pair and one secret. Everything else a `receive` call does (SHA-1,
//! RC4 keying with its 1024-byte discard, scanning at most 532 bytes) is a few
//! microseconds and stays on the loop.
//!
//! # Policy of the peer
//!
//! [`Encryption`] is the peer's `--encryption` setting; it maps to the
//! [`Policy`] of each side and to whether a plaintext BitTorrent handshake is
//! accepted or tried.

use std::fmt;

use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
use crypto_bigint::{Odd, U192, U768};
use rand::{CryptoRng, Rng, RngExt};
use rc4::{KeyInit, Rc4, StreamCipher};
use sha1::{Digest, Sha1};

/// Length of a Diffie-Hellman public key or shared secret on the wire
/// (768 bits, big-endian, left-padded with zeros).
pub const DH_KEY_LEN: usize = 96;

/// Length of a private key: 160 bits, as libtorrent, Transmission and the
/// spec use. Longer exponents would only make the exchange slower.
pub const PRIVATE_KEY_LEN: usize = 20;

/// Largest PadA, PadB, PadC or PadD the spec allows.
pub const MAX_PAD_LEN: u16 = 512;

/// `crypto_provide` / `crypto_select` bit for plaintext after the handshake.
pub const CRYPTO_PLAINTEXT: u32 = 0x01;

/// `crypto_provide` / `crypto_select` bit for RC4 after the handshake.
pub const CRYPTO_RC4: u32 = 0x02;

/// Bytes after Ya within which the responder must find the end of
/// HASH('req1', S): PadA (at most 512) plus the 20-byte hash. libtorrent
/// and Transmission use the same window.
pub const REQ1_SYNC_WINDOW: usize = MAX_PAD_LEN as usize + 20;

/// Bytes after Yb within which the initiator must find the end of the
/// encrypted VC: PadB (at most 512) plus the 8-byte VC, i.e. 616 bytes from
/// the start of the responder's stream. libtorrent uses the same window.
pub const VC_SYNC_WINDOW: usize = MAX_PAD_LEN as usize + 8;

/// Default for [`ResponderConfig::max_initial_payload`]: a 68-byte
/// BitTorrent handshake plus a 16 KiB extension handshake (the peer wire
/// module's limit) and its framing. libtorrent and Transmission send exactly
/// the 68-byte handshake; the wire format's ceiling is 65535.
pub const DEFAULT_MAX_INITIAL_PAYLOAD: u16 = 68 + 16 * 1024 + 6;

/// The first 20 bytes of a plaintext BitTorrent handshake.
const PLAINTEXT_PREFIX: &[u8; 20] = b"\x13BitTorrent protocol";

/// Keystream bytes thrown away after keying RC4: its first bytes leak key
/// material; the spec fixes the discard at 1024.
const RC4_DISCARD: usize = 1024;

/// Verification constant: 8 zero bytes, sent encrypted.
const VC: [u8; 8] = [0; 8];

/// The 768-bit MODP prime (RFC 2409 group 1, "Oakley group 1"); the
/// generator is 2.
const PRIME_HEX: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563";

const LIMBS: usize = U768::LIMBS;

/// Evaluated at compile time, so a malformed constant cannot panic at run
/// time.
const PRIME: Odd<U768> = Odd::<U768>::from_be_hex(PRIME_HEX);

/// Montgomery parameters for P, also computed at compile time.
static MONTY: FixedMontyParams<LIMBS> = FixedMontyParams::new_vartime(PRIME);

// ------------------------------------------------------------------ errors

/// Which padding field a length check refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadField {
    /// PadC, sent by the initiator in step 3.
    C,
    /// PadD, sent by the responder in step 4.
    D,
}

/// Why a handshake failed, or why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MseError {
    /// The peer's public key is 0, 1, P-1 or not below P: no honest peer
    /// sends one, and each would make the shared secret predictable.
    InvalidPublicKey,
    /// Responder: HASH('req1', S) did not end within
    /// [`REQ1_SYNC_WINDOW`] bytes after Ya (not MSE, or PadA too long).
    SyncHashNotFound,
    /// Initiator: the encrypted VC did not end within [`VC_SYNC_WINDOW`]
    /// bytes after Yb (wrong key, wrong info-hash, or PadB too long).
    VcNotFound,
    /// Responder: the obfuscated info-hash matches no torrent we serve.
    UnknownInfoHash,
    /// Responder: the verification constant did not decrypt to zeros.
    BadVerificationConstant,
    /// Responder: `crypto_provide` shares no method with our policy.
    NoCommonMethod {
        /// The peer's `crypto_provide` bits.
        provided: u32,
        /// The bits our policy allows.
        allowed: u32,
    },
    /// Initiator: `crypto_select` is not exactly one method we offered.
    BadCryptoSelect {
        /// The peer's `crypto_select` bits.
        selected: u32,
        /// The bits we offered in `crypto_provide`.
        offered: u32,
    },
    /// A padding length field exceeds [`MAX_PAD_LEN`].
    PadTooLong {
        /// Which field.
        pad: PadField,
        /// The announced length.
        len: u16,
    },
    /// Responder: len(IA) exceeds the configured maximum.
    InitialPayloadTooLong {
        /// The announced length.
        len: u16,
        /// The limit in force.
        max: u16,
    },
    /// The peer sent more bytes than any valid handshake allows before our
    /// next message (e.g. more than 512 bytes of PadB before step 3).
    UnexpectedData {
        /// Bytes the caller offered while we were waiting.
        len: usize,
    },
    /// A constructor argument is out of range (padding over 512, initial
    /// payload over 65535 bytes, zero private key).
    InvalidConfig(&'static str),
    /// `set_secret` was called when no secret was pending, or with a secret
    /// computed for another key exchange. The state machine is unchanged.
    UnexpectedSecret,
}

impl fmt::Display for MseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MseError::InvalidPublicKey => {
                write!(f, "peer's Diffie-Hellman public key is out of range")
            }
            MseError::SyncHashNotFound => write!(
                f,
                "HASH('req1', S) not found within {REQ1_SYNC_WINDOW} bytes after the peer's public key"
            ),
            MseError::VcNotFound => write!(
                f,
                "encrypted verification constant not found within {VC_SYNC_WINDOW} bytes after the peer's public key"
            ),
            MseError::UnknownInfoHash => {
                write!(f, "peer asked for an info-hash we do not serve")
            }
            MseError::BadVerificationConstant => {
                write!(f, "verification constant did not decrypt to zeros")
            }
            MseError::NoCommonMethod { provided, allowed } => write!(
                f,
                "peer provides crypto methods {provided:#x}, we allow {allowed:#x}: nothing in common"
            ),
            MseError::BadCryptoSelect { selected, offered } => write!(
                f,
                "peer selected crypto methods {selected:#x}, not exactly one of the offered {offered:#x}"
            ),
            MseError::PadTooLong { pad, len } => write!(
                f,
                "Pad{pad:?} length {len} exceeds the maximum of {MAX_PAD_LEN}"
            ),
            MseError::InitialPayloadTooLong { len, max } => {
                write!(
                    f,
                    "initial payload of {len} bytes exceeds the limit of {max}"
                )
            }
            MseError::UnexpectedData { len } => write!(
                f,
                "peer sent {len} bytes, more than the handshake allows at this point"
            ),
            MseError::InvalidConfig(why) => write!(f, "invalid MSE configuration: {why}"),
            MseError::UnexpectedSecret => {
                write!(
                    f,
                    "shared secret supplied when none was pending, or for another exchange"
                )
            }
        }
    }
}

impl std::error::Error for MseError {}

// ------------------------------------------------------------- detection

/// What the first bytes of an incoming connection look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// A plaintext BitTorrent handshake (`\x13BitTorrent protocol`).
    Plaintext,
    /// Anything else: an MSE public key, if it is BitTorrent at all.
    Encrypted,
    /// Every byte so far matches the plaintext prefix; wait for up to 20.
    /// Waiting is always safe: a plaintext peer sends 68 bytes and an MSE
    /// initiator at least 96 before expecting an answer.
    Undecided,
}

/// Classify an incoming connection from its first bytes. Decides as soon as
/// a byte differs from the plaintext prefix, so an MSE peer is recognised
/// from its first byte in 255 cases out of 256. Whether a plaintext peer is
/// then accepted (encryption "forced" or not) is the caller's policy.
pub fn classify_incoming(first_bytes: &[u8]) -> Incoming {
    let n = first_bytes.len().min(PLAINTEXT_PREFIX.len());
    if first_bytes[..n] != PLAINTEXT_PREFIX[..n] {
        Incoming::Encrypted
    } else if n == PLAINTEXT_PREFIX.len() {
        Incoming::Plaintext
    } else {
        Incoming::Undecided
    }
}

/// Do `first_bytes` begin with the 20-byte plaintext handshake prefix?
/// `false` for fewer than 20 bytes; use [`classify_incoming`] to decide
/// early.
pub fn looks_like_plaintext_handshake(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(PLAINTEXT_PREFIX)
}

// ---------------------------------------------------------------- policy

/// A method for the payload stream after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoMethod {
    /// Only the handshake (and IA) is obfuscated; payload is plaintext.
    Plaintext,
    /// The whole stream is RC4.
    Rc4,
}

impl CryptoMethod {
    /// This method's `crypto_provide` / `crypto_select` bit.
    pub fn bit(self) -> u32 {
        match self {
            CryptoMethod::Plaintext => CRYPTO_PLAINTEXT,
            CryptoMethod::Rc4 => CRYPTO_RC4,
        }
    }
}

/// Which payload methods we accept. The initiator offers every allowed
/// method and the responder picks, so the preference only matters on the
/// responder side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Obfuscated handshake, plaintext payload only.
    PlaintextOnly,
    /// RC4 payload required.
    Rc4Only,
    /// Both; a responder picks RC4 when offered.
    #[default]
    PreferRc4,
    /// Both; a responder picks plaintext when offered (cheaper, and what
    /// libtorrent does unless `prefer_rc4` is set).
    PreferPlaintext,
}

impl Policy {
    /// The `crypto_provide` bits this policy allows.
    pub fn bits(self) -> u32 {
        match self {
            Policy::PlaintextOnly => CRYPTO_PLAINTEXT,
            Policy::Rc4Only => CRYPTO_RC4,
            Policy::PreferRc4 | Policy::PreferPlaintext => CRYPTO_PLAINTEXT | CRYPTO_RC4,
        }
    }

    /// The method a responder with this policy selects from `provided`.
    /// Unknown bits are ignored: they may be methods added later.
    pub fn select(self, provided: u32) -> Option<CryptoMethod> {
        let rc4 = provided & CRYPTO_RC4 != 0;
        let plain = provided & CRYPTO_PLAINTEXT != 0;
        match self {
            Policy::PlaintextOnly => plain.then_some(CryptoMethod::Plaintext),
            Policy::Rc4Only => rc4.then_some(CryptoMethod::Rc4),
            Policy::PreferRc4 if rc4 => Some(CryptoMethod::Rc4),
            Policy::PreferRc4 => plain.then_some(CryptoMethod::Plaintext),
            Policy::PreferPlaintext if plain => Some(CryptoMethod::Plaintext),
            Policy::PreferPlaintext => rc4.then_some(CryptoMethod::Rc4),
        }
    }
}

/// The peer's encryption setting (`--encryption`), as in libtorrent's
/// `in_enc_policy` / `out_enc_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encryption {
    /// Plaintext BitTorrent only: an incoming MSE handshake is refused (closed
    /// with a log line), outgoing connections are plaintext.
    Disabled,
    /// Accept both; dial with MSE offering RC4 and plaintext payload, and redial
    /// in plaintext once if that fails (libtorrent's default). As responder, pick
    /// plaintext payload when both are offered (libtorrent's `prefer_rc4=false`):
    /// the handshake is obfuscated either way, and RC4 costs CPU per byte.
    #[default]
    Enabled,
    /// MSE with an RC4 payload both ways: a plaintext BitTorrent handshake is
    /// refused, and no plaintext retry is made.
    Forced,
}

impl Encryption {
    /// Parses the `--encryption` value.
    pub fn parse(s: &str) -> Option<Encryption> {
        match s {
            "disabled" => Some(Encryption::Disabled),
            "enabled" => Some(Encryption::Enabled),
            "forced" => Some(Encryption::Forced),
            _ => None,
        }
    }

    /// Whether an incoming plaintext BitTorrent handshake is accepted.
    pub fn accepts_plaintext(self) -> bool {
        self != Encryption::Forced
    }

    /// Whether an incoming MSE handshake is accepted.
    pub fn accepts_mse(self) -> bool {
        self != Encryption::Disabled
    }

    /// What we offer as initiator.
    pub fn initiator_policy(self) -> Policy {
        match self {
            Encryption::Forced => Policy::Rc4Only,
            _ => Policy::PreferPlaintext,
        }
    }

    /// What we accept (and pick) as responder.
    pub fn responder_policy(self) -> Policy {
        match self {
            Encryption::Forced => Policy::Rc4Only,
            _ => Policy::PreferPlaintext,
        }
    }
}

impl fmt::Display for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encryption::Disabled => "disabled",
            Encryption::Enabled => "enabled",
            Encryption::Forced => "forced",
        })
    }
}

/// How much padding we send in each pad field (PadA/PadB and PadC/PadD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// A uniformly random length in `0..=max` for each field, the usual
    /// choice: varying lengths are the point of padding.
    Random {
        /// Largest length, at most [`MAX_PAD_LEN`].
        max: u16,
    },
    /// Always this length (tests, or to minimise bytes).
    Fixed(u16),
}

impl Default for Padding {
    fn default() -> Self {
        Padding::Random { max: MAX_PAD_LEN }
    }
}

impl Padding {
    fn validate(self) -> Result<(), MseError> {
        let max = match self {
            Padding::Random { max } | Padding::Fixed(max) => max,
        };
        if max > MAX_PAD_LEN {
            return Err(MseError::InvalidConfig("padding longer than 512 bytes"));
        }
        Ok(())
    }

    fn pick(self) -> u16 {
        match self {
            Padding::Fixed(n) => n,
            Padding::Random { max } => rand::rng().random_range(0..=max),
        }
    }

    /// Append a pad of a picked length with random contents; returns its
    /// length.
    fn append(self, out: &mut Vec<u8>) -> u16 {
        let len = self.pick();
        let start = out.len();
        out.resize(start + usize::from(len), 0);
        rand::rng().fill_bytes(&mut out[start..]);
        len
    }
}

/// Settings for an [`Initiator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InitiatorConfig {
    /// Methods we offer in `crypto_provide`.
    pub policy: Policy,
    /// PadA and PadC lengths.
    pub padding: Padding,
}

/// Settings for a [`Responder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponderConfig {
    /// Methods we accept, and which one we pick when offered both.
    pub policy: Policy,
    /// PadB and PadD lengths.
    pub padding: Padding,
    /// Largest len(IA) accepted; IA is buffered whole, so this bounds the
    /// handshake's memory. Default [`DEFAULT_MAX_INITIAL_PAYLOAD`].
    pub max_initial_payload: u16,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        ResponderConfig {
            policy: Policy::default(),
            padding: Padding::default(),
            max_initial_payload: DEFAULT_MAX_INITIAL_PAYLOAD,
        }
    }
}

// ---------------------------------------------------------- diffie-hellman

/// A Diffie-Hellman key pair. Generating one costs a 768-bit modular
/// exponentiation (see the crate docs for measured costs), so callers on an
/// event loop may generate them on a worker or keep a pool. A key pair must
/// be used for one handshake only.
#[derive(Clone)]
pub struct KeyPair {
    private: [u8; PRIVATE_KEY_LEN],
    public: [u8; DH_KEY_LEN],
}

impl KeyPair {
    /// A fresh key pair from the thread-local CSPRNG.
    pub fn generate() -> KeyPair {
        Self::generate_with(&mut rand::rng())
    }

    /// A fresh key pair from `rng`.
    pub fn generate_with<R: CryptoRng + ?Sized>(rng: &mut R) -> KeyPair {
        loop {
            let mut private = [0u8; PRIVATE_KEY_LEN];
            rng.fill_bytes(&mut private);
            // Zero is the only unusable exponent (public key 1); retrying
            // keeps the distribution uniform over the rest.
            if let Ok(kp) = Self::from_private(private) {
                return kp;
            }
        }
    }

    /// The key pair for a given private exponent (big-endian). Refuses zero.
    pub fn from_private(private: [u8; PRIVATE_KEY_LEN]) -> Result<KeyPair, MseError> {
        if private.iter().all(|&b| b == 0) {
            return Err(MseError::InvalidConfig("private key is zero"));
        }
        Ok(KeyPair {
            private,
            public: modpow(&U768::from_u8(2), &private),
        })
    }

    /// Our public key, as sent on the wire.
    pub fn public_key(&self) -> &[u8; DH_KEY_LEN] {
        &self.public
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &hex_prefix(&self.public))
            .finish_non_exhaustive()
    }
}

/// Compute the shared secret S from our key pair and the peer's public key:
/// the pure, expensive step, usable from any thread.
pub fn compute_shared_secret(
    keypair: &KeyPair,
    peer_public: &[u8; DH_KEY_LEN],
) -> Result<[u8; DH_KEY_LEN], MseError> {
    let y = parse_public(peer_public)?;
    Ok(modpow(&y, &keypair.private))
}

/// Validate a peer's public key: 2 <= Y <= P-2.
fn parse_public(bytes: &[u8; DH_KEY_LEN]) -> Result<U768, MseError> {
    let y = U768::from_be_slice(bytes);
    let p_minus_one = PRIME.as_ref().wrapping_sub(&U768::ONE);
    if y < U768::from_u8(2) || y >= p_minus_one {
        return Err(MseError::InvalidPublicKey);
    }
    Ok(y)
}

/// `base ^ private mod P`, constant-time over the 160 exponent bits.
fn modpow(base: &U768, private: &[u8; PRIVATE_KEY_LEN]) -> [u8; DH_KEY_LEN] {
    let mut exp = [0u8; U192::BYTES];
    exp[U192::BYTES - PRIVATE_KEY_LEN..].copy_from_slice(private);
    let exp = U192::from_be_slice(&exp);
    let base = FixedMontyForm::new(base, &MONTY);
    let y = base
        .pow_bounded_exp(&exp, 8 * PRIVATE_KEY_LEN as u32)
        .retrieve();
    let mut out = [0u8; DH_KEY_LEN];
    out.copy_from_slice(y.to_be_bytes().as_slice());
    out
}

fn hex_prefix(bytes: &[u8]) -> String {
    let mut s: String = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
    s.push('…');
    s
}

/// The Diffie-Hellman work a handshake is waiting for. `Send`, so it can run
/// on a worker thread; [`SecretJob::compute`] is the expensive part.
#[derive(Clone)]
pub struct SecretJob {
    keypair: KeyPair,
    peer_public: [u8; DH_KEY_LEN],
}

impl SecretJob {
    /// Compute the shared secret (one 768-bit modular exponentiation).
    pub fn compute(&self) -> SharedSecret {
        // The peer key was validated when it arrived; this cannot fail, but
        // a failure would still only produce a secret the machine rejects.
        let s = match parse_public(&self.peer_public) {
            Ok(y) => modpow(&y, &self.keypair.private),
            Err(_) => [0; DH_KEY_LEN],
        };
        SharedSecret {
            s,
            our_public: self.keypair.public,
            peer_public: self.peer_public,
        }
    }
}

impl fmt::Debug for SecretJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretJob")
            .field("peer_public", &hex_prefix(&self.peer_public))
            .finish_non_exhaustive()
    }
}

/// The result of a [`SecretJob`], to hand back with `set_secret`. It
/// remembers both public keys so it cannot be applied to the wrong
/// handshake.
#[derive(Clone)]
pub struct SharedSecret {
    s: [u8; DH_KEY_LEN],
    our_public: [u8; DH_KEY_LEN],
    peer_public: [u8; DH_KEY_LEN],
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSecret").finish_non_exhaustive()
    }
}

// ----------------------------------------------------------------- hashes

fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// HASH('req2', SKEY) for an info-hash. A responder serving many torrents
/// can index its torrents by this value and look it up in [`SkeyLookup`].
pub fn req2_hash(info_hash: &[u8; 20]) -> [u8; 20] {
    sha1(&[b"req2", info_hash])
}

fn xor20(a: &[u8; 20], b: &[u8; 20]) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

/// How a [`Responder`] finds SKEY: given HASH('req2', SKEY), return the
/// info-hash we serve that produces it, or `None`.
///
/// Implemented for closures, for slices and `Vec`s of info-hashes (a linear
/// scan, hashing each), and for maps keyed by [`req2_hash`].
pub trait SkeyLookup {
    /// The info-hash whose [`req2_hash`] is `req2`, if we serve it.
    fn lookup(&self, req2: &[u8; 20]) -> Option<[u8; 20]>;
}

impl<F> SkeyLookup for F
where
    F: Fn(&[u8; 20]) -> Option<[u8; 20]>,
{
    fn lookup(&self, req2: &[u8; 20]) -> Option<[u8; 20]> {
        self(req2)
    }
}

impl SkeyLookup for [[u8; 20]] {
    fn lookup(&self, req2: &[u8; 20]) -> Option<[u8; 20]> {
        self.iter().find(|ih| req2_hash(ih) == *req2).copied()
    }
}

impl SkeyLookup for Vec<[u8; 20]> {
    fn lookup(&self, req2: &[u8; 20]) -> Option<[u8; 20]> {
        self.as_slice().lookup(req2)
    }
}

impl<S: std::hash::BuildHasher> SkeyLookup for std::collections::HashMap<[u8; 20], [u8; 20], S> {
    fn lookup(&self, req2: &[u8; 20]) -> Option<[u8; 20]> {
        self.get(req2).copied()
    }
}

// ------------------------------------------------------------------- rc4

/// One direction of an RC4 stream, already past the discarded 1024 bytes
/// and the handshake bytes.
pub struct Rc4Stream {
    rc4: Rc4,
}

impl Rc4Stream {
    fn new(tag: &[u8; 4], secret: &[u8; DH_KEY_LEN], skey: &[u8; 20]) -> Rc4Stream {
        let key = sha1(&[tag, secret, skey]);
        // A 20-byte key is always within RC4's 1..=256 byte range.
        let mut rc4 = Rc4::new_from_slice(&key).expect("RC4 accepts 20-byte keys");
        let mut discard = [0u8; RC4_DISCARD];
        rc4.apply_keystream(&mut discard);
        Rc4Stream { rc4 }
    }

    /// Encrypt or decrypt `buf` in place (RC4 is symmetric).
    pub fn apply(&mut self, buf: &mut [u8]) {
        self.rc4.apply_keystream(buf);
    }

    /// Advance the keystream over `n` bytes the caller does not need.
    fn skip(&mut self, mut n: usize) {
        let mut scratch = [0u8; 256];
        while n > 0 {
            let k = n.min(scratch.len());
            self.rc4.apply_keystream(&mut scratch[..k]);
            n -= k;
        }
    }
}

impl fmt::Debug for Rc4Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rc4Stream").finish_non_exhaustive()
    }
}

/// The RC4 streams for the payload after an RC4 handshake. Every byte sent
/// must go through [`Cipher::encrypt`] and every byte received through
/// [`Cipher::decrypt`], in stream order.
#[derive(Debug)]
pub struct Cipher {
    send: Rc4Stream,
    recv: Rc4Stream,
}

impl Cipher {
    /// Encrypt outgoing bytes in place.
    pub fn encrypt(&mut self, buf: &mut [u8]) {
        self.send.apply(buf);
    }

    /// Decrypt incoming bytes in place.
    pub fn decrypt(&mut self, buf: &mut [u8]) {
        self.recv.apply(buf);
    }

    /// Split into (send, receive) streams, for code that owns the two
    /// directions separately.
    pub fn into_halves(self) -> (Rc4Stream, Rc4Stream) {
        (self.send, self.recv)
    }
}

// ------------------------------------------------------------ progress

/// Where a handshake stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for bytes from the peer (send any output first).
    NeedInput,
    /// The peer's public key arrived: compute the shared secret
    /// (`take_secret_job` + `set_secret`, or `compute_secret_inline`).
    NeedSecret,
    /// Finished: send any remaining output, then call `finish`.
    Done,
    /// Failed; every later `receive` returns this error again.
    Failed(MseError),
}

/// A completed handshake.
#[derive(Debug)]
pub struct Established {
    /// The payload method selected.
    pub method: CryptoMethod,
    /// SKEY: the torrent this connection is for.
    pub info_hash: [u8; 20],
    /// Responder: the decrypted initial payload (IA), i.e. the first bytes
    /// of the peer's plaintext BitTorrent stream, normally its 68-byte
    /// handshake. Initiator: always empty.
    pub initial_payload: Vec<u8>,
    /// `Some` exactly when `method` is RC4.
    pub cipher: Option<Cipher>,
    /// Handshake bytes not yet collected with `take_output`; send them
    /// before any payload. Empty if output was drained before `finish`.
    pub unsent: Vec<u8>,
}

// -------------------------------------------------------------- buffers

/// Collects exactly N bytes across calls.
struct Fixed<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Fixed<N> {
    fn new() -> Self {
        Fixed {
            buf: [0; N],
            len: 0,
        }
    }

    /// Take what is needed from `input`; returns bytes consumed.
    fn fill(&mut self, input: &[u8]) -> usize {
        let n = (N - self.len).min(input.len());
        self.buf[self.len..self.len + n].copy_from_slice(&input[..n]);
        self.len += n;
        n
    }

    fn full(&self) -> bool {
        self.len == N
    }
}

enum Scan {
    /// The pattern ended after this many bytes of the input.
    Found(usize),
    /// Not found yet; all this many bytes consumed.
    More(usize),
}

/// Finds an N-byte pattern in a stream within `limit` bytes, keeping only
/// the last N-1 bytes seen so that a pattern split across calls is found
/// and memory stays O(N).
struct Scanner<const N: usize> {
    pattern: [u8; N],
    tail: [u8; N],
    tail_len: usize,
    scanned: usize,
    limit: usize,
}

impl<const N: usize> Scanner<N> {
    fn new(pattern: [u8; N], limit: usize) -> Self {
        Scanner {
            pattern,
            tail: [0; N],
            tail_len: 0,
            scanned: 0,
            limit,
        }
    }

    /// `Err(())` once `limit` bytes were scanned without a match.
    fn feed(&mut self, input: &[u8]) -> Result<Scan, ()> {
        let take = input.len().min(self.limit - self.scanned);
        let data = &input[..take];
        // Starts inside the tail, earliest first.
        for i in 0..self.tail_len {
            let k = self.tail_len - i;
            let rest = N - k;
            if data.len() >= rest
                && self.tail[i..self.tail_len] == self.pattern[..k]
                && data[..rest] == self.pattern[k..]
            {
                self.scanned += rest;
                return Ok(Scan::Found(rest));
            }
        }
        if let Some(p) = data.windows(N).position(|w| w == self.pattern) {
            self.scanned += p + N;
            return Ok(Scan::Found(p + N));
        }
        self.scanned += take;
        let keep = (self.tail_len + take).min(N - 1);
        let from_data = take.min(keep);
        let from_tail = keep - from_data;
        let mut tail = [0u8; N];
        tail[..from_tail].copy_from_slice(&self.tail[self.tail_len - from_tail..self.tail_len]);
        tail[from_tail..keep].copy_from_slice(&data[take - from_data..]);
        self.tail = tail;
        self.tail_len = keep;
        if self.scanned >= self.limit {
            Err(())
        } else {
            Ok(Scan::More(take))
        }
    }
}

// ------------------------------------------------------------- initiator

enum IState {
    /// Collecting Yb.
    PeerKey(Fixed<DH_KEY_LEN>),
    /// Yb received and valid; waiting for S.
    NeedSecret {
        peer_public: [u8; DH_KEY_LEN],
        job_taken: bool,
    },
    /// Step 3 sent; looking for ENCRYPT(VC) after PadB.
    SyncVc {
        scanner: Scanner<8>,
        send: Rc4Stream,
        recv: Rc4Stream,
    },
    /// Reading crypto_select and len(PadD).
    Select {
        acc: Fixed<6>,
        send: Rc4Stream,
        recv: Rc4Stream,
    },
    /// Skipping PadD.
    PadD {
        remaining: usize,
        method: CryptoMethod,
        send: Rc4Stream,
        recv: Rc4Stream,
    },
    Done {
        method: CryptoMethod,
        cipher: Option<Cipher>,
    },
    Failed(MseError),
    /// Only while a transition is computed.
    Transit,
}

/// The outgoing side (A) of an MSE handshake. Sends Ya at construction and
/// the BitTorrent handshake (or any initial payload) as IA in step 3.
pub struct Initiator {
    keypair: KeyPair,
    info_hash: [u8; 20],
    config: InitiatorConfig,
    ia: Vec<u8>,
    out: Vec<u8>,
    state: IState,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator")
            .field("progress", &self.poll())
            .field("pending_output", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Start a handshake for `info_hash`. `initial_payload` (IA, normally
    /// the 68-byte BitTorrent handshake; at most 65535 bytes, may be empty)
    /// is sent RC4-encrypted in step 3, before the method is known. Ya and
    /// PadA are queued for `take_output` at once.
    pub fn new(
        keypair: KeyPair,
        info_hash: [u8; 20],
        initial_payload: &[u8],
        config: InitiatorConfig,
    ) -> Result<Initiator, MseError> {
        config.padding.validate()?;
        if initial_payload.len() > usize::from(u16::MAX) {
            return Err(MseError::InvalidConfig("initial payload over 65535 bytes"));
        }
        let mut out = Vec::with_capacity(DH_KEY_LEN + usize::from(MAX_PAD_LEN));
        out.extend_from_slice(&keypair.public);
        config.padding.append(&mut out);
        Ok(Initiator {
            keypair,
            info_hash,
            config,
            ia: initial_payload.to_vec(),
            out,
            state: IState::PeerKey(Fixed::new()),
        })
    }

    /// Feed bytes received from the peer; returns how many were consumed.
    /// Never consumes past the end of the handshake. Consumes nothing while
    /// the secret is pending or after completion.
    pub fn receive(&mut self, input: &[u8]) -> Result<usize, MseError> {
        if let IState::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let mut used = 0;
        while used < input.len() {
            let state = std::mem::replace(&mut self.state, IState::Transit);
            match self.step(state, &input[used..]) {
                Ok((next, n)) => {
                    self.state = next;
                    if n == 0 {
                        break;
                    }
                    used += n;
                }
                Err(e) => {
                    self.state = IState::Failed(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(used)
    }

    fn step(&mut self, state: IState, input: &[u8]) -> Result<(IState, usize), MseError> {
        Ok(match state {
            IState::PeerKey(mut acc) => {
                let n = acc.fill(input);
                if !acc.full() {
                    return Ok((IState::PeerKey(acc), n));
                }
                parse_public(&acc.buf)?;
                let next = IState::NeedSecret {
                    peer_public: acc.buf,
                    job_taken: false,
                };
                (next, n)
            }
            IState::NeedSecret { .. } => {
                // B cannot send anything but PadB before our step 3: it
                // needs SKEY to encrypt its VC.
                if input.len() > usize::from(MAX_PAD_LEN) {
                    return Err(MseError::UnexpectedData { len: input.len() });
                }
                (state, 0)
            }
            IState::SyncVc {
                mut scanner,
                send,
                recv,
            } => match scanner.feed(input) {
                Ok(Scan::Found(n)) => {
                    let next = IState::Select {
                        acc: Fixed::new(),
                        send,
                        recv,
                    };
                    (next, n)
                }
                Ok(Scan::More(n)) => (
                    IState::SyncVc {
                        scanner,
                        send,
                        recv,
                    },
                    n,
                ),
                Err(()) => return Err(MseError::VcNotFound),
            },
            IState::Select {
                mut acc,
                send,
                mut recv,
            } => {
                let n = acc.fill(input);
                if !acc.full() {
                    return Ok((IState::Select { acc, send, recv }, n));
                }
                let mut fields = acc.buf;
                recv.apply(&mut fields);
                let selected = u32::from_be_bytes([fields[0], fields[1], fields[2], fields[3]]);
                let pad_len = u16::from_be_bytes([fields[4], fields[5]]);
                let offered = self.config.policy.bits();
                let method = match selected {
                    CRYPTO_PLAINTEXT if offered & CRYPTO_PLAINTEXT != 0 => CryptoMethod::Plaintext,
                    CRYPTO_RC4 if offered & CRYPTO_RC4 != 0 => CryptoMethod::Rc4,
                    _ => return Err(MseError::BadCryptoSelect { selected, offered }),
                };
                if pad_len > MAX_PAD_LEN {
                    return Err(MseError::PadTooLong {
                        pad: PadField::D,
                        len: pad_len,
                    });
                }
                let next = IState::PadD {
                    remaining: usize::from(pad_len),
                    method,
                    send,
                    recv,
                };
                (Self::finish_pad_d(next), n)
            }
            IState::PadD {
                remaining,
                method,
                send,
                mut recv,
            } => {
                let n = remaining.min(input.len());
                recv.skip(n);
                let next = IState::PadD {
                    remaining: remaining - n,
                    method,
                    send,
                    recv,
                };
                (Self::finish_pad_d(next), n)
            }
            IState::Done { .. } | IState::Failed(_) | IState::Transit => (state, 0),
        })
    }

    /// PadD fully skipped: the handshake is over.
    fn finish_pad_d(state: IState) -> IState {
        match state {
            IState::PadD {
                remaining: 0,
                method,
                send,
                recv,
            } => IState::Done {
                method,
                cipher: (method == CryptoMethod::Rc4).then_some(Cipher { send, recv }),
            },
            other => other,
        }
    }

    /// Append bytes to send to `out` (and forget them).
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.out);
    }

    /// Are there bytes waiting for `take_output`?
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Where the handshake stands.
    pub fn poll(&self) -> Progress {
        match &self.state {
            IState::NeedSecret { .. } => Progress::NeedSecret,
            IState::Done { .. } => Progress::Done,
            IState::Failed(e) => Progress::Failed(e.clone()),
            _ => Progress::NeedInput,
        }
    }

    /// The pending Diffie-Hellman computation, handed out once.
    pub fn take_secret_job(&mut self) -> Option<SecretJob> {
        match &mut self.state {
            IState::NeedSecret {
                peer_public,
                job_taken,
            } if !*job_taken => {
                *job_taken = true;
                Some(SecretJob {
                    keypair: self.keypair.clone(),
                    peer_public: *peer_public,
                })
            }
            _ => None,
        }
    }

    /// Compute the pending secret on this thread (see the crate docs for
    /// its cost) and continue.
    pub fn compute_secret_inline(&mut self) -> Result<(), MseError> {
        let IState::NeedSecret { peer_public, .. } = &self.state else {
            return Err(MseError::UnexpectedSecret);
        };
        let job = SecretJob {
            keypair: self.keypair.clone(),
            peer_public: *peer_public,
        };
        self.set_secret(job.compute())
    }

    /// Supply the secret computed by this handshake's [`SecretJob`]; queues
    /// step 3 (with IA). Then call `receive` again with any held bytes.
    pub fn set_secret(&mut self, secret: SharedSecret) -> Result<(), MseError> {
        match &self.state {
            IState::NeedSecret { peer_public, .. }
                if *peer_public == secret.peer_public
                    && secret.our_public == self.keypair.public =>
            {
                let s = secret.s;
                let req1 = sha1(&[b"req1", &s]);
                let req3 = sha1(&[b"req3", &s]);
                self.out.extend_from_slice(&req1);
                self.out
                    .extend_from_slice(&xor20(&req2_hash(&self.info_hash), &req3));
                let mut send = Rc4Stream::new(b"keyA", &s, &self.info_hash);
                let mut recv = Rc4Stream::new(b"keyB", &s, &self.info_hash);

                let start = self.out.len();
                self.out.extend_from_slice(&VC);
                self.out
                    .extend_from_slice(&self.config.policy.bits().to_be_bytes());
                let len_pos = self.out.len();
                self.out.extend_from_slice(&[0, 0]);
                let pad_len = self.config.padding.append(&mut self.out);
                self.out[len_pos..len_pos + 2].copy_from_slice(&pad_len.to_be_bytes());
                // Checked in `new`: IA fits in u16.
                let ia_len = u16::try_from(self.ia.len()).unwrap_or(u16::MAX);
                self.out.extend_from_slice(&ia_len.to_be_bytes());
                self.out.append(&mut self.ia);
                send.apply(&mut self.out[start..]);

                // B encrypts VC (zeros) first, so the pattern is simply the
                // first 8 bytes of its keystream; computing it also moves
                // our receive stream past the VC we are about to find.
                let mut pattern = VC;
                recv.apply(&mut pattern);
                self.state = IState::SyncVc {
                    scanner: Scanner::new(pattern, VC_SYNC_WINDOW),
                    send,
                    recv,
                };
                Ok(())
            }
            _ => Err(MseError::UnexpectedSecret),
        }
    }

    /// The result, once [`Progress::Done`]; `None` before.
    pub fn finish(self) -> Option<Established> {
        match self.state {
            IState::Done { method, cipher } => Some(Established {
                method,
                info_hash: self.info_hash,
                initial_payload: Vec::new(),
                cipher,
                unsent: self.out,
            }),
            _ => None,
        }
    }
}

// ------------------------------------------------------------- responder

/// Streams and choices fixed once SKEY is known.
struct Keyed {
    info_hash: [u8; 20],
    method: CryptoMethod,
    send: Rc4Stream,
    recv: Rc4Stream,
}

enum RState {
    /// Collecting Ya.
    PeerKey(Fixed<DH_KEY_LEN>),
    /// Ya received and valid, Yb queued; waiting for S.
    NeedSecret {
        peer_public: [u8; DH_KEY_LEN],
        job_taken: bool,
    },
    /// Looking for HASH('req1', S) after PadA.
    SyncReq1 {
        scanner: Scanner<20>,
        secret: [u8; DH_KEY_LEN],
    },
    /// Reading the obfuscated SKEY hash, VC, crypto_provide, len(PadC).
    Header {
        acc: Fixed<34>,
        secret: [u8; DH_KEY_LEN],
    },
    /// Skipping PadC.
    PadC {
        remaining: usize,
        keyed: Keyed,
    },
    /// Reading len(IA).
    IaLen {
        acc: Fixed<2>,
        keyed: Keyed,
    },
    /// Reading IA.
    Ia {
        buf: Vec<u8>,
        len: usize,
        keyed: Keyed,
    },
    Done {
        info_hash: [u8; 20],
        method: CryptoMethod,
        ia: Vec<u8>,
        cipher: Option<Cipher>,
    },
    Failed(MseError),
    /// Only while a transition is computed.
    Transit,
}

/// The incoming side (B) of an MSE handshake. Create it once
/// [`classify_incoming`] says [`Incoming::Encrypted`], and feed it the
/// connection's bytes from the first one.
pub struct Responder {
    keypair: KeyPair,
    config: ResponderConfig,
    out: Vec<u8>,
    state: RState,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("progress", &self.poll())
            .field("pending_output", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// A responder waiting for Ya. Nothing is sent until Ya arrives, as
    /// libtorrent and Transmission do.
    pub fn new(keypair: KeyPair, config: ResponderConfig) -> Result<Responder, MseError> {
        config.padding.validate()?;
        Ok(Responder {
            keypair,
            config,
            out: Vec::new(),
            state: RState::PeerKey(Fixed::new()),
        })
    }

    /// Largest number of bytes a valid initiator can send after Ya before
    /// it sees our step 4: PadA, the two hashes, the fixed fields, PadC,
    /// len(IA) and IA.
    fn max_backlog(&self) -> usize {
        REQ1_SYNC_WINDOW
            + 20
            + 14
            + usize::from(MAX_PAD_LEN)
            + 2
            + usize::from(self.config.max_initial_payload)
    }

    /// Feed bytes received from the peer; returns how many were consumed.
    /// `torrents` resolves SKEY when the obfuscated info-hash arrives.
    /// Never consumes past the end of IA (a valid initiator sends nothing
    /// more before our step 4). Consumes nothing while the secret is
    /// pending or after completion.
    pub fn receive<L: SkeyLookup + ?Sized>(
        &mut self,
        input: &[u8],
        torrents: &L,
    ) -> Result<usize, MseError> {
        if let RState::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let mut used = 0;
        while used < input.len() {
            let state = std::mem::replace(&mut self.state, RState::Transit);
            match self.step(state, &input[used..], torrents) {
                Ok((next, n)) => {
                    self.state = next;
                    if n == 0 {
                        break;
                    }
                    used += n;
                }
                Err(e) => {
                    self.state = RState::Failed(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(used)
    }

    fn step<L: SkeyLookup + ?Sized>(
        &mut self,
        state: RState,
        input: &[u8],
        torrents: &L,
    ) -> Result<(RState, usize), MseError> {
        Ok(match state {
            RState::PeerKey(mut acc) => {
                let n = acc.fill(input);
                if !acc.full() {
                    return Ok((RState::PeerKey(acc), n));
                }
                parse_public(&acc.buf)?;
                self.out.extend_from_slice(&self.keypair.public);
                self.config.padding.append(&mut self.out);
                let next = RState::NeedSecret {
                    peer_public: acc.buf,
                    job_taken: false,
                };
                (next, n)
            }
            RState::NeedSecret { .. } => {
                if input.len() > self.max_backlog() {
                    return Err(MseError::UnexpectedData { len: input.len() });
                }
                (state, 0)
            }
            RState::SyncReq1 {
                mut scanner,
                secret,
            } => match scanner.feed(input) {
                Ok(Scan::Found(n)) => (
                    RState::Header {
                        acc: Fixed::new(),
                        secret,
                    },
                    n,
                ),
                Ok(Scan::More(n)) => (RState::SyncReq1 { scanner, secret }, n),
                Err(()) => return Err(MseError::SyncHashNotFound),
            },
            RState::Header { mut acc, secret } => {
                let n = acc.fill(input);
                if !acc.full() {
                    return Ok((RState::Header { acc, secret }, n));
                }
                let (keyed, pad_len) = self.parse_header(&acc.buf, &secret, torrents)?;
                let next = RState::PadC {
                    remaining: usize::from(pad_len),
                    keyed,
                };
                (Self::after_pad_c(next), n)
            }
            RState::PadC {
                remaining,
                mut keyed,
            } => {
                let n = remaining.min(input.len());
                keyed.recv.skip(n);
                let next = RState::PadC {
                    remaining: remaining - n,
                    keyed,
                };
                (Self::after_pad_c(next), n)
            }
            RState::IaLen { mut acc, mut keyed } => {
                let n = acc.fill(input);
                if !acc.full() {
                    return Ok((RState::IaLen { acc, keyed }, n));
                }
                let mut field = acc.buf;
                keyed.recv.apply(&mut field);
                let len = u16::from_be_bytes(field);
                let max = self.config.max_initial_payload;
                if len > max {
                    return Err(MseError::InitialPayloadTooLong { len, max });
                }
                let next = RState::Ia {
                    buf: Vec::with_capacity(usize::from(len)),
                    len: usize::from(len),
                    keyed,
                };
                (self.after_ia(next), n)
            }
            RState::Ia {
                mut buf,
                len,
                mut keyed,
            } => {
                let n = (len - buf.len()).min(input.len());
                let start = buf.len();
                buf.extend_from_slice(&input[..n]);
                keyed.recv.apply(&mut buf[start..]);
                (self.after_ia(RState::Ia { buf, len, keyed }), n)
            }
            RState::Done { .. } | RState::Failed(_) | RState::Transit => (state, 0),
        })
    }

    /// Check the 34 bytes after HASH('req1', S) and key the streams.
    fn parse_header<L: SkeyLookup + ?Sized>(
        &self,
        header: &[u8; 34],
        secret: &[u8; DH_KEY_LEN],
        torrents: &L,
    ) -> Result<(Keyed, u16), MseError> {
        let mut obfuscated = [0u8; 20];
        obfuscated.copy_from_slice(&header[..20]);
        let req2 = xor20(&obfuscated, &sha1(&[b"req3", secret]));
        // Re-checked so that a sloppy lookup cannot key us with the wrong
        // torrent.
        let info_hash = torrents
            .lookup(&req2)
            .filter(|ih| req2_hash(ih) == req2)
            .ok_or(MseError::UnknownInfoHash)?;
        let mut recv = Rc4Stream::new(b"keyA", secret, &info_hash);
        let send = Rc4Stream::new(b"keyB", secret, &info_hash);
        let mut fields = [0u8; 14];
        fields.copy_from_slice(&header[20..]);
        recv.apply(&mut fields);
        if fields[..8] != VC {
            return Err(MseError::BadVerificationConstant);
        }
        let provided = u32::from_be_bytes([fields[8], fields[9], fields[10], fields[11]]);
        let method = self
            .config
            .policy
            .select(provided)
            .ok_or(MseError::NoCommonMethod {
                provided,
                allowed: self.config.policy.bits(),
            })?;
        let pad_len = u16::from_be_bytes([fields[12], fields[13]]);
        if pad_len > MAX_PAD_LEN {
            return Err(MseError::PadTooLong {
                pad: PadField::C,
                len: pad_len,
            });
        }
        Ok((
            Keyed {
                info_hash,
                method,
                send,
                recv,
            },
            pad_len,
        ))
    }

    fn after_pad_c(state: RState) -> RState {
        match state {
            RState::PadC {
                remaining: 0,
                keyed,
            } => RState::IaLen {
                acc: Fixed::new(),
                keyed,
            },
            other => other,
        }
    }

    /// IA complete: queue step 4 and finish.
    fn after_ia(&mut self, state: RState) -> RState {
        match state {
            RState::Ia { buf, len, keyed } if buf.len() == len => {
                let Keyed {
                    info_hash,
                    method,
                    mut send,
                    recv,
                } = keyed;
                let start = self.out.len();
                self.out.extend_from_slice(&VC);
                self.out.extend_from_slice(&method.bit().to_be_bytes());
                let len_pos = self.out.len();
                self.out.extend_from_slice(&[0, 0]);
                let pad_len = self.config.padding.append(&mut self.out);
                self.out[len_pos..len_pos + 2].copy_from_slice(&pad_len.to_be_bytes());
                send.apply(&mut self.out[start..]);
                RState::Done {
                    info_hash,
                    method,
                    ia: buf,
                    cipher: (method == CryptoMethod::Rc4).then_some(Cipher { send, recv }),
                }
            }
            other => other,
        }
    }

    /// Append bytes to send to `out` (and forget them).
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.out);
    }

    /// Are there bytes waiting for `take_output`?
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Where the handshake stands.
    pub fn poll(&self) -> Progress {
        match &self.state {
            RState::NeedSecret { .. } => Progress::NeedSecret,
            RState::Done { .. } => Progress::Done,
            RState::Failed(e) => Progress::Failed(e.clone()),
            _ => Progress::NeedInput,
        }
    }

    /// The pending Diffie-Hellman computation, handed out once.
    pub fn take_secret_job(&mut self) -> Option<SecretJob> {
        match &mut self.state {
            RState::NeedSecret {
                peer_public,
                job_taken,
            } if !*job_taken => {
                *job_taken = true;
                Some(SecretJob {
                    keypair: self.keypair.clone(),
                    peer_public: *peer_public,
                })
            }
            _ => None,
        }
    }

    /// Compute the pending secret on this thread and continue.
    pub fn compute_secret_inline(&mut self) -> Result<(), MseError> {
        let RState::NeedSecret { peer_public, .. } = &self.state else {
            return Err(MseError::UnexpectedSecret);
        };
        let job = SecretJob {
            keypair: self.keypair.clone(),
            peer_public: *peer_public,
        };
        self.set_secret(job.compute())
    }

    /// Supply the secret computed by this handshake's [`SecretJob`]. Then
    /// call `receive` again with any held bytes.
    pub fn set_secret(&mut self, secret: SharedSecret) -> Result<(), MseError> {
        match &self.state {
            RState::NeedSecret { peer_public, .. }
                if *peer_public == secret.peer_public
                    && secret.our_public == self.keypair.public =>
            {
                let req1 = sha1(&[b"req1", &secret.s]);
                self.state = RState::SyncReq1 {
                    scanner: Scanner::new(req1, REQ1_SYNC_WINDOW),
                    secret: secret.s,
                };
                Ok(())
            }
            _ => Err(MseError::UnexpectedSecret),
        }
    }

    /// The result, once [`Progress::Done`]; `None` before.
    pub fn finish(self) -> Option<Established> {
        match self.state {
            RState::Done {
                info_hash,
                method,
                ia,
                cipher,
            } => Some(Established {
                method,
                info_hash,
                initial_payload: ia,
                cipher,
                unsent: self.out,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prime_bytes() -> [u8; 96] {
        let mut p = [0u8; 96];
        p.copy_from_slice(PRIME.as_ref().to_be_bytes().as_slice());
        p
    }

    #[test]
    fn prime_matches_spec() {
        let p = prime_bytes();
        assert_eq!(
            &p[..12],
            &[
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc9, 0x0f, 0xda, 0xa2
            ]
        );
        assert_eq!(&p[88..], &[0, 0, 0, 0, 0, 0x09, 0x05, 0x63]);
    }

    #[test]
    fn offloadable_types_are_send() {
        fn send<T: Send + 'static>() {}
        send::<SecretJob>();
        send::<SharedSecret>();
        send::<KeyPair>();
        send::<Initiator>();
        send::<Responder>();
        send::<Cipher>();
    }

    #[test]
    fn dh_agrees() {
        let a = KeyPair::generate();
        let b = KeyPair::generate();
        let sa = compute_shared_secret(&a, b.public_key()).unwrap();
        let sb = compute_shared_secret(&b, a.public_key()).unwrap();
        assert_eq!(sa, sb);
        // Small known case: x = 1 gives Y = 2.
        let one = KeyPair::from_private({
            let mut k = [0u8; 20];
            k[19] = 1;
            k
        })
        .unwrap();
        assert_eq!(one.public_key()[95], 2);
        assert!(one.public_key()[..95].iter().all(|&b| b == 0));
        assert!(KeyPair::from_private([0; 20]).is_err());
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Known answers computed independently with Python's `pow` and an RC4
    /// written from the algorithm's description.
    #[test]
    fn known_answers() {
        let mut xa = [0u8; 20];
        for (i, b) in xa.iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        let a = KeyPair::from_private(xa).unwrap();
        assert_eq!(
            a.public_key().to_vec(),
            unhex(
                "96e112dab29e8c5272accb9b17b26887ce54a144a4e3b697c7d159b7a817e556b0918db2b4c658e02a87f7e5fb14b18a553e084cbf3dad2d30f16596ccb982d406258c61b30c5c1dae2ddc60bdbd48d79896312aad63238c39e1a633821eb693"
            )
        );
        let b = KeyPair::from_private([0xff; 20]).unwrap();
        let s = compute_shared_secret(&a, b.public_key()).unwrap();
        assert_eq!(
            s.to_vec(),
            unhex(
                "3adb0afff0af5a57448d2c9942ba132cd670d27879b5bf7745c8c4fd2ce1bc68e599e1c7ae211b44220a1ce7c6da8dcef2acd5516b5358089caae45e14b3626c7c824c214a4b4bb0b90f4973d99a368cd092d23c1c46fe2f70f0cc81fe510f31"
            )
        );
        assert_eq!(
            sha1(&[b"req1", &s]).to_vec(),
            unhex("9d35a05cdc83a373514b8394ab8103c5ce86c021")
        );
        let mut ks = [0u8; 8];
        Rc4Stream::new(b"keyA", &s, &[7; 20]).apply(&mut ks);
        assert_eq!(ks.to_vec(), unhex("35c6306f54679074"));
    }

    #[test]
    fn public_key_range() {
        let mut k = [0u8; 96];
        assert_eq!(parse_public(&k), Err(MseError::InvalidPublicKey));
        k[95] = 1;
        assert_eq!(parse_public(&k), Err(MseError::InvalidPublicKey));
        k[95] = 2;
        assert!(parse_public(&k).is_ok());
        let mut p = prime_bytes();
        assert_eq!(parse_public(&p), Err(MseError::InvalidPublicKey));
        p[95] -= 1; // P-1
        assert_eq!(parse_public(&p), Err(MseError::InvalidPublicKey));
        p[95] -= 1; // P-2
        assert!(parse_public(&p).is_ok());
        assert_eq!(parse_public(&[0xff; 96]), Err(MseError::InvalidPublicKey));
    }

    /// Feed `stream` to a scanner in pieces of `chunk` and report where the
    /// pattern ended, or None when the window ran out.
    fn scan_all<const N: usize>(
        pattern: [u8; N],
        limit: usize,
        stream: &[u8],
        chunk: usize,
    ) -> Option<usize> {
        let mut sc = Scanner::new(pattern, limit);
        let mut pos = 0;
        while pos < stream.len() {
            let end = (pos + chunk).min(stream.len());
            match sc.feed(&stream[pos..end]) {
                Ok(Scan::Found(n)) => return Some(pos + n),
                Ok(Scan::More(n)) => {
                    assert_eq!(n, end - pos);
                    pos += n
                }
                Err(()) => return None,
            }
        }
        None
    }

    #[test]
    fn scanner_finds_pattern_across_chunks() {
        let pat = [9u8, 8, 7, 6, 5];
        for at in [0usize, 1, 3, 10, 95] {
            let mut s = vec![1u8; 100];
            s[at..at + 5].copy_from_slice(&pat);
            for chunk in 1..12 {
                assert_eq!(
                    scan_all(pat, 100, &s, chunk),
                    Some(at + 5),
                    "at {at} chunk {chunk}"
                );
            }
        }
        // Overlapping prefix: 9 9 8 7 6 5
        let s = [9u8, 9, 8, 7, 6, 5, 0];
        for chunk in 1..8 {
            assert_eq!(scan_all(pat, 100, &s, chunk), Some(6));
        }
    }

    #[test]
    fn scanner_respects_limit() {
        let pat = [9u8, 8, 7];
        let mut s = vec![0u8; 50];
        s[10..13].copy_from_slice(&pat);
        assert_eq!(scan_all(pat, 13, &s, 4), Some(13));
        assert_eq!(scan_all(pat, 12, &s, 4), None);
        assert_eq!(scan_all(pat, 12, &s, 1), None);
    }

    #[test]
    fn classify() {
        assert_eq!(classify_incoming(b""), Incoming::Undecided);
        assert_eq!(classify_incoming(b"\x13Bit"), Incoming::Undecided);
        assert_eq!(
            classify_incoming(b"\x13BitTorrent protocol"),
            Incoming::Plaintext
        );
        assert_eq!(
            classify_incoming(b"\x13BitTorrent protocolXYZ"),
            Incoming::Plaintext
        );
        assert_eq!(classify_incoming(b"\x12"), Incoming::Encrypted);
        assert_eq!(
            classify_incoming(b"\x13BitTorrent protocoL"),
            Incoming::Encrypted
        );
        assert!(looks_like_plaintext_handshake(
            b"\x13BitTorrent protocol\0\0"
        ));
        assert!(!looks_like_plaintext_handshake(b"\x13BitTorrent"));
    }

    #[test]
    fn policy_select() {
        use CryptoMethod::*;
        assert_eq!(Policy::PreferRc4.select(3), Some(Rc4));
        assert_eq!(Policy::PreferPlaintext.select(3), Some(Plaintext));
        assert_eq!(Policy::PreferRc4.select(1), Some(Plaintext));
        assert_eq!(Policy::Rc4Only.select(1), None);
        assert_eq!(Policy::PlaintextOnly.select(2), None);
        assert_eq!(Policy::PlaintextOnly.select(0xffff_ff01), Some(Plaintext));
        assert_eq!(Policy::PreferRc4.select(0xffff_fffc), None);
    }

    // ---- forged streams, for refusal cases the real machines never produce

    fn kp(n: u8) -> KeyPair {
        let mut k = [0x55u8; 20];
        k[0] = n;
        KeyPair::from_private(k).unwrap()
    }

    const IH: [u8; 20] = [7; 20];

    /// A hand-built step 3 from `a` to a responder whose public key is
    /// `b_public`.
    fn forge_step3(
        a: &KeyPair,
        b_public: &[u8; 96],
        vc: [u8; 8],
        provide: u32,
        pad_c: u16,
        ia_len: u16,
    ) -> Vec<u8> {
        let s = compute_shared_secret(a, b_public).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&sha1(&[b"req1", &s]));
        out.extend_from_slice(&xor20(&req2_hash(&IH), &sha1(&[b"req3", &s])));
        let mut enc = Rc4Stream::new(b"keyA", &s, &IH);
        let start = out.len();
        out.extend_from_slice(&vc);
        out.extend_from_slice(&provide.to_be_bytes());
        out.extend_from_slice(&pad_c.to_be_bytes());
        out.resize(out.len() + usize::from(pad_c.min(600)), 0xAA);
        out.extend_from_slice(&ia_len.to_be_bytes());
        enc.apply(&mut out[start..]);
        out
    }

    fn responder_with(cfg: ResponderConfig) -> (Responder, KeyPair, Vec<u8>) {
        let b = kp(2);
        let a = kp(1);
        let mut r = Responder::new(b.clone(), cfg).unwrap();
        let mut stream = a.public_key().to_vec();
        assert_eq!(r.receive(&stream, &vec![IH]).unwrap(), 96);
        r.compute_secret_inline().unwrap();
        stream.clear();
        (r, a, stream)
    }

    fn fixed_cfg() -> ResponderConfig {
        ResponderConfig {
            padding: Padding::Fixed(0),
            ..ResponderConfig::default()
        }
    }

    #[test]
    fn responder_rejects_bad_vc() {
        let (mut r, a, _) = responder_with(fixed_cfg());
        let s3 = forge_step3(
            &a,
            r.keypair.public_key(),
            [0, 0, 0, 0, 0, 0, 0, 1],
            3,
            0,
            0,
        );
        assert_eq!(
            r.receive(&s3, &vec![IH]),
            Err(MseError::BadVerificationConstant)
        );
        assert_eq!(
            r.poll(),
            Progress::Failed(MseError::BadVerificationConstant)
        );
        assert_eq!(
            r.receive(&[1], &vec![IH]),
            Err(MseError::BadVerificationConstant)
        );
    }

    #[test]
    fn responder_rejects_long_pad_c() {
        let (mut r, a, _) = responder_with(fixed_cfg());
        let s3 = forge_step3(&a, r.keypair.public_key(), VC, 3, 513, 0);
        assert_eq!(
            r.receive(&s3, &vec![IH]),
            Err(MseError::PadTooLong {
                pad: PadField::C,
                len: 513
            })
        );
    }

    #[test]
    fn responder_accepts_max_pad_c_and_rejects_unknown_bits_only() {
        let (mut r, a, _) = responder_with(fixed_cfg());
        let s3 = forge_step3(&a, r.keypair.public_key(), VC, 0xf0, 512, 0);
        assert_eq!(
            r.receive(&s3, &vec![IH]),
            Err(MseError::NoCommonMethod {
                provided: 0xf0,
                allowed: 3
            })
        );
        let (mut r, a, _) = responder_with(fixed_cfg());
        let s3 = forge_step3(&a, r.keypair.public_key(), VC, 0xf2, 512, 0);
        assert_eq!(r.receive(&s3, &vec![IH]), Ok(s3.len()));
        assert_eq!(r.poll(), Progress::Done);
    }

    #[test]
    fn responder_rejects_long_ia() {
        let cfg = ResponderConfig {
            max_initial_payload: 68,
            ..fixed_cfg()
        };
        let (mut r, a, _) = responder_with(cfg);
        let s3 = forge_step3(&a, r.keypair.public_key(), VC, 2, 0, 69);
        assert_eq!(
            r.receive(&s3, &vec![IH]),
            Err(MseError::InitialPayloadTooLong { len: 69, max: 68 })
        );
    }

    /// A hand-built step 4 from responder `b` for an initiator `a`.
    fn forge_step4(a_public: &[u8; 96], b: &KeyPair, select: u32, pad_d: u16) -> Vec<u8> {
        let s = compute_shared_secret(b, a_public).unwrap();
        let mut enc = Rc4Stream::new(b"keyB", &s, &IH);
        let mut out = VC.to_vec();
        out.extend_from_slice(&select.to_be_bytes());
        out.extend_from_slice(&pad_d.to_be_bytes());
        out.resize(out.len() + usize::from(pad_d.min(600)), 0);
        enc.apply(&mut out);
        out
    }

    fn initiator_after_yb(policy: Policy) -> (Initiator, KeyPair) {
        let a = kp(1);
        let b = kp(2);
        let cfg = InitiatorConfig {
            policy,
            padding: Padding::Fixed(0),
        };
        let mut i = Initiator::new(a, IH, b"hello", cfg).unwrap();
        assert_eq!(i.receive(b.public_key()).unwrap(), 96);
        i.compute_secret_inline().unwrap();
        (i, b)
    }

    #[test]
    fn initiator_rejects_bad_select() {
        for (policy, select) in [
            (Policy::PlaintextOnly, CRYPTO_RC4),
            (Policy::Rc4Only, CRYPTO_PLAINTEXT),
            (Policy::PreferRc4, 3),
            (Policy::PreferRc4, 0),
            (Policy::PreferRc4, 4),
        ] {
            let (mut i, b) = initiator_after_yb(policy);
            let s4 = forge_step4(i.keypair.public_key(), &b, select, 0);
            assert_eq!(
                i.receive(&s4),
                Err(MseError::BadCryptoSelect {
                    selected: select,
                    offered: policy.bits()
                }),
                "{policy:?} {select}"
            );
        }
    }

    #[test]
    fn initiator_rejects_long_pad_d() {
        let (mut i, b) = initiator_after_yb(Policy::PreferRc4);
        let s4 = forge_step4(i.keypair.public_key(), &b, CRYPTO_RC4, 513);
        assert_eq!(
            i.receive(&s4),
            Err(MseError::PadTooLong {
                pad: PadField::D,
                len: 513
            })
        );
        let (mut i, b) = initiator_after_yb(Policy::PreferRc4);
        let s4 = forge_step4(i.keypair.public_key(), &b, CRYPTO_RC4, 512);
        assert_eq!(i.receive(&s4), Ok(s4.len()));
        assert_eq!(i.poll(), Progress::Done);
    }

    #[test]
    fn initiator_rejects_pad_b_over_512() {
        // Delivered before step 3: refused at once.
        let a = kp(1);
        let b = kp(2);
        let mut i = Initiator::new(a.clone(), IH, b"", InitiatorConfig::default()).unwrap();
        let mut stream = b.public_key().to_vec();
        stream.extend_from_slice(&[0x33; 513]);
        assert_eq!(
            i.receive(&stream),
            Err(MseError::UnexpectedData { len: 513 })
        );
        let mut i = Initiator::new(a, IH, b"", InitiatorConfig::default()).unwrap();
        assert_eq!(i.receive(&stream[..96 + 512]), Ok(96));
        assert_eq!(i.poll(), Progress::NeedSecret);
        // Delivered after step 3 with a real VC behind 513 bytes of PadB.
        let (mut i, b) = initiator_after_yb(Policy::PreferRc4);
        let mut s = vec![0x33; 513];
        s.extend(forge_step4(i.keypair.public_key(), &b, CRYPTO_RC4, 0));
        assert_eq!(i.receive(&s), Err(MseError::VcNotFound));
        // 512 bytes of PadB is fine.
        let (mut i, b) = initiator_after_yb(Policy::PreferRc4);
        let mut s = vec![0x33; 512];
        s.extend(forge_step4(i.keypair.public_key(), &b, CRYPTO_RC4, 0));
        assert_eq!(i.receive(&s), Ok(s.len()));
    }

    #[test]
    fn set_secret_misuse_is_refused_without_poisoning() {
        let (mut i, _) = initiator_after_yb(Policy::PreferRc4);
        assert_eq!(i.compute_secret_inline(), Err(MseError::UnexpectedSecret));
        assert_eq!(i.poll(), Progress::NeedInput);
        // A secret from another exchange.
        let a = kp(1);
        let mut other = Initiator::new(a, IH, b"", InitiatorConfig::default()).unwrap();
        other.receive(kp(3).public_key()).unwrap();
        let job = other.take_secret_job().unwrap();
        assert!(other.take_secret_job().is_none());
        let mut i2 = Initiator::new(kp(1), IH, b"", InitiatorConfig::default()).unwrap();
        i2.receive(kp(4).public_key()).unwrap();
        assert_eq!(
            i2.set_secret(job.compute()),
            Err(MseError::UnexpectedSecret)
        );
        assert_eq!(i2.poll(), Progress::NeedSecret);
        assert_eq!(other.set_secret(job.compute()), Ok(()));
    }
}
