//! Measures the two Diffie-Hellman steps of an MSE handshake, to decide
//! whether they may run on the event loop (budget: 100 µs per step).
//!
//! Run with `cargo run --release --example dh_bench [iterations]`. Prints
//! the median, mean and 99th percentile of each step, plus RC4 keying
//! (SHA1 + 1024-byte discard) and a full in-memory handshake for context.

use std::hint::black_box;
use std::time::{Duration, Instant};

use reactor_bittorrent::mse::{
    Initiator, InitiatorConfig, KeyPair, Progress, Responder, ResponderConfig,
    compute_shared_secret,
};

fn stats(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let n = samples.len();
    let mean = samples.iter().sum::<Duration>() / n as u32;
    let median = samples[n / 2];
    let p99 = samples[(n * 99 / 100).min(n - 1)];
    println!(
        "{name:<28} n={n:<6} median {:>8.1} µs   mean {:>8.1} µs   p99 {:>8.1} µs",
        median.as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
}

fn time<T>(n: usize, mut f: impl FnMut() -> T) -> Vec<Duration> {
    // Warm-up: page in code, fill caches, initialise the prime.
    for _ in 0..n / 10 + 1 {
        black_box(f());
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed()
        })
        .collect()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);

    stats("keypair generation", time(n, KeyPair::generate));

    let a = KeyPair::generate();
    let peers: Vec<KeyPair> = (0..64).map(|_| KeyPair::generate()).collect();
    let mut i = 0;
    stats(
        "shared secret",
        time(n, || {
            i += 1;
            compute_shared_secret(&a, peers[i % peers.len()].public_key())
        }),
    );

    let ih = [7u8; 20];
    stats(
        "full handshake (both sides)",
        time(n / 10 + 1, || {
            let mut init = Initiator::new(
                KeyPair::generate(),
                ih,
                &[0u8; 68],
                InitiatorConfig::default(),
            )
            .unwrap();
            let mut resp = Responder::new(KeyPair::generate(), ResponderConfig::default()).unwrap();
            let torrents = vec![ih];
            let (mut a2b, mut b2a) = (Vec::new(), Vec::new());
            for _ in 0..8 {
                init.take_output(&mut a2b);
                let n = resp.receive(&a2b, &torrents).unwrap();
                a2b.drain(..n);
                if resp.poll() == Progress::NeedSecret {
                    resp.compute_secret_inline().unwrap();
                    let n = resp.receive(&a2b, &torrents).unwrap();
                    a2b.drain(..n);
                }
                resp.take_output(&mut b2a);
                let n = init.receive(&b2a).unwrap();
                b2a.drain(..n);
                if init.poll() == Progress::NeedSecret {
                    init.compute_secret_inline().unwrap();
                }
            }
            assert_eq!(init.poll(), Progress::Done);
            assert_eq!(resp.poll(), Progress::Done);
        }),
    );
}
