//! Interop with a real BitTorrent client: libtorrent (the `libtorrent` package from
//! PyPI, driven by `crates/bittorrent/tests/interop/lt_peer.py`) seeding to our leecher, and our seeder
//! serving a libtorrent leecher, on 127.0.0.1 with DHT/LSD/UPnP/NAT-PMP off and TCP
//! only; in plaintext, and with libtorrent's `out_enc_policy` and `in_enc_policy`
//! forced (RC4 stream). Files must be byte-exact.
//!
//! Without libtorrent the tests print why and skip, unless `REACTOR_REQUIRE_INTEROP=1`
//! (CI), where a missing client is a failure.

use reactor_test_support as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Server, pseudo_random_bytes, run_bounded};

/// libtorrent (`SCRIPT leech`) downloads from our `seed` into `save`, given the
/// torrent by `source` (`--torrent FILE` or `--magnet LINK`, and its options);
/// the download must succeed and equal `data`.
fn libtorrent_leech(source: &[&std::ffi::OsStr], save: &Path, seed: &mut Server, data: &[u8]) {
    let mut lt = Command::new("python3");
    lt.arg(SCRIPT)
        .args(["leech", "--timeout", "45"])
        .args(source)
        .arg("--save-dir")
        .arg(save)
        .arg("--peer")
        .arg(seed.addr.to_string());
    let (code, err) = run_bounded(lt, Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "libtorrent leecher failed: {err}\nour seeder: {}",
        seed.stderr_text()
    );
    assert!(
        std::fs::read(save.join("payload.bin")).unwrap() == data,
        "file differs"
    );
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/lt_peer.py");

/// True if libtorrent can be used; otherwise prints why (or fails, in CI).
fn libtorrent_available() -> bool {
    let out = Command::new("python3")
        .args(["-c", "import libtorrent; print(libtorrent.__version__)"])
        .output();
    let why = match out {
        Ok(o) if o.status.success() => return true,
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("cannot run python3: {e}"),
    };
    let msg = format!(
        "libtorrent interop test skipped: python3 cannot import libtorrent ({why}); \
         install it with `pip install libtorrent==2.1.1`"
    );
    if std::env::var("REACTOR_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{msg} (REACTOR_REQUIRE_INTEROP=1)");
    }
    println!("{msg}");
    false
}

fn tmpdir(name: &str) -> PathBuf {
    common::tmpdir("interop", name)
}

/// Data and a torrent made by our `make-torrent`, which libtorrent must accept.
fn fixture(d: &Path, len: usize) -> (PathBuf, PathBuf, Vec<u8>) {
    let data = pseudo_random_bytes(42, len);
    let src = d.join("payload.bin");
    std::fs::write(&src, &data).unwrap();
    let torrent = d.join("t.torrent");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.arg("make-torrent")
        .arg("--data")
        .arg(&src)
        .args(["--piece-length", "262144", "--out"])
        .arg(&torrent);
    let (code, err) = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(code, Some(0), "make-torrent: {err}");
    (src, torrent, data)
}

/// libtorrent seeds (with `--encryption ENC` of `lt_peer.py`), our leecher
/// downloads; returns our leecher's log.
fn libtorrent_seeds_to_us(name: &str, enc: &str) -> String {
    let d = tmpdir(name);
    let (src, torrent, data) = fixture(&d, 8 * 1024 * 1024 + 4321);
    let seed_dir = d.join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    std::fs::copy(&src, seed_dir.join("payload.bin")).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(SCRIPT)
        .args(["seed", "--timeout", "60", "--encryption", enc, "--torrent"])
        .arg(&torrent)
        .arg("--save-dir")
        .arg(&seed_dir);
    // Server::start waits (bounded) for "listening on"; stdin is null, so the script
    // seeds until its own timeout or until it is killed when `lt` drops.
    let mut lt = Server::start(cmd);
    let out = d.join("out.bin");
    let mut leech = Command::new(env!("CARGO_BIN_EXE_peer"));
    leech
        .arg("leech")
        .arg("--torrent")
        .arg(&torrent)
        .arg("--out")
        .arg(&out)
        .args(["--timeout", "30", "--peer"])
        .arg(lt.addr.to_string());
    let (code, err) = run_bounded(leech, Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "our leecher failed: {err}\nlibtorrent: {}",
        lt.stderr_text()
    );
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    let _ = std::fs::remove_dir_all(&d);
    err
}

#[test]
fn libtorrent_seeds_to_our_leecher() {
    if !libtorrent_available() {
        return;
    }
    libtorrent_seeds_to_us("lt-seed", "plain");
}

#[test]
fn libtorrent_forcing_rc4_seeds_to_our_leecher() {
    if !libtorrent_available() {
        return;
    }
    // libtorrent refuses anything but MSE with an RC4 stream; our leecher's
    // default (`--encryption enabled`) offers both and follows its choice.
    let log = libtorrent_seeds_to_us("lt-seed-rc4", "rc4");
    assert!(log.contains("encrypted handshake done (RC4)"), "{log}");
}

/// Our seeder serves a libtorrent leecher (with `--encryption ENC` of
/// `lt_peer.py`); returns our seeder's log.
fn libtorrent_leeches_from_us(name: &str, enc: &str) -> String {
    let d = tmpdir(name);
    let (src, torrent, data) = fixture(&d, 8 * 1024 * 1024 + 1234);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.arg("seed")
        .arg("--torrent")
        .arg(&torrent)
        .arg("--data")
        .arg(&src)
        .args(["--listen", "127.0.0.1:0"]);
    let mut seed = Server::start(cmd);
    assert!(seed.wait_stderr("seeding", Duration::from_secs(30)));
    let save = d.join("lt");
    std::fs::create_dir_all(&save).unwrap();
    libtorrent_leech(
        &[
            "--encryption".as_ref(),
            enc.as_ref(),
            "--torrent".as_ref(),
            torrent.as_ref(),
        ],
        &save,
        &mut seed,
        &data,
    );
    let _ = std::fs::remove_dir_all(&d);
    seed.stderr_text()
}

#[test]
fn our_seeder_serves_a_libtorrent_leecher() {
    if !libtorrent_available() {
        return;
    }
    libtorrent_leeches_from_us("lt-leech", "plain");
}

#[test]
fn our_seeder_serves_a_libtorrent_leecher_forcing_rc4() {
    if !libtorrent_available() {
        return;
    }
    let log = libtorrent_leeches_from_us("lt-leech-rc4", "rc4");
    assert!(log.contains("encrypted handshake done (RC4)"), "{log}");
}

#[test]
fn multi_file_torrent_from_libtorrent_to_our_leecher() {
    if !libtorrent_available() {
        return;
    }
    let d = tmpdir("lt-multi");
    let seed_dir = d.join("seed");
    let src = seed_dir.join("set");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let files = [
        ("one.bin", pseudo_random_bytes(1, 700_001)),
        ("sub/two.bin", pseudo_random_bytes(2, 1_500_000)),
        ("three.txt", b"three".to_vec()),
    ];
    for (name, bytes) in &files {
        std::fs::write(src.join(name), bytes).unwrap();
    }
    let torrent = d.join("t.torrent");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.arg("make-torrent")
        .arg("--data")
        .arg(&src)
        .args(["--piece-length", "65536", "--out"])
        .arg(&torrent);
    let (code, err) = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(code, Some(0), "make-torrent: {err}");
    let mut cmd = Command::new("python3");
    cmd.arg(SCRIPT)
        .args(["seed", "--timeout", "60", "--torrent"])
        .arg(&torrent)
        .arg("--save-dir")
        .arg(&seed_dir);
    let mut lt = Server::start(cmd);
    let out = d.join("dl").join("set");
    let mut leech = Command::new(env!("CARGO_BIN_EXE_peer"));
    leech
        .arg("leech")
        .arg("--torrent")
        .arg(&torrent)
        .arg("--out")
        .arg(&out)
        .args(["--timeout", "30", "--peer"])
        .arg(lt.addr.to_string());
    let (code, err) = run_bounded(leech, Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "our leecher failed: {err}\nlibtorrent: {}",
        lt.stderr_text()
    );
    for (name, bytes) in &files {
        assert!(
            std::fs::read(out.join(name)).unwrap() == *bytes,
            "{name} differs"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// `magnet:?xt=urn:btih:HEX` of a torrent file.
fn magnet_of(torrent: &Path) -> String {
    let meta = reactor_bittorrent::metainfo::Metainfo::parse(&std::fs::read(torrent).unwrap())
        .expect("our torrent parses");
    let hex: String = meta.info_hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("magnet:?xt=urn:btih:{hex}&dn=payload.bin")
}

#[test]
fn our_leecher_fetches_a_magnet_from_a_libtorrent_seeder() {
    if !libtorrent_available() {
        return;
    }
    let d = tmpdir("lt-magnet-seed");
    let (src, torrent, data) = fixture(&d, 8 * 1024 * 1024 + 99);
    let seed_dir = d.join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    std::fs::copy(&src, seed_dir.join("payload.bin")).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(SCRIPT)
        .args(["seed", "--timeout", "60", "--torrent"])
        .arg(&torrent)
        .arg("--save-dir")
        .arg(&seed_dir);
    let mut lt = Server::start(cmd);
    let out = d.join("out.bin");
    let saved = d.join("saved.torrent");
    let mut leech = Command::new(env!("CARGO_BIN_EXE_peer"));
    leech
        .arg("leech")
        .arg("--magnet")
        .arg(magnet_of(&torrent))
        .arg("--save-torrent")
        .arg(&saved)
        .arg("--out")
        .arg(&out)
        .args(["--timeout", "30", "--peer"])
        .arg(lt.addr.to_string());
    let (code, err) = run_bounded(leech, Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "our leecher failed: {err}\nlibtorrent: {}",
        lt.stderr_text()
    );
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    assert!(err.contains("metadata received and verified"), "{err}");
    // The saved torrent is the one libtorrent seeds (same info dictionary).
    let a = reactor_bittorrent::metainfo::Metainfo::parse(&std::fs::read(&saved).unwrap()).unwrap();
    let b =
        reactor_bittorrent::metainfo::Metainfo::parse(&std::fs::read(&torrent).unwrap()).unwrap();
    assert_eq!(a.info_dict, b.info_dict);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn libtorrent_fetches_a_magnet_from_our_seeder() {
    if !libtorrent_available() {
        return;
    }
    let d = tmpdir("lt-magnet-leech");
    let (src, torrent, data) = fixture(&d, 8 * 1024 * 1024 + 77);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.arg("seed")
        .arg("--torrent")
        .arg(&torrent)
        .arg("--data")
        .arg(&src)
        .args(["--listen", "127.0.0.1:0"]);
    let mut seed = Server::start(cmd);
    assert!(seed.wait_stderr("seeding", Duration::from_secs(30)));
    let save = d.join("lt");
    std::fs::create_dir_all(&save).unwrap();
    let magnet = magnet_of(&torrent);
    libtorrent_leech(
        &["--magnet".as_ref(), magnet.as_ref()],
        &save,
        &mut seed,
        &data,
    );
    let _ = std::fs::remove_dir_all(&d);
}
