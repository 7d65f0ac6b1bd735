//! Interop with the BitTorrent clients people run, from Debian's packages: aria2
//! (`aria2c`) and Transmission (`transmission-cli`), on 127.0.0.1 through the
//! test HTTP tracker (`support::FakeTracker`), DHT, LPD and PEX off on their side.
//! Files must be byte-exact.
//!
//! Without a client the test prints why and skips, unless `REACTOR_REQUIRE_INTEROP=1`
//! (CI, whose `.ci/run` installs them), where a missing client is a failure.

use reactor_test_support as common;

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Server, pseudo_random_bytes, run_bounded};
use support::{Client, FakeTracker, client_available, free_port, wait_listening};

fn tmpdir(name: &str) -> PathBuf {
    common::tmpdir("clients", name)
}

/// `len` bytes of data in `d/payload.bin` and a torrent for it announcing `tracker`.
fn fixture(d: &Path, len: usize, tracker: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let data = pseudo_random_bytes(99, len);
    let src = d.join("payload.bin");
    std::fs::write(&src, &data).unwrap();
    let torrent = d.join("t.torrent");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.arg("make-torrent")
        .arg("--data")
        .arg(&src)
        .args(["--piece-length", "262144", "--tracker", tracker, "--out"])
        .arg(&torrent);
    let (code, err) = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(code, Some(0), "make-torrent: {err}");
    (src, torrent, data)
}

fn our_seeder(torrent: &Path, data: &Path, extra: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.arg("seed")
        .arg("--torrent")
        .arg(torrent)
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra);
    let mut s = Server::start(cmd);
    assert!(
        s.wait_stderr("seeding", Duration::from_secs(30)),
        "seeder did not start: {}",
        s.stderr_text()
    );
    s
}

/// aria2c isolated on loopback: no DHT, LPD or PEX; exits once the download is
/// complete (`--seed-time=0`), or after 40 s without progress.
fn aria2(save: &Path, torrent: &Path, port: u16, extra: &[&str]) -> Command {
    let mut cmd = Command::new("aria2c");
    cmd.arg(format!("--dir={}", save.display()))
        .arg(format!("--listen-port={port}"))
        .args([
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--file-allocation=none",
            "--summary-interval=0",
            "--console-log-level=notice",
            "--bt-stop-timeout=40",
            "--bt-tracker-connect-timeout=5",
        ])
        .arg(format!("--log={}/aria2.log", save.display()))
        .arg("--log-level=info")
        .args(extra)
        .arg(torrent);
    cmd
}

fn aria2_leeches_from_our_seeder(name: &str, aria2_extra: &[&str]) {
    if !client_available("aria2c", "aria2") {
        return;
    }
    let d = tmpdir(name);
    let tracker = FakeTracker::start();
    let (src, torrent, data) = fixture(&d, 16 * 1024 * 1024 + 777, &tracker.url);
    let mut seed = our_seeder(&torrent, &src, &[]);
    assert!(
        tracker.wait_for(seed.addr.port(), "started", Duration::from_secs(20)),
        "our seeder did not announce"
    );
    let save = d.join("aria2");
    std::fs::create_dir_all(&save).unwrap();
    let mut extra = vec!["--seed-time=0"];
    extra.extend_from_slice(aria2_extra);
    let mut a = Client::spawn(
        aria2(&save, &torrent, free_port(), &extra),
        &d.join("aria2.out"),
    );
    let code = a.wait(Duration::from_secs(60));
    let aria_log = std::fs::read_to_string(save.join("aria2.log")).unwrap_or_default();
    let tail: Vec<&str> = aria_log.lines().rev().take(40).collect();
    assert_eq!(
        code,
        Some(0),
        "aria2c failed: {}\naria2 log (last lines, newest first):\n{}\nour seeder: {}",
        a.tail(20),
        tail.join("\n"),
        seed.stderr_text()
    );
    assert!(
        std::fs::read(save.join("payload.bin")).unwrap() == data,
        "file differs"
    );
    let log = seed.stderr_text();
    assert!(
        !log.contains("bitfield after other piece announcements"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn aria2_leeches_from_our_seeder_through_a_tracker() {
    aria2_leeches_from_our_seeder("aria2-plain", &[]);
}

#[test]
fn aria2_seeds_to_our_leecher() {
    if !client_available("aria2c", "aria2") {
        return;
    }
    let d = tmpdir("aria2-seed");
    let tracker = FakeTracker::start();
    let (_src, torrent, data) = fixture(&d, 8 * 1024 * 1024 + 4321, &tracker.url);
    let port = free_port();
    // aria2 checks the file it finds in --dir (-V) and then seeds it.
    let a = Client::spawn(
        aria2(
            &d,
            &torrent,
            port,
            &[
                "--check-integrity=true",
                "--seed-ratio=0.0",
                "--seed-time=2",
            ],
        ),
        &d.join("aria2.out"),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_listening(addr, Duration::from_secs(30)),
        "aria2c never listened: {}",
        a.tail(20)
    );
    let out = d.join("ours.bin");
    let mut leech = Command::new(env!("CARGO_BIN_EXE_peer"));
    leech
        .arg("leech")
        .arg("--torrent")
        .arg(&torrent)
        .arg("--out")
        .arg(&out)
        .args(["--timeout", "30", "--peer"])
        .arg(addr.to_string());
    let (code, err) = run_bounded(leech, Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "our leecher failed: {err}\naria2: {}",
        a.tail(20)
    );
    assert!(std::fs::read(&out).unwrap() == data, "file differs");
    let _ = std::fs::remove_dir_all(&d);
}
#[test]
fn aria2_requiring_encryption_leeches_from_our_seeder() {
    // Obfuscated handshake only, and RC4 for the whole stream.
    aria2_leeches_from_our_seeder(
        "aria2-crypto",
        &["--bt-require-crypto=true", "--bt-min-crypto-level=arc4"],
    );
}

/// transmission-cli isolated on loopback (DHT, LPD, PEX, uTP and port mapping
/// off in its settings.json), saving to `save`; it touches `done` when the
/// download is complete (`--finish` script) and then seeds until killed.
fn transmission(d: &Path, save: &Path, torrent: &Path, port: u16, done: &Path) -> Command {
    let cfg = d.join("transmission-config");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("settings.json"),
        format!(
            r#"{{
    "dht-enabled": false,
    "lpd-enabled": false,
    "pex-enabled": false,
    "utp-enabled": false,
    "port-forwarding-enabled": false,
    "peer-port": {port},
    "peer-port-random-on-start": false,
    "rpc-enabled": false,
    "speed-limit-down-enabled": false,
    "speed-limit-up-enabled": false
}}
"#
        ),
    )
    .unwrap();
    let script = d.join("finished.sh");
    std::fs::write(&script, format!("#!/bin/sh\ntouch '{}'\n", done.display())).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut cmd = Command::new("transmission-cli");
    cmd.arg("-g")
        .arg(&cfg)
        .arg("-w")
        .arg(save)
        .args(["-p", &port.to_string(), "-M", "-D", "-U", "-f"])
        .arg(&script)
        .arg(torrent);
    cmd
}

#[test]
fn transmission_leeches_from_our_seeder_through_a_tracker() {
    if !client_available("transmission-cli", "transmission-cli") {
        return;
    }
    let d = tmpdir("transmission");
    let tracker = FakeTracker::start();
    let (src, torrent, data) = fixture(&d, 16 * 1024 * 1024 + 333, &tracker.url);
    let mut seed = our_seeder(&torrent, &src, &[]);
    assert!(
        tracker.wait_for(seed.addr.port(), "started", Duration::from_secs(20)),
        "our seeder did not announce"
    );
    let save = d.join("transmission");
    std::fs::create_dir_all(&save).unwrap();
    let done = d.join("done");
    let port = free_port();
    // Transmission does not dial loopback peers from a tracker; it announces, and
    // our seeder (which re-announces every 2 s here) dials it.
    let start = std::time::Instant::now();
    let mut t = Client::spawn(
        transmission(&d, &save, &torrent, port, &done),
        &d.join("transmission.out"),
    );
    let deadline = start + Duration::from_secs(90);
    while !done.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "transmission did not finish: {}\nour seeder: {}",
            t.tail(10),
            seed.stderr_text()
        );
        assert!(
            t.child.try_wait().unwrap().is_none(),
            "transmission exited: {}",
            t.tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = start.elapsed().as_secs_f64();
    println!("transmission-cli: {} bytes in {secs:.2} s", data.len());
    assert!(
        std::fs::read(save.join("payload.bin")).unwrap() == data,
        "file differs"
    );
    let _ = std::fs::remove_dir_all(&d);
}
