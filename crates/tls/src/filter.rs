//! [`TlsFilter`]: a rustls connection as a [`reactor::StreamFilter`].
//!
//! rustls reads the connection's socket itself ([`StreamFilter::read_wire`]:
//! `read_tls` from the socket `Conn` lends it, then `process_new_packets`, so a
//! record is never left unprocessed), and [`StreamFilter::read_plain`] drains every
//! decrypted byte rustls holds, so none sit there waiting for an edge that will not
//! come. Whatever rustls wants to send (handshake messages, alerts, records) goes
//! to the socket by [`StreamFilter::write_wire`], and what the socket refuses is
//! taken by [`StreamFilter::output`] into `Conn`'s queue, where it is counted.
//! The buffered path (`input`, `output`) serves a `Conn` that wants it and the
//! in-memory handshake benchmark. This module opens and owns no socket: it reads
//! and writes only the one `Conn` lends it for the call.

use std::any::Any;
use std::io::{self, BufRead, Write};

use bytes::BytesMut;
use reactor::{PlainRead, StreamFilter, WireRead};
use rustls::Connection;

/// Plaintext rustls may hold on the way out before it pushes back (about four
/// records), so a slow peer cannot make it buffer without bound. Received
/// plaintext is bounded by rustls itself (16 KiB past which `read_tls` refuses
/// more: `WireRead::Full`).
pub(crate) const BUFFER_LIMIT: usize = 64 * 1024;

/// A TLS connection (server or client side) between a `Conn`'s socket and its
/// buffers. Made by [`TlsAcceptor::filter`](crate::TlsAcceptor::filter) or
/// [`TlsConnector::filter`](crate::TlsConnector::filter).
pub struct TlsFilter {
    conn: Connection,
    /// The socket ended without a `close_notify`.
    unclean_eof: bool,
}

impl TlsFilter {
    pub(crate) fn new(mut conn: Connection) -> TlsFilter {
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        TlsFilter {
            conn,
            unclean_eof: false,
        }
    }

    /// The protocol chosen by ALPN, once the handshake is done.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The server name the client asked for (SNI), on the server side.
    pub fn server_name(&self) -> Option<&str> {
        match &self.conn {
            Connection::Server(s) => s.server_name(),
            Connection::Client(_) => None,
        }
    }

    /// The TLS version and cipher suite negotiated, once the handshake is done
    /// (for log lines: `TLSv1_3 TLS13_AES_128_GCM_SHA256`).
    pub fn negotiated(&self) -> Option<String> {
        let version = self.conn.protocol_version()?;
        let suite = self.conn.negotiated_cipher_suite()?;
        Some(format!("{version:?} {:?}", suite.suite()))
    }

    /// True if the peer closed the socket without ending the TLS stream first
    /// (`close_notify`): it was taken as a plain end of file (many clients do this),
    /// which a protocol whose frames do not delimit themselves may treat as a
    /// truncation.
    pub fn ended_uncleanly(&self) -> bool {
        self.unclean_eof
    }

    /// The filter inside a connection, if it has one and it is TLS.
    pub fn of(conn: &reactor::Conn) -> Option<&TlsFilter> {
        TlsFilter::of_filter(conn.filter()?)
    }

    /// `filter` as TLS, if it is ([`reactor::Link::filter`] gives one to a protocol).
    pub fn of_filter(filter: &dyn StreamFilter) -> Option<&TlsFilter> {
        filter.as_any().downcast_ref::<TlsFilter>()
    }
}

/// rustls errors are the peer's fault (a bad record, a failed handshake, an alert).
fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

/// `io::Write` into a `BytesMut` (rustls writes its records through `io::Write`).
struct Sink<'a>(&'a mut BytesMut);

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StreamFilter for TlsFilter {
    fn input(&mut self, wire: &[u8]) -> io::Result<usize> {
        let mut rd = wire;
        let n = match self.conn.read_tls(&mut rd) {
            Ok(n) => n,
            // Its plaintext buffer is full: `read_plain` must take some first.
            Err(e) if e.kind() == io::ErrorKind::Other => return Ok(0),
            Err(e) => return Err(e),
        };
        self.conn.process_new_packets().map_err(invalid)?;
        Ok(n)
    }

    fn input_eof(&mut self) -> io::Result<()> {
        let mut nothing: &[u8] = &[];
        match self.conn.read_tls(&mut nothing) {
            Ok(_) => {}
            // Its plaintext buffer is full: the end is recorded once
            // `read_plain` has taken some and the connection calls this again.
            Err(e) if e.kind() == io::ErrorKind::Other => return Ok(()),
            Err(e) => return Err(e),
        }
        self.conn.process_new_packets().map_err(invalid)?;
        Ok(())
    }

    fn read_plain(&mut self, plain: &mut BytesMut, max: usize) -> io::Result<PlainRead> {
        let mut got = PlainRead::default();
        loop {
            let mut reader = self.conn.reader();
            let chunk = match reader.fill_buf() {
                Ok([]) => {
                    got.eof = true;
                    return Ok(got);
                }
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(got),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    if self.conn.is_handshaking() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "TLS: the peer closed the connection during the handshake",
                        ));
                    }
                    // No close_notify, then end of file: most clients end so (and
                    // frames delimit themselves); remembered for those who care.
                    self.unclean_eof = true;
                    got.eof = true;
                    return Ok(got);
                }
                Err(e) => return Err(e),
            };
            let room = max - got.bytes;
            if room == 0 {
                got.more = true;
                return Ok(got);
            }
            let n = chunk.len().min(room);
            plain.extend_from_slice(&chunk[..n]);
            reader.consume(n);
            got.bytes += n;
        }
    }

    fn write_plain(&mut self, plain: &[u8]) -> io::Result<usize> {
        self.conn.writer().write(plain)
    }

    fn output(&mut self, wire: &mut BytesMut) -> io::Result<usize> {
        let mut total = 0;
        while self.conn.wants_write() {
            let n = self.conn.write_tls(&mut Sink(wire))?;
            if n == 0 {
                break;
            }
            total += n;
        }
        Ok(total)
    }

    fn overhead(&self, plain: usize) -> usize {
        // TLS 1.3: 5 header + 1 content type + 16 tag per record of at most
        // 16 KiB; TLS 1.2 with AES-GCM 5 + 8 + 16. Rounded up generously.
        (plain / (16 * 1024) + 1) * 64
    }

    fn wants_output(&self) -> bool {
        self.conn.wants_write()
    }

    fn direct(&self) -> bool {
        true
    }

    fn read_wire(&mut self, socket: &mut dyn io::Read) -> io::Result<WireRead> {
        let n = match self.conn.read_tls(socket) {
            Ok(n) => n,
            // Its plaintext buffer is full: `read_plain` must take some first.
            Err(e) if e.kind() == io::ErrorKind::Other => return Ok(WireRead::Full),
            Err(e) => return Err(e),
        };
        // Every record read is processed at once: none is left for an edge that
        // will not come (a zero-byte read records the end of file too).
        self.conn.process_new_packets().map_err(invalid)?;
        Ok(if n == 0 {
            WireRead::Eof
        } else {
            WireRead::Data(n)
        })
    }

    fn write_wire(&mut self, socket: &mut dyn io::Write) -> io::Result<usize> {
        self.conn.write_tls(socket)
    }

    fn close(&mut self) {
        self.conn.send_close_notify();
    }

    fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    fn name(&self) -> &'static str {
        "tls"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
