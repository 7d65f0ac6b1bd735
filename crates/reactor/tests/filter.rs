//! A `StreamFilter` without direct I/O (the connection's own wire buffers): the
//! path any filter but `reactor-tls` takes. The filter here XORs every byte and
//! holds at most a little plaintext, as a TLS library does, so the connection
//! must come back for what it holds.

use reactor_test_support as common;

use std::any::Any;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use common::{pseudo_random_bytes, run_loop};
use reactor::framed::{self, Link, Protocol};
use reactor::framing::Lines;
use reactor::{Config, FilterFactory, FramedConfig, HandlerResult, PlainRead, StreamFilter};

const KEY: u8 = 0x5a;
/// Plaintext the filter holds at most, each way.
const HOLD: usize = 3000;

#[derive(Default)]
struct Xor {
    plain_in: Vec<u8>,
    wire_out: Vec<u8>,
    eof: bool,
}

impl StreamFilter for Xor {
    fn input(&mut self, wire: &[u8]) -> io::Result<usize> {
        let n = wire.len().min(HOLD - self.plain_in.len());
        self.plain_in.extend(wire[..n].iter().map(|b| b ^ KEY));
        Ok(n)
    }
    fn input_eof(&mut self) -> io::Result<()> {
        self.eof = true;
        Ok(())
    }
    fn read_plain(&mut self, plain: &mut BytesMut, max: usize) -> io::Result<PlainRead> {
        let n = self.plain_in.len().min(max);
        plain.extend_from_slice(&self.plain_in[..n]);
        self.plain_in.drain(..n);
        Ok(PlainRead {
            bytes: n,
            eof: self.eof && self.plain_in.is_empty(),
            more: !self.plain_in.is_empty(),
        })
    }
    fn write_plain(&mut self, plain: &[u8]) -> io::Result<usize> {
        let n = plain.len().min(HOLD.saturating_sub(self.wire_out.len()));
        self.wire_out.extend(plain[..n].iter().map(|b| b ^ KEY));
        Ok(n)
    }
    fn output(&mut self, wire: &mut BytesMut) -> io::Result<usize> {
        let n = self.wire_out.len();
        wire.extend_from_slice(&self.wire_out);
        self.wire_out.clear();
        Ok(n)
    }
    fn wants_output(&self) -> bool {
        !self.wire_out.is_empty()
    }
    fn close(&mut self) {}
    fn is_handshaking(&self) -> bool {
        false
    }
    fn name(&self) -> &'static str {
        "xor"
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Echo;

impl Protocol for Echo {
    type Message = ();
    type Job = ();
    fn on_frame(&mut self, link: &mut Link<'_, Self>, line: &[u8]) -> HandlerResult {
        link.send(line);
        link.send(b"\n");
        Ok(())
    }
}

fn xor(data: &[u8]) -> Vec<u8> {
    data.iter().map(|b| b ^ KEY).collect()
}

/// 2 MiB of lines in one go, then a half-close, with 4 KiB pool buffers (so the
/// read buffer fills while the filter and the wire buffer still hold bytes):
/// every line comes back, then the end of the stream. (The direct path's twin,
/// `crates/tls/tests/tls.rs`' 20,000 lines and a half-close, is the one that
/// caught an end of the socket taken for the end of the stream while the filter
/// still held plaintext; this path had the same rule and the same fix.)
#[test]
fn a_buffered_filter_delivers_everything_before_the_end_of_the_stream() {
    let cfg = FramedConfig::default().filter(FilterFactory::new(|| Ok(Box::new(Xor::default()))));
    let (addr, server) = run_loop(Config::default().buffer_size(4096), move |r| {
        let l = framed::listen("127.0.0.1:0".parse().unwrap(), Lines::new(64), cfg, |_| {
            Some(Echo)
        })
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let mut text = Vec::new();
    let noise = pseudo_random_bytes(7, 1 << 20);
    let mut i = 0;
    while text.len() < 2 << 20 {
        // Printable lines of 1 to 40 bytes.
        let len = 1 + usize::from(noise[i % noise.len()]) % 40;
        text.extend((0..len).map(|k| b'a' + noise[(i + k) % noise.len()] % 26));
        text.push(b'\n');
        i += len;
    }
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let writer = {
        let mut c = c.try_clone().unwrap();
        let wire = xor(&text);
        std::thread::spawn(move || {
            c.write_all(&wire).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    c.read_to_end(&mut back)
        .expect("an end of file, not a reset or a timeout");
    writer.join().unwrap();
    assert_eq!(back.len(), text.len(), "bytes echoed");
    assert!(xor(&back) == text, "the echo differs");
    server.handle.shutdown();
    let stats = server.join();
    assert_eq!(stats.handlers_failed, 0, "{stats}");
}
