//! The `peer` example end to end on 127.0.0.1: making torrents, one leecher fed by
//! three seeders, multi-file torrents, hostile peers against a seeder while a good
//! transfer carries on, a lying seeder against the leecher, and the reconnect
//! backoff toward a peer that handshakes and drops.

use reactor_test_support as common;

mod support;

use support::FakeTracker;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Server, pseudo_random_bytes, run_bounded, run_loop};
use reactor_bittorrent::metainfo::Metainfo;
use reactor_bittorrent::torrent::{self, Mode, TorrentConfig};

#[global_allocator]
static ALLOC: common::alloc::Counting = common::alloc::Counting;

fn tmpdir(name: &str) -> PathBuf {
    common::tmpdir("peer", name)
}

fn make_torrent(data: &Path, piece_length: u32, out: &Path) -> Metainfo {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.arg("make-torrent")
        .arg("--data")
        .arg(data)
        .arg("--piece-length")
        .arg(piece_length.to_string())
        .arg("--out")
        .arg(out);
    let (code, err) = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(code, Some(0), "make-torrent failed: {err}");
    Metainfo::parse(&std::fs::read(out).unwrap()).expect("our torrent parses")
}

/// `data` written to `DIR/data.bin` and a torrent of it in `DIR/t.torrent`
/// (pieces of `piece_length`): their paths and the parsed torrent.
fn write_torrent(dir: &Path, data: &[u8], piece_length: u32) -> (PathBuf, PathBuf, Metainfo) {
    let src = dir.join("data.bin");
    std::fs::write(&src, data).unwrap();
    let torrent = dir.join("t.torrent");
    let meta = make_torrent(&src, piece_length, &torrent);
    (src, torrent, meta)
}

fn seeder(torrent: &Path, data: &Path, extra: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.arg("seed")
        .arg("--torrent")
        .arg(torrent)
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra);
    Server::start(cmd)
}

fn leech(torrent: &Path, out: &Path, peers: &[SocketAddr], extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.arg("leech")
        .arg("--torrent")
        .arg(torrent)
        .arg("--out")
        .arg(out)
        .args(extra);
    for p in peers {
        cmd.arg("--peer").arg(p.to_string());
    }
    cmd
}

/// For a leecher dialling this file's fake peers, which speak plaintext
/// BitTorrent only: an encrypted first dial would be refused and retried in
/// plaintext (that retry is tested in `an_encrypted_dial_is_retried_in_plaintext`).
const PLAINTEXT_TIMEOUT_20: [&str; 4] = ["--timeout", "20", "--encryption", "disabled"];

/// Piece bytes a seeder reported uploading in its "disconnected" log lines.
fn uploaded(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| {
            let i = l.find("disconnected (")?;
            l[i + 14..].split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

#[test]
fn leech_from_three_seeders_at_once() {
    let d = tmpdir("three");
    let data = pseudo_random_bytes(7, 32 * 1024 * 1024 + 12345);
    let (src, torrent, meta) = write_torrent(&d, &data, 64 * 1024);
    assert_eq!(meta.total_length, data.len() as u64);
    assert_eq!(meta.piece_count(), data.len().div_ceil(64 * 1024) as u32);
    let mut seeds: Vec<Server> = (0..3).map(|_| seeder(&torrent, &src, &[])).collect();
    // Bound and printing already; wait for the data check so all three serve.
    for s in &mut seeds {
        assert!(s.wait_stderr("seeding", Duration::from_secs(30)));
    }
    let addrs: Vec<SocketAddr> = seeds.iter().map(|s| s.addr).collect();
    let out = d.join("out.bin");
    let (code, err) = run_bounded(
        leech(&torrent, &out, &addrs, &["--timeout", "20"]),
        Duration::from_secs(40),
    );
    assert_eq!(code, Some(0), "leech failed: {err}");
    assert!(err.contains("download complete"), "{err}");
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    // Every seeder served part of it.
    for s in &mut seeds {
        assert!(
            s.wait_stderr("disconnected (", Duration::from_secs(5)),
            "seeder saw no peer"
        );
        let log = s.stderr_text();
        assert!(uploaded(&log) > 0, "a seeder uploaded nothing: {log}");
    }
    let total: u64 = seeds.iter_mut().map(|s| uploaded(&s.stderr_text())).sum();
    assert!(total >= data.len() as u64, "uploads add up to {total}");
    // SIGTERM: the seeder exits 0.
    for s in &mut seeds {
        s.signal(libc::SIGTERM);
        assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0));
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn multi_file_torrent_round_trip() {
    let d = tmpdir("multi");
    let src = d.join("album");
    std::fs::create_dir_all(src.join("disc 2")).unwrap();
    let files = [
        ("a.bin", pseudo_random_bytes(1, 100_000)),
        ("empty", Vec::new()),
        ("disc 2/b.bin", pseudo_random_bytes(2, 300_001)),
        ("z.txt", b"hello".to_vec()),
    ];
    for (name, bytes) in &files {
        std::fs::write(src.join(name), bytes).unwrap();
    }
    let torrent = d.join("t.torrent");
    let meta = make_torrent(&src, 32 * 1024, &torrent);
    assert!(meta.multi_file);
    assert_eq!(meta.name, "album");
    assert_eq!(meta.files.len(), 4);
    let seed = seeder(&torrent, &src, &[]);
    let out = d.join("dl").join("album");
    let (code, err) = run_bounded(
        leech(&torrent, &out, &[seed.addr], &["--timeout", "20"]),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "leech failed: {err}");
    for (name, bytes) in &files {
        assert!(
            std::fs::read(out.join(name)).unwrap() == *bytes,
            "{name} differs"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_arguments_and_bad_data_fail_with_a_message() {
    let d = tmpdir("bad");
    let src = d.join("data.bin");
    std::fs::write(&src, pseudo_random_bytes(3, 100_000)).unwrap();
    let torrent = d.join("t.torrent");
    make_torrent(&src, 16 * 1024, &torrent);
    // Seeding data that does not match the torrent.
    let other = d.join("other.bin");
    let mut wrong = pseudo_random_bytes(3, 100_000);
    wrong[50_000] ^= 1;
    std::fs::write(&other, &wrong).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.args(["seed", "--listen", "127.0.0.1:0", "--torrent"])
        .arg(&torrent)
        .arg("--data")
        .arg(&other);
    let (code, err) = run_bounded(cmd, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("1 of 7 pieces fail their hash check"), "{err}");
    // A torrent file that is not one.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.args(["leech", "--peer", "127.0.0.1:9", "--torrent"])
        .arg(&src)
        .arg("--out")
        .arg(d.join("x"));
    let (code, err) = run_bounded(cmd, Duration::from_secs(20));
    assert_eq!(code, Some(1));
    assert!(err.contains("invalid torrent"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

// ------------------------------------------------------------ raw-socket peers

fn handshake(info_hash: &[u8; 20], fast: bool) -> Vec<u8> {
    let mut h = vec![19u8];
    h.extend_from_slice(b"BitTorrent protocol");
    h.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, if fast { 4 } else { 0 }]);
    h.extend_from_slice(info_hash);
    h.extend_from_slice(b"-TEST00-000000000000");
    h
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    s
}

/// Reads until the peer closes; panics if it is still open after the read timeout.
fn expect_closed(mut s: TcpStream, what: &str) {
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{what}: connection not closed by the seeder: {e}"),
        }
    }
}

fn msg(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    m.push(id);
    m.extend_from_slice(payload);
    m
}

#[test]
fn hostile_peers_are_closed_while_a_good_transfer_carries_on() {
    let d = tmpdir("hostile");
    let data = pseudo_random_bytes(11, 3 * 1024 * 1024 + 777);
    let (src, torrent, meta) = write_torrent(&d, &data, 32 * 1024);
    let ih = meta.info_hash;
    // The plaintext rules: with encryption enabled, bytes that are not a
    // plaintext handshake start an MSE handshake instead
    // (`hostile_encrypted_handshakes_are_closed` covers that side).
    let mut seed = seeder(
        &torrent,
        &src,
        &[
            "--handshake-timeout",
            "1",
            "--idle-timeout",
            "3",
            "--encryption",
            "disabled",
        ],
    );
    let addr = seed.addr;

    // Start the good download first, then attack while it runs.
    let out = d.join("out.bin");
    let mut good = leech(&torrent, &out, &[addr], &["--timeout", "20"]);
    good.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut good = good.spawn().unwrap();

    let mut attackers = Vec::new();
    // Wrong protocol string.
    attackers.push(std::thread::spawn(move || {
        let mut s = connect(addr);
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        expect_closed(s, "http");
    }));
    // Wrong info-hash.
    attackers.push(std::thread::spawn(move || {
        let mut s = connect(addr);
        s.write_all(&handshake(&[9u8; 20], true)).unwrap();
        expect_closed(s, "info-hash");
    }));
    // Oversized length prefix after a good handshake.
    attackers.push(std::thread::spawn(move || {
        let mut s = connect(addr);
        s.write_all(&handshake(&ih, true)).unwrap();
        s.write_all(&0x7fff_fff0u32.to_be_bytes()).unwrap();
        s.write_all(&[7u8; 64]).unwrap();
        expect_closed(s, "oversized");
    }));
    // Request outside the torrent.
    attackers.push(std::thread::spawn(move || {
        let mut s = connect(addr);
        s.write_all(&handshake(&ih, true)).unwrap();
        s.write_all(&msg(2, &[])).unwrap();
        let mut req = Vec::new();
        for v in [5000u32, 0, 16384] {
            req.extend_from_slice(&v.to_be_bytes());
        }
        s.write_all(&msg(6, &req)).unwrap();
        expect_closed(s, "out-of-range request");
    }));
    // Bitfield of the wrong length.
    attackers.push(std::thread::spawn(move || {
        let mut s = connect(addr);
        s.write_all(&handshake(&ih, false)).unwrap();
        s.write_all(&msg(5, &[0xff; 3])).unwrap();
        expect_closed(s, "bitfield");
    }));
    // Trickle: the handshake one byte every 200 ms never completes in time.
    attackers.push(std::thread::spawn(move || {
        let mut s = connect(addr);
        let hs = handshake(&ih, true);
        let start = Instant::now();
        for b in &hs {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            if start.elapsed() > Duration::from_secs(6) {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "trickling peer was not cut off"
        );
        expect_closed(s, "trickle");
    }));
    // An oversized request (in range) is rejected (BEP 6), not served.
    attackers.push(std::thread::spawn(move || {
        let mut s = connect(addr);
        s.write_all(&handshake(&ih, true)).unwrap();
        s.write_all(&msg(2, &[])).unwrap();
        let mut req = Vec::new();
        for v in [0u32, 0, 32 * 1024] {
            req.extend_from_slice(&v.to_be_bytes());
        }
        // Wait for the unchoke so the request is judged on its size alone.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut sent = false;
        let end = Instant::now() + Duration::from_secs(8);
        while Instant::now() < end {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed instead of rejecting");
            got.extend_from_slice(&buf[..n]);
            if !sent && got.windows(5).any(|w| w == [0, 0, 0, 1, 1]) {
                s.write_all(&msg(6, &req)).unwrap();
                sent = true;
            }
            let reject = msg(16, &req);
            if got.windows(reject.len()).any(|w| w == reject.as_slice()) {
                return;
            }
        }
        panic!("no reject_request for an oversized request");
    }));
    for a in attackers {
        a.join().expect("attacker thread");
    }

    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = good.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < end, "good download did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    assert!(std::fs::read(&out).unwrap() == data, "file differs");

    for needle in [
        "bad handshake",
        "wrong info-hash",
        "exceeds the limit",
        "request outside the torrent",
        "bad bitfield",
        "no complete handshake",
        "rejecting oversized request",
    ] {
        assert!(
            seed.wait_stderr(needle, Duration::from_secs(5)),
            "no log line with {needle:?}: {}",
            seed.stderr_text()
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// The opening of a fake seeder: read the peer's handshake (false if it sends
/// none within 10 s), answer with ours, have-all and unchoke.
fn greet_as_seed(s: &mut TcpStream, info_hash: &[u8; 20]) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hs = [0u8; 68];
    if s.read_exact(&mut hs).is_err() {
        return false;
    }
    let _ = s.write_all(&handshake(info_hash, true));
    let _ = s.write_all(&msg(14, &[])); // have_all
    let _ = s.write_all(&msg(1, &[])); // unchoke
    true
}

/// The rest of a fake seeder's connection: answers every request (index, begin,
/// length) with the block `answer` gives, until the peer goes, a write fails or
/// `answer` has nothing.
fn serve_requests(s: &mut TcpStream, mut answer: impl FnMut(u32, u32, u32) -> Option<Vec<u8>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() < 4 + len {
                break;
            }
            if len == 13 && buf[4] == 6 {
                let field = |at: usize| {
                    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
                };
                let (index, begin, blen) = (field(5), field(9), field(13));
                let Some(block) = answer(index, begin, blen) else {
                    return;
                };
                let mut p = buf[5..13].to_vec();
                p.extend_from_slice(&block);
                if s.write_all(&msg(7, &p)).is_err() {
                    return;
                }
            }
            buf.drain(..4 + len);
        }
    }
}

/// A seeder that claims every piece and answers every request with zeros.
fn lying_seeder(info_hash: [u8; 20]) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        l.set_nonblocking(false).unwrap();
        let (mut s, _) = l.accept().unwrap();
        if !greet_as_seed(&mut s, &info_hash) {
            return;
        }
        serve_requests(&mut s, |_index, _begin, len| Some(vec![0u8; len as usize]));
    });
    (addr, t)
}

#[test]
fn bad_pieces_are_refetched_and_the_sender_dropped() {
    let d = tmpdir("liar");
    let data = pseudo_random_bytes(13, 2 * 1024 * 1024);
    let (src, torrent, meta) = write_torrent(&d, &data, 64 * 1024);
    let (liar, liar_thread) = lying_seeder(meta.info_hash);
    let seed = seeder(&torrent, &src, &[]);
    let out = d.join("out.bin");
    let (code, err) = run_bounded(
        leech(&torrent, &out, &[liar, seed.addr], &PLAINTEXT_TIMEOUT_20),
        Duration::from_secs(40),
    );
    assert_eq!(code, Some(0), "leech failed: {err}");
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    assert!(err.contains("failed its hash check"), "{err}");
    liar_thread.join().unwrap();
    let _ = std::fs::remove_dir_all(&d);
}

/// A peer that keeps us choked and pushes corrupted blocks nobody asked for (one
/// per piece, at the start of each) while an honest seeder serves the requests:
/// the pushed blocks are dropped, never stored, so no piece fails its hash check,
/// the download is byte-exact and the pusher is closed for breaking BEP 3.
/// (Stored, they made the first pieces fail and the download give up, and let a
/// liar mix itself into pieces that the blame logic had given to one peer alone.)
#[test]
fn unrequested_blocks_are_dropped_and_the_pusher_closed() {
    let d = tmpdir("pusher");
    let data = pseudo_random_bytes(31, 2 * 1024 * 1024);
    let (src, torrent, meta) = write_torrent(&d, &data, 64 * 1024);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let pusher = l.local_addr().unwrap();
    let ih = meta.info_hash;
    let pushed = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut hs = [0u8; 68];
        if s.read_exact(&mut hs).is_err() {
            return (0, false);
        }
        // A seed that keeps the leecher choked: it is never asked for anything,
        // so every block it sends is unrequested.
        let _ = s.write_all(&handshake(&ih, true));
        let _ = s.write_all(&msg(14, &[])); // have_all
        let mut n = 0;
        for piece in 0..8u32 {
            let mut p = piece.to_be_bytes().to_vec();
            p.extend_from_slice(&0u32.to_be_bytes());
            p.extend_from_slice(&[0xa5; 16 * 1024]);
            if s.write_all(&msg(7, &p)).is_err() {
                break;
            }
            n += 1;
        }
        // Then it answers nothing: does the leecher hang up on it?
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut sink = [0u8; 4096];
        let closed = loop {
            match s.read(&mut sink) {
                Ok(0) => break true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        (n, closed)
    });
    let seed = seeder(&torrent, &src, &[]);
    let out = d.join("out.bin");
    let (code, err) = run_bounded(
        leech(&torrent, &out, &[pusher, seed.addr], &PLAINTEXT_TIMEOUT_20),
        Duration::from_secs(40),
    );
    let (n, closed) = pushed.join().unwrap();
    assert_eq!(code, Some(0), "leech failed: {err}");
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    assert!(n >= 5, "the pusher pushed only {n} blocks: {err}");
    assert!(closed, "the pusher was never closed: {err}");
    assert!(
        !err.contains("failed its hash check"),
        "a pushed block was stored: {err}"
    );
    assert!(
        err.contains("blocks we never requested"),
        "no protocol error logged for the pusher: {err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// What a [`selective_liar`] saw.
#[derive(Debug, Default)]
struct LiarLog {
    /// Connections accepted.
    connections: AtomicUsize,
    /// Blocks sent with corrupted data.
    bad_blocks: AtomicUsize,
    /// Blocks sent with the right data.
    good_blocks: AtomicUsize,
}

/// A seeder with the real data that corrupts every block it sends of every other
/// piece it is asked for (the first, the third, ...: whichever pieces the picker
/// chose, some are corrupted), serves the others correctly, and waits `delay`
/// per block (slow, so an honest seeder's blocks end up in the same pieces, as
/// in end-game). It accepts connections one after another until `stop` is set.
fn selective_liar(
    info_hash: [u8; 20],
    data: Arc<Vec<u8>>,
    piece_length: usize,
    delay: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (SocketAddr, Arc<LiarLog>, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    let log = Arc::new(LiarLog::default());
    let seen = log.clone();
    let t = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(60);
        let mut asked: Vec<u32> = Vec::new();
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            let mut s = match l.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(_) => return,
            };
            seen.connections.fetch_add(1, Ordering::Relaxed);
            s.set_nonblocking(false).unwrap();
            if !greet_as_seed(&mut s, &info_hash) {
                continue;
            }
            serve_requests(&mut s, |index, begin, blen| {
                let at = index as usize * piece_length + begin as usize;
                let mut block = data.get(at..at + blen as usize)?.to_vec();
                let rank = asked.iter().position(|&p| p == index).unwrap_or_else(|| {
                    asked.push(index);
                    asked.len() - 1
                });
                if rank % 2 == 0 {
                    block[0] ^= 0xff;
                    seen.bad_blocks.fetch_add(1, Ordering::Relaxed);
                } else {
                    seen.good_blocks.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(delay);
                Some(block)
            });
        }
    });
    (addr, log, t)
}

#[test]
fn a_liar_is_banned_and_the_honest_seeder_it_shared_pieces_with_is_kept() {
    let d = tmpdir("blame");
    let data = Arc::new(pseudo_random_bytes(29, 8 * 1024 * 1024));
    let src = d.join("data.bin");
    std::fs::write(&src, &*data).unwrap();
    let torrent = d.join("t.torrent");
    // Big pieces (64 blocks): the liar's slow blocks and the honest seeder's
    // share pieces, so a failed piece has both among its senders.
    const PIECE: usize = 1024 * 1024;
    let meta = make_torrent(&src, PIECE as u32, &torrent);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (liar, liar_log, liar_thread) = selective_liar(
        meta.info_hash,
        data.clone(),
        PIECE,
        Duration::from_millis(2),
        stop.clone(),
    );
    let mut seed = seeder(&torrent, &src, &[]);
    let out = d.join("out.bin");
    let (code, err) = run_bounded(
        leech(&torrent, &out, &[liar, seed.addr], &PLAINTEXT_TIMEOUT_20),
        Duration::from_secs(40),
    );
    stop.store(true, Ordering::Relaxed);
    liar_thread.join().unwrap();
    assert_eq!(code, Some(0), "leech failed: {err}");
    assert!(std::fs::read(&out).unwrap() == *data, "file differs");
    // The scenario happened: the liar's corrupted blocks made pieces fail.
    assert!(
        liar_log.bad_blocks.load(Ordering::Relaxed) > 0,
        "the liar sent no bad block: {liar_log:?} {err}"
    );
    assert!(err.contains("failed its hash check"), "{err}");
    // The honest seeder is never blamed: one connection, closed only when the
    // leecher exited.
    assert!(
        !err.contains(&format!("banning peer {}", seed.addr)),
        "honest seeder banned: {err}"
    );
    assert!(
        seed.wait_stderr("disconnected (", Duration::from_secs(5)),
        "the seeder never saw the leecher leave"
    );
    std::thread::sleep(Duration::from_millis(200));
    let seed_log = seed.stderr_text();
    let connections = seed_log.matches("disconnected (").count();
    assert_eq!(
        connections, 1,
        "the honest seeder was disconnected and redialled: leecher log:\n{err}\nseeder log:\n{seed_log}"
    );
    // The liar is banned: closed, and never dialled again.
    assert!(
        err.contains(&format!("banning peer {liar}")),
        "liar not banned: {err}"
    );
    assert_eq!(
        err.matches(&format!("connecting to {liar}")).count(),
        1,
        "the banned liar was dialled again: {err}"
    );
    // Any other connection the liar saw is the seeder's: it learned the liar's
    // address from the leecher's peer exchange (the leecher was connected to it)
    // and dialled it itself, which is its right.
    let liar_connections = liar_log.connections.load(Ordering::Relaxed);
    let seeder_dialled = seed_log.contains(&format!("pex: learned peer {liar}"));
    assert!(
        liar_connections == 1 || (liar_connections == 2 && seeder_dialled),
        "the liar saw {liar_connections} connections: leecher log:\n{err}\nseeder log:\n{seed_log}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn peer_that_handshakes_and_drops_is_not_redialled_in_a_loop() {
    let d = tmpdir("drop");
    let src = d.join("data.bin");
    std::fs::write(&src, pseudo_random_bytes(5, 100_000)).unwrap();
    let torrent = d.join("t.torrent");
    let meta = make_torrent(&src, 16 * 1024, &torrent);
    let ih = meta.info_hash;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let count = attempts.clone();
    let watch = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(6);
        while Instant::now() < end {
            match l.accept() {
                Ok((mut s, _)) => {
                    count.fetch_add(1, Ordering::SeqCst);
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut hs = [0u8; 68];
                    let _ = s.read_exact(&mut hs);
                    let _ = s.write_all(&handshake(&ih, false));
                    // ...and drop it: a seed meeting a seed, as in the incident.
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    let out = d.join("out.bin");
    let start = Instant::now();
    let (code, err) = run_bounded(
        leech(
            &torrent,
            &out,
            &[addr],
            &["--timeout", "5", "--encryption", "disabled"],
        ),
        Duration::from_secs(20),
    );
    watch.join().unwrap();
    let n = attempts.load(Ordering::SeqCst);
    // Backoff 0 s after the first useless connection, 10 s after the second: two
    // attempts, never a tight loop.
    assert!((1..=2).contains(&n), "{n} connection attempts");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot finish"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn tracker_announces_and_peers_from_the_tracker() {
    let d = tmpdir("tracker");
    let data = pseudo_random_bytes(17, 1024 * 1024 + 5);
    let (src, torrent, _) = write_torrent(&d, &data, 32 * 1024);
    let tracker = FakeTracker::start();
    let mut seed = seeder(&torrent, &src, &["--tracker", &tracker.url]);
    assert!(
        tracker.wait_for(seed.addr.port(), "started", Duration::from_secs(20)),
        "seeder did not announce started"
    );
    // No --peer: the leecher learns the seeder from the tracker.
    let out = d.join("out.bin");
    let (code, err) = run_bounded(
        leech(
            &torrent,
            &out,
            &[],
            &[
                "--tracker",
                &tracker.url,
                "--listen",
                "127.0.0.1:0",
                "--timeout",
                "20",
            ],
        ),
        Duration::from_secs(40),
    );
    assert_eq!(code, Some(0), "leech failed: {err}");
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    let leech_port = tracker
        .seen
        .lock()
        .unwrap()
        .iter()
        .find(|(p, e)| *p != seed.addr.port() && e == "started")
        .map(|(p, _)| *p)
        .expect("leecher announced started");
    assert!(
        tracker.wait_for(leech_port, "stopped", Duration::from_secs(5)),
        "leecher did not announce stopped: {:?}",
        tracker.seen.lock().unwrap()
    );
    seed.signal(libc::SIGTERM);
    assert_eq!(seed.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        tracker.wait_for(seed.addr.port(), "stopped", Duration::from_secs(5)),
        "seeder did not announce stopped"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn seeds_that_meet_through_the_tracker_back_off() {
    let d = tmpdir("seeds");
    let src = d.join("data.bin");
    std::fs::write(&src, pseudo_random_bytes(19, 200_000)).unwrap();
    let torrent = d.join("t.torrent");
    make_torrent(&src, 16 * 1024, &torrent);
    // The tracker answers every 2 s with the other seed: the incident's setting.
    let tracker = FakeTracker::start();
    let mut a = seeder(&torrent, &src, &["--tracker", &tracker.url]);
    let mut b = seeder(&torrent, &src, &["--tracker", &tracker.url]);
    assert!(tracker.wait_for(a.addr.port(), "started", Duration::from_secs(20)));
    assert!(tracker.wait_for(b.addr.port(), "started", Duration::from_secs(20)));
    assert!(
        a.wait_stderr(
            "disconnected (0 piece bytes up, 0 down)",
            Duration::from_secs(10)
        ),
        "the seeds never met: {}",
        a.stderr_text()
    );
    std::thread::sleep(Duration::from_secs(5));
    for s in [&mut a, &mut b] {
        let log = s.stderr_text();
        let n = log
            .matches("disconnected (0 piece bytes up, 0 down)")
            .count();
        // Per direction: one connection, a redial after 0 s, then 10 s of backoff.
        assert!((1..=4).contains(&n), "{n} useless connections: {log}");
        assert!(log.contains("both sides are seeds"), "{log}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn loop_threads_do_not_allocate_per_message() {
    let d = tmpdir("alloc");
    let data = pseudo_random_bytes(23, 16 * 1024 * 1024);
    let (src, _torrent, meta) = write_torrent(&d, &data, 1024 * 1024);
    let blocks = data.len() / (16 * 1024);
    let m1 = meta.clone();
    let s1 = src.clone();
    let (addr, seed_loop) = run_loop(reactor::Config::default(), move |r| {
        common::alloc::track_this_thread();
        let mut cfg = TorrentConfig::default();
        cfg.listen = Some("127.0.0.1:0".parse().unwrap());
        let t = torrent::start(r, m1, Mode::Seed(s1), cfg).unwrap();
        let a = t.local_addr.unwrap();
        std::mem::forget(t); // lives as long as the loop (a few Rc cells)
        a
    });
    let out = d.join("out.bin");
    let (m2, o2) = (meta.clone(), out.clone());
    let leech = std::thread::spawn(move || {
        common::alloc::track_this_thread();
        let mut r = reactor::Reactor::new().unwrap();
        let mut cfg = TorrentConfig::default();
        cfg.peers = vec![addr];
        cfg.no_progress_timeout = Duration::from_secs(20);
        let t = torrent::start(&mut r, m2, Mode::Leech(o2), cfg).unwrap();
        r.run().unwrap();
        t.outcome()
    });
    let end = Instant::now() + Duration::from_secs(40);
    while !leech.is_finished() {
        assert!(Instant::now() < end, "in-process download did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    leech.join().unwrap().expect("download");
    seed_loop.stop();
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    let allocs = common::alloc::tracked();
    // 1024 blocks mean 1024 requests and 1024 piece messages through the two loops;
    // what allocates is per piece (16 of them) and per connection, not per message.
    println!("{allocs} allocations on the loop threads for {blocks} blocks");
    assert!(
        allocs < blocks as u64,
        "{allocs} allocations on the loop threads for {blocks} blocks"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_connected_peer_that_wants_nothing_is_closed() {
    let d = tmpdir("useless");
    let src = d.join("data.bin");
    std::fs::write(&src, pseudo_random_bytes(29, 50_000)).unwrap();
    let torrent = d.join("t.torrent");
    let meta = make_torrent(&src, 16 * 1024, &torrent);
    let mut seed = seeder(&torrent, &src, &["--idle-timeout", "2"]);
    let mut s = connect(seed.addr);
    s.write_all(&handshake(&meta.info_hash, true)).unwrap();
    s.write_all(&msg(15, &[])).unwrap(); // have_none, never interested
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // Keep-alives keep the connection "active" but carry no data.
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let closed = loop {
        if start.elapsed() > Duration::from_secs(10) {
            break false;
        }
        if s.write_all(&[0, 0, 0, 0]).is_err() {
            break true;
        }
        match s.read(&mut buf) {
            Ok(0) => break true,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            _ => {}
        }
    };
    assert!(closed, "a peer exchanging no data stayed connected");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "closed too early"
    );
    assert!(seed.wait_stderr("no piece data either way", Duration::from_secs(5)));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn one_upload_slot_serves_two_leechers_in_turn() {
    let d = tmpdir("slots");
    let data = pseudo_random_bytes(31, 2 * 1024 * 1024 + 3);
    let (src, torrent, _) = write_torrent(&d, &data, 64 * 1024);
    let mut seed = seeder(&torrent, &src, &["--upload-slots", "1"]);
    assert!(seed.wait_stderr("seeding", Duration::from_secs(30)));
    let outs: Vec<PathBuf> = (0..2).map(|i| d.join(format!("out{i}.bin"))).collect();
    let runs: Vec<_> = outs
        .iter()
        .map(|o| {
            let cmd = leech(&torrent, o, &[seed.addr], &["--timeout", "20"]);
            std::thread::spawn(move || run_bounded(cmd, Duration::from_secs(40)))
        })
        .collect();
    for r in runs {
        let (code, err) = r.join().unwrap();
        assert_eq!(code, Some(0), "leech failed: {err}");
    }
    for o in &outs {
        assert!(std::fs::read(o).unwrap() == data, "file differs");
    }
    // Each leecher got the whole file from the single slot, one after the other.
    let log = seed.stderr_text();
    let full = format!("disconnected ({} piece bytes up", data.len());
    assert_eq!(log.matches(&full).count(), 2, "{log}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_partial_download_is_resumed() {
    let d = tmpdir("resume");
    let data = pseudo_random_bytes(37, 1024 * 1024);
    let (src, torrent, _) = write_torrent(&d, &data, 64 * 1024);
    // The output already holds the right size: 12 good pieces, 4 damaged ones.
    let out = d.join("out.bin");
    let mut partial = data.clone();
    for p in [0usize, 5, 6, 15] {
        partial[p * 64 * 1024 + 100] ^= 0xff;
    }
    std::fs::write(&out, &partial).unwrap();
    let mut seed = seeder(&torrent, &src, &[]);
    let (code, err) = run_bounded(
        leech(&torrent, &out, &[seed.addr], &["--timeout", "20"]),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "leech failed: {err}");
    assert!(err.contains("12 of 16 pieces already present"), "{err}");
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    assert!(seed.wait_stderr("disconnected (", Duration::from_secs(5)));
    assert_eq!(
        uploaded(&seed.stderr_text()),
        4 * 64 * 1024,
        "only the damaged pieces"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn an_idle_peer_in_the_only_upload_slot_gives_it_up() {
    let d = tmpdir("hog");
    let data = pseudo_random_bytes(41, 1024 * 1024);
    let (src, torrent, meta) = write_torrent(&d, &data, 64 * 1024);
    let mut seed = seeder(
        &torrent,
        &src,
        &["--upload-slots", "1", "--request-timeout", "1"],
    );
    assert!(seed.wait_stderr("seeding", Duration::from_secs(30)));
    // Takes the slot (interested) and never requests, keeping the connection alive.
    let mut hog = connect(seed.addr);
    hog.write_all(&handshake(&meta.info_hash, true)).unwrap();
    hog.write_all(&msg(15, &[])).unwrap();
    hog.write_all(&msg(2, &[])).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(5).any(|w| w == [0, 0, 0, 1, 1]) {
        let n = hog.read(&mut buf).expect("unchoke for the hog");
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let keepalive = std::thread::spawn(move || {
        let mut choked = false;
        let mut seen = Vec::new();
        hog.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end && !choked {
            let _ = hog.write_all(&[0, 0, 0, 0]);
            if let Ok(n) = hog.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                choked = seen.windows(5).any(|w| w == [0, 0, 0, 1, 0]);
            }
        }
        choked
    });
    let out = d.join("out.bin");
    let (code, err) = run_bounded(
        leech(&torrent, &out, &[seed.addr], &["--timeout", "20"]),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "leech failed: {err}");
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    assert!(keepalive.join().unwrap(), "the idle peer was never choked");
    let _ = std::fs::remove_dir_all(&d);
}

// ------------------------------------------------------------------ discovery

/// Discovery flags for `port` (0: the OS picks; read it back with
/// [`discovery_port`]) with a short interval, so tests find peers in well under a
/// second and never share a port with another test or a real node.
fn discover_args(port: u16) -> Vec<String> {
    ["--discover", "--discover-port", &port.to_string()]
        .iter()
        .map(|s| s.to_string())
        .chain(["--discover-interval".into(), "0.2".into()])
        .collect()
}

/// The discovery port a node logged in its "announcing this torrent ... to
/// 127.255.255.255:PORT" line.
fn discovery_port(node: &mut Server) -> u16 {
    assert!(
        node.wait_stderr("announcing this torrent", Duration::from_secs(30)),
        "no discovery announcement line: {}",
        node.stderr_text()
    );
    let log = node.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains("announcing this torrent"))
        .unwrap();
    let tail = line
        .split("127.255.255.255:")
        .nth(1)
        .expect("broadcast address");
    tail.split_whitespace().next().unwrap().parse().unwrap()
}

/// Seconds from announcing to finding `peer`, from the leecher's log line.
fn time_to_find(log: &str, peer: SocketAddr) -> Option<f64> {
    let needle = format!("discovery: found peer {peer} for this torrent ");
    let line = log.lines().find(|l| l.contains(&needle))?;
    let rest = &line[line.find(&needle)? + needle.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_leecher_finds_a_seeder_by_discovery_alone() {
    let d = tmpdir("discover");
    let data = pseudo_random_bytes(43, 2 * 1024 * 1024 + 4321);
    let (src, torrent, _) = write_torrent(&d, &data, 64 * 1024);
    let mut seed = seeder(&torrent, &src, &args(&discover_args(0)));
    let port = discovery_port(&mut seed);
    // No --peer, no tracker, no --listen: only discovery.
    let mut extra = discover_args(port);
    extra.extend(["--timeout".into(), "20".into()]);
    let out = d.join("out.bin");
    let (code, err) = run_bounded(
        leech(&torrent, &out, &[], &args(&extra)),
        Duration::from_secs(40),
    );
    assert_eq!(code, Some(0), "leech failed: {err}");
    assert!(err.contains("download complete"), "{err}");
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    let found = time_to_find(&err, seed.addr)
        .unwrap_or_else(|| panic!("the leecher did not log finding {}: {err}", seed.addr));
    println!("leecher found the seeder {found:.3} s after it started announcing");
    // The seeder is who served it.
    assert!(seed.wait_stderr("disconnected (", Duration::from_secs(5)));
    assert_eq!(uploaded(&seed.stderr_text()), data.len() as u64);
    seed.signal(libc::SIGTERM);
    assert_eq!(seed.wait_exit(Duration::from_secs(10)), Some(0));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_seeder_of_another_torrent_on_the_discovery_port_is_ignored() {
    let d = tmpdir("discover-other");
    let data = pseudo_random_bytes(47, 1024 * 1024 + 17);
    let (src, torrent, _) = write_torrent(&d, &data, 32 * 1024);
    let other_src = d.join("other.bin");
    std::fs::write(&other_src, pseudo_random_bytes(53, 300_000)).unwrap();
    let other_torrent = d.join("other.torrent");
    make_torrent(&other_src, 32 * 1024, &other_torrent);

    // First only the other torrent's seeder announces on the port.
    let mut other = seeder(&other_torrent, &other_src, &args(&discover_args(0)));
    let port = discovery_port(&mut other);
    let out = d.join("out.bin");
    let mut extra = discover_args(port);
    extra.extend(["--timeout".into(), "20".into()]);
    let mut cmd = leech(&torrent, &out, &[], &args(&extra));
    // The engine's debug lines: every dial ("connecting to") and every ignored node.
    cmd.env("RUST_LOG", "info,reactor_bittorrent::torrent=debug");
    let mut leecher = Server::start(cmd);
    assert!(
        leecher.wait_stderr("discovery: ignoring node bt-seed-", Duration::from_secs(10)),
        "the leecher never heard the other seeder: {}",
        leecher.stderr_text()
    );
    // Five more announcements from it: a leecher that took it for a peer would
    // have dialled it by now.
    std::thread::sleep(Duration::from_secs(1));
    let dialled = format!("connecting to {}", other.addr);
    assert!(
        !leecher.stderr_text().contains(&dialled),
        "{}",
        leecher.stderr_text()
    );
    assert_eq!(leecher.child.try_wait().unwrap(), None, "leecher gave up");

    // Now the right seeder joins, and the leecher finishes from it.
    let mut seed = seeder(&torrent, &src, &args(&discover_args(port)));
    assert_eq!(
        leecher.wait_exit(Duration::from_secs(30)),
        Some(0),
        "leech failed: {}",
        leecher.stderr_text()
    );
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    let log = leecher.stderr_text();
    assert!(time_to_find(&log, seed.addr).is_some(), "{log}");
    assert!(time_to_find(&log, other.addr).is_none(), "{log}");
    assert!(!log.contains(&dialled), "{log}");
    // The other seeder never saw a connection: a dial would have been refused
    // with "wrong info-hash" (a WARN line), any handshake logs a disconnect.
    other.signal(libc::SIGTERM);
    assert_eq!(other.wait_exit(Duration::from_secs(10)), Some(0));
    let other_log = other.stderr_text();
    assert!(!other_log.contains("wrong info-hash"), "{other_log}");
    assert!(!other_log.contains("disconnected ("), "{other_log}");
    assert!(seed.wait_stderr("disconnected (", Duration::from_secs(5)));
    assert_eq!(uploaded(&seed.stderr_text()), data.len() as u64);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_discovery_flags_fail_with_a_message() {
    let d = tmpdir("discover-bad");
    let src = d.join("data.bin");
    std::fs::write(&src, pseudo_random_bytes(59, 50_000)).unwrap();
    let torrent = d.join("t.torrent");
    make_torrent(&src, 16 * 1024, &torrent);
    let run = |sub: &str, extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
        cmd.arg(sub).arg("--torrent").arg(&torrent);
        if sub == "seed" {
            cmd.arg("--data")
                .arg(&src)
                .args(["--listen", "127.0.0.1:0"]);
        } else {
            cmd.arg("--out").arg(d.join("out.bin"));
        }
        cmd.args(extra);
        let (code, err) = run_bounded(cmd, Duration::from_secs(20));
        assert!(!err.contains("panicked"), "{err}");
        (code, err)
    };
    for (sub, extra, code, needle) in [
        (
            "leech",
            &["--discover", "--discover-interval", "0"][..],
            1,
            "--discover-interval must be a number of seconds of at least 0.01, got 0",
        ),
        (
            "seed",
            &["--discover", "--discover-interval", "-0.5"],
            1,
            "--discover-interval must be a number of seconds of at least 0.01, got -0.5",
        ),
        (
            "seed",
            &["--discover", "--discover-interval", "inf"],
            1,
            "--discover-interval must be",
        ),
        (
            "leech",
            &["--discover", "--broadcast", "::1"],
            1,
            "--broadcast ::1 is not an IPv4 address",
        ),
        // Discovery settings without --discover are a usage error (clap: 2).
        ("leech", &["--discover-port", "7000"], 2, "--discover"),
        (
            "leech",
            &[],
            1,
            "nothing to download from: give --peer, --tracker, --listen or --discover",
        ),
    ] {
        let (c, err) = run(sub, extra);
        assert_eq!(c, Some(code), "{sub} {extra:?}: {err}");
        assert!(err.contains(needle), "{sub} {extra:?}: {err}");
        if code == 1 {
            // Our own errors: one line, last, and nothing was started before it.
            let last = err.trim().lines().last().unwrap_or("");
            assert!(last.starts_with("peer: ") && last.contains(needle), "{err}");
            assert!(!err.contains("announcing"), "{err}");
        }
    }
    // A port held by a socket that does not allow sharing: the bind error, once.
    let holder = std::net::UdpSocket::bind("127.255.255.255:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    for sub in ["seed", "leech"] {
        let (c, err) = run(sub, &["--discover", "--discover-port", &port]);
        assert_eq!(c, Some(1), "{sub}: {err}");
        let needle = format!("peer: discovery: bind 127.255.255.255:{port}: ");
        assert!(err.contains(&needle), "{sub}: {err}");
        assert!(err.contains("in use"), "{sub}: {err}");
        assert!(!err.contains("listening on"), "{err}");
    }
    drop(holder);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn an_encrypted_dial_is_retried_in_plaintext() {
    let d = tmpdir("mse-retry");
    let data = pseudo_random_bytes(23, 2 * 1024 * 1024 + 11);
    let (src, torrent, _) = write_torrent(&d, &data, 64 * 1024);
    // A plaintext-only seeder refuses the MSE handshake our leecher tries first.
    let mut seed = seeder(&torrent, &src, &["--encryption", "disabled"]);
    let out = d.join("out.bin");
    let (code, err) = run_bounded(
        leech(&torrent, &out, &[seed.addr], &["--timeout", "20"]),
        Duration::from_secs(40),
    );
    assert_eq!(code, Some(0), "leech failed: {err}");
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    assert!(
        err.contains("retrying in plaintext"),
        "no plaintext retry: {err}"
    );
    assert!(
        seed.wait_stderr(
            "encrypted (MSE) handshakes are refused",
            Duration::from_secs(5)
        ),
        "{}",
        seed.stderr_text()
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn forced_encryption_uses_rc4_and_refuses_plaintext() {
    let d = tmpdir("mse-forced");
    let data = pseudo_random_bytes(29, 3 * 1024 * 1024 + 5);
    let (src, torrent, _) = write_torrent(&d, &data, 256 * 1024);
    let mut seed = seeder(&torrent, &src, &["--encryption", "forced"]);
    let out = d.join("out.bin");
    let (code, err) = run_bounded(
        leech(
            &torrent,
            &out,
            &[seed.addr],
            &["--timeout", "20", "--encryption", "forced"],
        ),
        Duration::from_secs(40),
    );
    assert_eq!(code, Some(0), "leech failed: {err}");
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    assert!(err.contains("encrypted handshake done (RC4)"), "{err}");
    // A plaintext-only leecher gets nothing from a forced seeder.
    let out2 = d.join("out2.bin");
    let (code, err) = run_bounded(
        leech(
            &torrent,
            &out2,
            &[seed.addr],
            &["--timeout", "3", "--encryption", "disabled"],
        ),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        seed.wait_stderr("plaintext handshake refused", Duration::from_secs(5)),
        "{}",
        seed.stderr_text()
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// Sends `bytes` as the start of a connection and expects the seeder to close it
/// (by its own verdict or at its handshake timeout).
fn send_and_expect_closed(addr: SocketAddr, bytes: &[u8], what: &str) {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    expect_closed(s, what);
}

#[test]
fn hostile_encrypted_handshakes_are_closed() {
    let d = tmpdir("mse-hostile");
    let data = pseudo_random_bytes(31, 4 * 1024 * 1024);
    let (src, torrent, _) = write_torrent(&d, &data, 64 * 1024);
    let mut seed = seeder(&torrent, &src, &["--handshake-timeout", "1"]);
    let addr = seed.addr;
    let out = d.join("out.bin");
    let mut good = leech(&torrent, &out, &[addr], &["--timeout", "20"]);
    good.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut good = good.spawn().unwrap();
    // Public key 0: refused before any exponentiation.
    send_and_expect_closed(addr, &[0u8; 96], "public key 0");
    // A plausible key, then more than PadA's 512 bytes without HASH('req1', S).
    let mut junk = pseudo_random_bytes(5, 96 + 700);
    junk[0] = 0x12;
    send_and_expect_closed(addr, &junk, "no req1 hash");
    // Half a public key, then silence: closed at the handshake timeout.
    send_and_expect_closed(addr, &junk[..40], "stalled key");
    // Not BitTorrent at all (taken for an MSE attempt, which stalls).
    send_and_expect_closed(addr, b"GET / HTTP/1.1\r\n\r\n", "HTTP");
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = good.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < end, "good download did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    for needle in [
        "public key is out of range",
        "HASH('req1', S) not found",
        "no complete handshake",
    ] {
        assert!(
            seed.wait_stderr(needle, Duration::from_secs(5)),
            "no log line with {needle:?}: {}",
            seed.stderr_text()
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// `magnet:?xt=urn:btih:HEX` for `meta`.
fn magnet_of(meta: &Metainfo) -> String {
    let hex: String = meta.info_hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("magnet:?xt=urn:btih:{hex}&dn=test")
}

/// RFC 4648 base32 of a 20-byte info-hash (the other form of a btih).
fn base32(h: &[u8; 20]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u64, 0);
    for &b in h {
        acc = acc << 8 | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(A[((acc >> bits) & 31) as usize] as char);
        }
    }
    out
}

#[test]
fn a_magnet_link_fetches_the_metadata_then_the_data() {
    let d = tmpdir("magnet");
    // Several metadata pieces (16 KiB each): 3000 pieces of 16 KiB hash to 60 KB.
    let data = pseudo_random_bytes(37, 3000 * 16 * 1024 - 99);
    let (src, torrent, meta) = write_torrent(&d, &data, 16 * 1024);
    assert!(meta.info_dict.len() > 3 * 16 * 1024);
    let seed = seeder(&torrent, &src, &[]);
    for (name, uri) in [
        ("hex", magnet_of(&meta)),
        (
            "base32",
            format!("magnet:?xt=urn:btih:{}", base32(&meta.info_hash)),
        ),
    ] {
        let out = d.join(format!("out-{name}.bin"));
        let saved = d.join(format!("saved-{name}.torrent"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
        cmd.arg("leech")
            .arg("--magnet")
            .arg(&uri)
            .arg("--save-torrent")
            .arg(&saved)
            .arg("--out")
            .arg(&out)
            .args(["--timeout", "20", "--peer"])
            .arg(seed.addr.to_string());
        let (code, err) = run_bounded(cmd, Duration::from_secs(60));
        assert_eq!(code, Some(0), "{name}: leech failed: {err}");
        assert!(std::fs::read(&out).unwrap() == data, "{name}: file differs");
        assert!(err.contains("metadata received and verified"), "{err}");
        let back = Metainfo::parse(&std::fs::read(&saved).unwrap()).unwrap();
        assert_eq!(back.info_hash, meta.info_hash, "{name}: saved torrent");
        assert_eq!(back.pieces, meta.pieces);
    }
    // A bad link is a clear error.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.args(["leech", "--magnet", "magnet:?xt=urn:btih:1234", "--out"])
        .arg(d.join("x"))
        .args(["--peer", "127.0.0.1:1"]);
    let (code, err) = run_bounded(cmd, Duration::from_secs(10));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--magnet: invalid info-hash"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_leecher_learns_a_seeder_through_pex_alone() {
    let d = tmpdir("pex");
    let data = pseudo_random_bytes(41, 64 * 1024 * 1024 + 3);
    let (src, torrent, _) = write_torrent(&d, &data, 256 * 1024);
    // A seeds; B downloads from A (given by hand) and accepts connections; C is
    // told only of B, and can learn A only from B's ut_pex message.
    let a = seeder(&torrent, &src, &[]);
    let mut b = Server::start(leech(
        &torrent,
        &d.join("b.bin"),
        &[a.addr],
        &["--listen", "127.0.0.1:0", "--timeout", "30"],
    ));
    assert!(
        b.wait_stderr(
            &format!("connecting to {}", a.addr),
            Duration::from_secs(20)
        ),
        "{}",
        b.stderr_text()
    );
    let out = d.join("c.bin");
    let (code, err) = run_bounded(
        leech(
            &torrent,
            &out,
            &[b.addr],
            &["--listen", "127.0.0.1:0", "--timeout", "30"],
        ),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "C failed: {err}");
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    assert!(
        err.contains(&format!("pex: learned peer {} from {}", a.addr, b.addr)),
        "C did not learn A through PEX: {err}"
    );
    assert!(
        err.contains(&format!("connecting to {}", a.addr)),
        "C never dialled A: {err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// Transmission's pattern: one burst of requests, then silence until the blocks
/// arrive. Every block must come without the peer sending anything more (a
/// serve loop that waited for a writable edge after emptying its queue stalled
/// here until the peer's next message, for good when it never came).
#[test]
fn a_burst_of_requests_is_served_without_further_input() {
    let d = tmpdir("burst");
    let data = pseudo_random_bytes(43, 24 * 1024 * 1024);
    let (src, torrent, meta) = write_torrent(&d, &data, 256 * 1024);
    let seed = seeder(&torrent, &src, &["--encryption", "disabled"]);
    let mut s = connect(seed.addr);
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(&handshake(&meta.info_hash, true)).unwrap();
    s.write_all(&msg(2, &[])).unwrap(); // interested
    // Wait for the unchoke, skipping the handshake and the other messages.
    let mut hs = [0u8; 68];
    s.read_exact(&mut hs).unwrap();
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        if body.first() == Some(&1) {
            break;
        }
    }
    // 1536 requests (24 MiB) in one write; nothing is sent after it.
    let blocks = (data.len() / 16384) as u32;
    let mut reqs = Vec::new();
    for b in 0..blocks {
        let (piece, begin) = (b / 16, (b % 16) * 16384);
        let mut p = piece.to_be_bytes().to_vec();
        p.extend_from_slice(&begin.to_be_bytes());
        p.extend_from_slice(&16384u32.to_be_bytes());
        reqs.extend_from_slice(&msg(6, &p));
    }
    s.write_all(&reqs).unwrap();
    let mut got = vec![false; blocks as usize];
    let mut n = 0;
    // A reader slower than the seeder, so that its queue fills and drains many times.
    let mut buf = vec![0u8; 16384 + 13];
    while n < blocks {
        let mut len = [0u8; 4];
        s.read_exact(&mut len)
            .unwrap_or_else(|e| panic!("after {n} of {blocks} blocks: {e}"));
        let len = u32::from_be_bytes(len) as usize;
        assert!(len <= buf.len(), "message of {len} bytes");
        s.read_exact(&mut buf[..len]).unwrap();
        if len == 16384 + 9 && buf[0] == 7 {
            let piece = u32::from_be_bytes(buf[1..5].try_into().unwrap());
            let begin = u32::from_be_bytes(buf[5..9].try_into().unwrap());
            let at = piece as usize * 256 * 1024 + begin as usize;
            assert!(buf[9..len] == data[at..at + 16384], "block {piece}/{begin}");
            let i = (piece * 16 + begin / 16384) as usize;
            assert!(!got[i], "block {i} twice");
            got[i] = true;
            n += 1;
            if n % 8 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// `peer seed --metrics ADDR`: the torrent's pieces and connections as the
/// peer's own gauges, next to the loop's, in a format promtool accepts.
#[test]
fn a_seeders_metrics_show_its_pieces() {
    let dir = tmpdir("metrics");
    let data = dir.join("data.bin");
    std::fs::write(&data, pseudo_random_bytes(41, 3 << 20)).unwrap();
    let torrent = dir.join("data.torrent");
    let meta = make_torrent(&data, 256 * 1024, &torrent);
    let mut seed = seeder(&torrent, &data, &["--metrics", "127.0.0.1:0"]);
    let addr = seed.metrics_addr();
    let pieces = meta.piece_count() as f64;
    // The data is checked on the pool first; then every piece is had.
    let end = Instant::now() + Duration::from_secs(20);
    let m = loop {
        let m = common::scrape::metrics(addr);
        if m[r#"peer_pieces_have{loop="0"}"#] == pieces {
            break m;
        }
        assert!(Instant::now() < end, "pieces never all checked: {m:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(m[r#"peer_pieces{loop="0"}"#], pieces);
    assert_eq!(m[r#"peer_bans{loop="0"}"#], 0.0);
    assert_eq!(m[r#"peer_piece_bytes_uploaded_total{loop="0"}"#], 0.0);
    if common::require_tool("promtool", &["--version"], "apt-get install prometheus") {
        let body = common::scrape::get(addr, "/metrics").body;
        let (ok, said) = common::scrape::promtool(&body);
        assert!(ok, "promtool: {said}\n{body}");
    }
    let _ = seed.stderr_text();
}
