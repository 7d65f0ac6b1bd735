//! Interop with a real libtorrent (Python bindings) over loopback, both
//! directions, for each allowed_enc_level, with encryption forced on the
//! libtorrent side. `tests/interop/lt_mse_seed.py` runs the libtorrent seed.
//! These drive the sans-IO state machines of `reactor_bittorrent::mse` over
//! blocking sockets (every method pairing); `peer_interop.rs` runs the whole
//! peer with encryption forced.
//!
//! Skipped with a message when `python3 -c "import libtorrent"` fails,
//! unless `REACTOR_REQUIRE_INTEROP=1` (CI), which turns the skip into a failure.
//! Every socket operation has a timeout and the script exits by itself
//! after its deadline, so the test cannot hang.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use reactor_bittorrent::mse::*;

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const SCRIPT_DEADLINE_SECS: &str = "60";

/// Byte `i` of the seeded file; must match `content()` in the script.
fn content_byte(i: usize) -> u8 {
    ((i * 31 + 7) % 251) as u8
}

fn libtorrent_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import libtorrent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("REACTOR_REQUIRE_INTEROP").as_deref() != Ok("1"),
            "REACTOR_REQUIRE_INTEROP=1 but python3 cannot import libtorrent"
        );
        eprintln!(
            "skipping libtorrent interop: `python3 -c 'import libtorrent'` failed \
             (pip install libtorrent==2.1.1)"
        );
    }
    ok
}

/// A running `lt_peer.py`; killed (by its own handle) when dropped.
struct LtPeer {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    info_hash: [u8; 20],
    pieces: usize,
    piece_len: usize,
}

impl LtPeer {
    fn spawn(enc_level: u8, prefer_rc4: bool) -> LtPeer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/lt_mse_seed.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args(["--enc-level", &enc_level.to_string()])
            .args(["--deadline", SCRIPT_DEADLINE_SECS])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if prefer_rc4 {
            cmd.arg("--prefer-rc4");
        }
        let mut child = cmd.spawn().expect("spawn python3");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = ready_line(&rx);
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 5, "bad READY line {line:?}");
        let mut info_hash = [0u8; 20];
        for (i, b) in info_hash.iter_mut().enumerate() {
            *b = u8::from_str_radix(&f[2][2 * i..2 * i + 2], 16).expect("hex");
        }
        LtPeer {
            child,
            stdin,
            port: f[1].parse().expect("port"),
            info_hash,
            pieces: f[3].parse().expect("pieces"),
            piece_len: f[4].parse().expect("piece length"),
        }
    }

    fn connect_to(&mut self, port: u16) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "connect {port}").expect("write command");
        stdin.flush().expect("flush");
    }
}

fn ready_line(rx: &Receiver<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with("READY ") => return l,
            Ok(_) => continue,
            Err(e) => panic!("lt_peer.py did not become ready: {e}"),
        }
    }
}

impl Drop for LtPeer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn our_peer_id() -> [u8; 20] {
    let mut id = *b"-RX0001-000000000000";
    let r: u64 = rand::random();
    for (i, b) in id[8..].iter_mut().enumerate() {
        *b = b'0' + ((r >> (i * 4)) & 7) as u8;
    }
    id
}

fn bt_handshake(info_hash: &[u8; 20], peer_id: &[u8; 20]) -> Vec<u8> {
    // Reserved bits zero: no Fast extension, so a seed answers with a plain
    // bitfield rather than have_all, and no BEP 10 handshake to skip.
    let mut h = b"\x13BitTorrent protocol".to_vec();
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(info_hash);
    h.extend_from_slice(peer_id);
    h
}

fn set_timeouts(s: &TcpStream) {
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
    s.set_nodelay(true).expect("nodelay");
}

/// Read what is available into `pending`; `Err` on EOF or timeout.
fn read_more(s: &mut TcpStream, pending: &mut Vec<u8>) -> Result<(), String> {
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => Err("peer closed the connection".into()),
        Ok(n) => {
            pending.extend_from_slice(&buf[..n]);
            Ok(())
        }
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Hand a secret job to a worker thread, as the event loop would.
fn offload(job: SecretJob) -> SharedSecret {
    std::thread::spawn(move || job.compute())
        .join()
        .expect("worker")
}

fn drive_initiator(s: &mut TcpStream, mut m: Initiator) -> Result<(Established, Vec<u8>), String> {
    let mut pending = Vec::new();
    loop {
        let mut out = Vec::new();
        m.take_output(&mut out);
        s.write_all(&out).map_err(|e| format!("write: {e}"))?;
        match m.poll() {
            Progress::Done => break,
            Progress::NeedSecret => {
                let job = m.take_secret_job().expect("job");
                m.set_secret(offload(job)).map_err(|e| e.to_string())?;
            }
            Progress::Failed(e) => return Err(e.to_string()),
            Progress::NeedInput => {}
        }
        if m.poll() != Progress::NeedInput {
            continue;
        }
        if !pending.is_empty() {
            let n = m.receive(&pending).map_err(|e| e.to_string())?;
            pending.drain(..n);
            if n > 0 {
                continue;
            }
        }
        read_more(s, &mut pending)?;
    }
    Ok((m.finish().expect("done"), pending))
}

fn drive_responder(
    s: &mut TcpStream,
    mut m: Responder,
    torrents: &[[u8; 20]],
    mut pending: Vec<u8>,
) -> Result<(Established, Vec<u8>), String> {
    loop {
        let mut out = Vec::new();
        m.take_output(&mut out);
        s.write_all(&out).map_err(|e| format!("write: {e}"))?;
        match m.poll() {
            Progress::Done => break,
            Progress::NeedSecret => {
                let job = m.take_secret_job().expect("job");
                m.set_secret(offload(job)).map_err(|e| e.to_string())?;
            }
            Progress::Failed(e) => return Err(e.to_string()),
            Progress::NeedInput => {}
        }
        if m.poll() != Progress::NeedInput {
            continue;
        }
        if !pending.is_empty() {
            let n = m.receive(&pending, torrents).map_err(|e| e.to_string())?;
            pending.drain(..n);
            if n > 0 {
                continue;
            }
        }
        read_more(s, &mut pending)?;
    }
    Ok((m.finish().expect("done"), pending))
}

/// The payload stream after the handshake: decrypts what it reads and
/// encrypts what it writes when RC4 was selected.
struct Payload {
    s: TcpStream,
    cipher: Option<Cipher>,
    plain: Vec<u8>,
}

impl Payload {
    fn new(s: TcpStream, mut cipher: Option<Cipher>, mut leftover: Vec<u8>) -> Payload {
        if let Some(c) = cipher.as_mut() {
            c.decrypt(&mut leftover);
        }
        Payload {
            s,
            cipher,
            plain: leftover,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let mut b = bytes.to_vec();
        if let Some(c) = self.cipher.as_mut() {
            c.encrypt(&mut b);
        }
        self.s.write_all(&b).expect("write payload");
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.plain.len() < n {
            let mut fresh = Vec::new();
            read_more(&mut self.s, &mut fresh).expect("payload read");
            if let Some(c) = self.cipher.as_mut() {
                c.decrypt(&mut fresh);
            }
            self.plain.extend_from_slice(&fresh);
        }
        self.plain.drain(..n).collect()
    }

    /// Next non-keepalive message as (id, payload).
    fn message(&mut self) -> (u8, Vec<u8>) {
        loop {
            let len = self.take(4);
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            assert!(len <= 1 << 20, "message of {len} bytes");
            if len == 0 {
                continue;
            }
            let mut m = self.take(len);
            let id = m.remove(0);
            return (id, m);
        }
    }

    fn message_with_id(&mut self, want: u8) -> Vec<u8> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no message {want} in time");
            let (id, payload) = self.message();
            if id == want {
                return payload;
            }
        }
    }
}

/// After the MSE handshake: check libtorrent's bitfield, then download one
/// block and compare it with the file, which exercises both payload
/// directions through the negotiated method.
fn exchange_after_handshake(p: &mut Payload, lt: &LtPeer) {
    let bitfield = p.message_with_id(5);
    let mut expected = vec![0u8; lt.pieces.div_ceil(8)];
    for i in 0..lt.pieces {
        expected[i / 8] |= 0x80 >> (i % 8);
    }
    assert_eq!(bitfield, expected, "seed's bitfield");

    p.send(&[0, 0, 0, 1, 2]); // interested
    p.message_with_id(1); // unchoke
    let (piece, begin, len) = (1u32, 4096u32, 8192u32);
    let mut req = vec![0, 0, 0, 13, 6];
    for v in [piece, begin, len] {
        req.extend_from_slice(&v.to_be_bytes());
    }
    p.send(&req);
    let block = p.message_with_id(7);
    assert_eq!(&block[..4], &piece.to_be_bytes());
    assert_eq!(&block[4..8], &begin.to_be_bytes());
    let start = piece as usize * lt.piece_len + begin as usize;
    let want: Vec<u8> = (start..start + len as usize).map(content_byte).collect();
    assert!(block[8..] == want[..], "block content differs");
}

fn check_handshake(hs: &[u8], info_hash: &[u8; 20], ours: &[u8; 20]) {
    assert_eq!(hs.len(), 68);
    assert!(
        looks_like_plaintext_handshake(hs),
        "not a BitTorrent handshake"
    );
    assert_eq!(
        &hs[28..48],
        info_hash,
        "info-hash in libtorrent's handshake"
    );
    assert_ne!(&hs[48..68], ours, "libtorrent echoed our peer id");
}

/// We connect; libtorrent (allowed_enc_level `level`) answers.
fn rust_initiator(level: u8, prefer_rc4: bool, ours: Policy, expect: Option<CryptoMethod>) {
    if !libtorrent_available() {
        return;
    }
    let lt = LtPeer::spawn(level, prefer_rc4);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, lt.port));
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    set_timeouts(&s);
    let pid = our_peer_id();
    let cfg = InitiatorConfig {
        policy: ours,
        padding: Padding::default(),
    };
    let init = Initiator::new(
        KeyPair::generate(),
        lt.info_hash,
        &bt_handshake(&lt.info_hash, &pid),
        cfg,
    )
    .expect("initiator");
    let result = drive_initiator(&mut s, init);
    let Some(expect) = expect else {
        // libtorrent finds no common method and hangs up.
        let err = result.expect_err("handshake must fail");
        eprintln!("interop: rust initiator {ours:?} vs libtorrent level {level}: refused ({err})");
        return;
    };
    let (est, leftover) = result.expect("handshake with libtorrent");
    assert_eq!(est.method, expect);
    assert!(est.unsent.is_empty());
    let mut p = Payload::new(s, est.cipher, leftover);
    let hs = p.take(68);
    check_handshake(&hs, &lt.info_hash, &pid);
    exchange_after_handshake(&mut p, &lt);
    eprintln!(
        "interop: rust initiator {ours:?} vs libtorrent level {level} prefer_rc4={prefer_rc4}: {expect:?}, handshake + bitfield + block OK"
    );
}

/// libtorrent (allowed_enc_level `level`) connects to our responder.
fn rust_responder(level: u8, ours: Policy, expect: Option<CryptoMethod>) {
    if !libtorrent_available() {
        return;
    }
    let mut lt = LtPeer::spawn(level, false);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    lt.connect_to(listener.local_addr().expect("addr").port());
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "libtorrent did not connect");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    s.set_nonblocking(false).expect("blocking");
    set_timeouts(&s);

    let mut first = Vec::new();
    while classify_incoming(&first) == Incoming::Undecided {
        read_more(&mut s, &mut first).expect("first bytes");
    }
    assert_eq!(
        classify_incoming(&first),
        Incoming::Encrypted,
        "forced encryption"
    );

    let cfg = ResponderConfig {
        policy: ours,
        ..ResponderConfig::default()
    };
    let resp = Responder::new(KeyPair::generate(), cfg).expect("responder");
    let result = drive_responder(&mut s, resp, &[lt.info_hash], first);
    let Some(expect) = expect else {
        let err = result.expect_err("handshake must fail");
        assert!(err.contains("nothing in common"), "{err}");
        eprintln!("interop: libtorrent level {level} -> rust responder {ours:?}: refused ({err})");
        return;
    };
    let (mut est, leftover) = result.expect("handshake with libtorrent");
    assert_eq!(est.method, expect);
    let pid = our_peer_id();
    check_handshake(&est.initial_payload, &lt.info_hash, &pid);
    let unsent = std::mem::take(&mut est.unsent);
    s.write_all(&unsent).expect("write");
    let mut p = Payload::new(s, est.cipher, leftover);
    p.send(&bt_handshake(&lt.info_hash, &pid));
    exchange_after_handshake(&mut p, &lt);
    eprintln!(
        "interop: libtorrent level {level} -> rust responder {ours:?}: {expect:?}, IA handshake + bitfield + block OK"
    );
}

use CryptoMethod::{Plaintext, Rc4};

#[test]
fn initiator_vs_libtorrent_plaintext_level() {
    rust_initiator(1, false, Policy::PreferRc4, Some(Plaintext));
}

#[test]
fn initiator_vs_libtorrent_rc4_level() {
    rust_initiator(2, false, Policy::PreferRc4, Some(Rc4));
}

#[test]
fn initiator_vs_libtorrent_both_levels() {
    // libtorrent picks plaintext from both unless prefer_rc4 is set.
    rust_initiator(3, false, Policy::PreferRc4, Some(Plaintext));
    rust_initiator(3, true, Policy::PreferPlaintext, Some(Rc4));
    rust_initiator(3, false, Policy::Rc4Only, Some(Rc4));
    rust_initiator(3, true, Policy::PlaintextOnly, Some(Plaintext));
}

#[test]
fn initiator_vs_libtorrent_no_common_method() {
    rust_initiator(1, false, Policy::Rc4Only, None);
}

#[test]
fn libtorrent_vs_responder_plaintext_level() {
    rust_responder(1, Policy::PreferRc4, Some(Plaintext));
}

#[test]
fn libtorrent_vs_responder_rc4_level() {
    rust_responder(2, Policy::PreferPlaintext, Some(Rc4));
}

#[test]
fn libtorrent_vs_responder_both_levels() {
    rust_responder(3, Policy::PreferRc4, Some(Rc4));
    rust_responder(3, Policy::PreferPlaintext, Some(Plaintext));
}

#[test]
fn libtorrent_vs_responder_no_common_method() {
    rust_responder(2, Policy::PlaintextOnly, None);
}
