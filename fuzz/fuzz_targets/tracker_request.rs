//! Announce requests built from hostile URLs are well-formed HTTP.
//!
//! Input: an announce URL and the request's fields. Properties: when
//! `build_request` accepts the URL, its bytes are one complete HTTP/1.0 GET
//! request (parsed by `httparse`, nothing left over) with exactly the `Host` and
//! `Connection` headers: no URL can inject a header or a second request; the
//! target is visible ASCII; the query carries the info-hash and peer id
//! percent-encoded byte for byte; and the host to connect to is a hostname or an
//! IP literal.
#![no_main]

use std::net::Ipv6Addr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::tracker::{self, AnnounceEvent, AnnounceRequest};

#[derive(Arbitrary, Debug)]
struct Input {
    url: String,
    /// Prefixed to `url` when set, so most cases get past the scheme check.
    http: bool,
    info_hash: [u8; 20],
    peer_id: [u8; 20],
    port: u16,
    uploaded: u64,
    downloaded: u64,
    left: u64,
    event: u8,
    numwant: Option<u32>,
    compact: bool,
    key: Option<u32>,
    tracker_id: Option<Vec<u8>>,
}

fn unhex(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'A'..=b'F' => d - b'A' + 10,
        b'a'..=b'f' => d - b'a' + 10,
        _ => panic!("bad percent escape"),
    }
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            out.push(unhex(s[i + 1]) << 4 | unhex(s[i + 2]));
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// The value of the last `name=` parameter of the query (ours come last).
fn param<'a>(query: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    query
        .split(|&b| b == b'&')
        .filter_map(|kv| kv.strip_prefix(name)?.strip_prefix(b"="))
        .next_back()
}

fuzz_target!(|i: Input| {
    let url = if i.http {
        format!("http://{}", i.url)
    } else {
        i.url.clone()
    };
    let req = AnnounceRequest {
        info_hash: i.info_hash,
        peer_id: i.peer_id,
        port: i.port,
        uploaded: i.uploaded,
        downloaded: i.downloaded,
        left: i.left,
        event: [
            None,
            Some(AnnounceEvent::Started),
            Some(AnnounceEvent::Completed),
            Some(AnnounceEvent::Stopped),
        ][usize::from(i.event % 4)],
        numwant: i.numwant,
        compact: i.compact,
        key: i.key,
        tracker_id: i.tracker_id.clone(),
    };
    let Ok(r) = tracker::build_request(&url, &req) else {
        return;
    };
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let mut parsed = httparse::Request::new(&mut headers);
    let status = parsed.parse(&r.bytes).expect("request parses as HTTP");
    assert_eq!(
        status,
        httparse::Status::Complete(r.bytes.len()),
        "one request, nothing more"
    );
    assert_eq!(parsed.method, Some("GET"));
    assert_eq!(parsed.version, Some(0), "HTTP/1.0");
    let names: Vec<&str> = parsed.headers.iter().map(|h| h.name).collect();
    assert_eq!(names, ["Host", "Connection"]);
    assert_eq!(parsed.headers[1].value, b"close");
    let host_header = std::str::from_utf8(parsed.headers[0].value).unwrap();
    assert!(host_header.bytes().all(|b| b.is_ascii_graphic()));

    // The host: an IPv6 literal (bracketed in the header) or hostname characters.
    if let Ok(v6) = r.host.parse::<Ipv6Addr>() {
        assert!(host_header.starts_with('['));
        let _ = v6;
    } else {
        assert!(!r.host.is_empty());
        assert!(
            r.host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        );
        assert!(host_header.starts_with(&r.host));
    }
    assert!(r.port != 0);
    if r.port != 80 {
        assert!(host_header.ends_with(&format!(":{}", r.port)));
    }

    let path = parsed.path.unwrap().as_bytes();
    assert!(path.starts_with(b"/"));
    assert!(path.iter().all(|b| (0x21..=0x7e).contains(b)));
    let query = &path[path.iter().position(|&b| b == b'?').expect("a query") + 1..];
    assert_eq!(
        percent_decode(param(query, b"info_hash").unwrap()),
        i.info_hash
    );
    assert_eq!(percent_decode(param(query, b"peer_id").unwrap()), i.peer_id);
    assert_eq!(
        param(query, b"port").unwrap(),
        i.port.to_string().as_bytes()
    );
    assert_eq!(
        param(query, b"left").unwrap(),
        i.left.to_string().as_bytes()
    );
    if let Some(t) = &i.tracker_id {
        assert_eq!(&percent_decode(param(query, b"trackerid").unwrap()), t);
    }
});
