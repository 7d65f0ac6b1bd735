//! Framing codec micro-benchmarks: decoding a buffer of many small frames, as a
//! handler does after one `fill`.

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use reactor::framing::{Decoder, Delimited, LengthPrefixed};

/// Decodes every frame in `buf` the way a handler walks its read buffer.
fn drain<D: Decoder>(d: &D, buf: &[u8]) -> usize {
    let mut off = 0;
    let mut n = 0;
    while let Some(f) = d.decode(&buf[off..]).expect("valid frames") {
        n += f.payload(&buf[off..]).len();
        off += f.consumed;
    }
    n
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("framing");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));

    for &size in &[16usize, 64, 1024] {
        let frames = (64 * 1024) / (size + 4);
        let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();

        let lp = LengthPrefixed::new(4, 1 << 20);
        let mut buf = BytesMut::new();
        for _ in 0..frames {
            lp.encode(&payload, &mut buf).unwrap();
        }
        g.throughput(Throughput::Elements(frames as u64));
        g.bench_function(format!("length-prefixed decode {size} B x {frames}"), |b| {
            b.iter(|| black_box(drain(&lp, black_box(&buf))))
        });

        let lines = Delimited::new(b"\n", 1 << 20);
        let mut buf = BytesMut::new();
        for _ in 0..frames {
            lines.encode(&payload, &mut buf);
        }
        g.bench_function(format!("line decode {size} B x {frames}"), |b| {
            b.iter(|| black_box(drain(&lines, black_box(&buf))))
        });

        let crlf = Delimited::new(b"\r\n", 1 << 20);
        let mut buf = BytesMut::new();
        for _ in 0..frames {
            crlf.encode(&payload, &mut buf);
        }
        g.bench_function(format!("crlf decode {size} B x {frames}"), |b| {
            b.iter(|| black_box(drain(&crlf, black_box(&buf))))
        });
    }

    let lp = LengthPrefixed::new(4, 1 << 20);
    let payload = [7u8; 64];
    let mut out = BytesMut::with_capacity(1 << 20);
    g.throughput(Throughput::Elements(1));
    g.bench_function("length-prefixed encode 64 B", |b| {
        b.iter(|| {
            if out.len() > (1 << 19) {
                out.clear();
            }
            lp.encode(black_box(&payload), &mut out).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
