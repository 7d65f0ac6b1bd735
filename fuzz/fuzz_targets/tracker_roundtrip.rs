//! Tracker responses built from known fields parse back to those fields.
//!
//! Input: the fields of a response (interval, counts, compact IPv4 and IPv6
//! peers or a dictionary list, texts), how the body is framed (Content-Length,
//! chunked with chosen chunk sizes, or neither) and a few extra headers.
//! Properties: the parse gives exactly the fields (peers with port 0 dropped,
//! texts cut as documented), whatever the framing; and bytes after the response
//! are not consumed.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::bencode::OwnedValue;
use reactor_bittorrent::tracker::{self, AnnounceResponse, MAX_TEXT_LEN};

#[derive(Arbitrary, Debug)]
enum Framing {
    Length,
    Chunked(Vec<u8>),
    UntilValueEnd,
}

#[derive(Arbitrary, Debug)]
struct Input {
    interval: u32,
    min_interval: Option<u32>,
    complete: Option<u32>,
    incomplete: Option<u32>,
    peers4: Vec<([u8; 4], u16)>,
    peers6: Vec<([u8; 16], u16)>,
    dict_peers: bool,
    warning: Option<Vec<u8>>,
    tracker_id: Option<Vec<u8>>,
    framing: Framing,
    lf_only: bool,
    headers: Vec<(u8, u8)>,
    trailing: Vec<u8>,
}

fn body(i: &Input) -> Vec<u8> {
    let mut d = OwnedValue::dict().insert("interval", i64::from(i.interval));
    if let Some(v) = i.min_interval {
        d = d.insert("min interval", i64::from(v));
    }
    if let Some(v) = i.complete {
        d = d.insert("complete", i64::from(v));
    }
    if let Some(v) = i.incomplete {
        d = d.insert("incomplete", i64::from(v));
    }
    if i.dict_peers {
        let list: Vec<OwnedValue> = i
            .peers4
            .iter()
            .map(|(ip, port)| {
                OwnedValue::dict()
                    .insert("ip", Ipv4Addr::from(*ip).to_string())
                    .insert("port", i64::from(*port))
                    .insert("peer id", &b"-XX0000-012345678901"[..])
            })
            .collect();
        d = d.insert("peers", list);
    } else {
        let mut compact = Vec::new();
        for (ip, port) in &i.peers4 {
            compact.extend_from_slice(ip);
            compact.extend_from_slice(&port.to_be_bytes());
        }
        d = d.insert("peers", compact);
    }
    if !i.peers6.is_empty() {
        let mut compact = Vec::new();
        for (ip, port) in &i.peers6 {
            compact.extend_from_slice(ip);
            compact.extend_from_slice(&port.to_be_bytes());
        }
        d = d.insert("peers6", compact);
    }
    if let Some(w) = &i.warning {
        d = d.insert("warning message", w.clone());
    }
    if let Some(t) = &i.tracker_id {
        d = d.insert("tracker id", t.clone());
    }
    d.to_bytes()
}

/// Headers a tracker may send that change nothing.
const HARMLESS: [&str; 6] = [
    "Content-Type: text/plain",
    "Server: opentracker",
    "X-Padding:",
    "Content-Encoding: identity",
    "Transfer-Encoding: identity",
    "connection:   close  ",
];

fuzz_target!(|i: Input| {
    let body = body(&i);
    let nl: &[u8] = if i.lf_only { b"\n" } else { b"\r\n" };
    let mut resp = b"HTTP/1.1 200 OK".to_vec();
    resp.extend_from_slice(nl);
    for (h, _) in i.headers.iter().take(8) {
        resp.extend_from_slice(HARMLESS[usize::from(*h) % HARMLESS.len()].as_bytes());
        resp.extend_from_slice(nl);
    }
    match &i.framing {
        Framing::Length => {
            resp.extend_from_slice(format!("Content-Length: {}", body.len()).as_bytes());
            resp.extend_from_slice(nl);
            resp.extend_from_slice(nl);
            resp.extend_from_slice(&body);
        }
        Framing::Chunked(sizes) => {
            resp.extend_from_slice(b"Transfer-Encoding: chunked");
            resp.extend_from_slice(nl);
            resp.extend_from_slice(nl);
            let mut rest = &body[..];
            let mut k = 0;
            while !rest.is_empty() {
                let n = sizes
                    .get(k)
                    .map_or(rest.len(), |&s| usize::from(s).max(1))
                    .min(rest.len());
                k += 1;
                resp.extend_from_slice(format!("{n:x}").as_bytes());
                if k % 3 == 0 {
                    resp.extend_from_slice(b";ext=1");
                }
                resp.extend_from_slice(nl);
                resp.extend_from_slice(&rest[..n]);
                resp.extend_from_slice(nl);
                rest = &rest[n..];
            }
            resp.extend_from_slice(b"0");
            resp.extend_from_slice(nl);
            resp.extend_from_slice(nl);
        }
        Framing::UntilValueEnd => {
            resp.extend_from_slice(nl);
            resp.extend_from_slice(&body);
        }
    }
    let len = resp.len();
    if len > tracker::MAX_RESPONSE_SIZE / 2 {
        return;
    }
    resp.extend_from_slice(&i.trailing);

    let mut peers: Vec<SocketAddr> = Vec::new();
    for (ip, port) in &i.peers4 {
        if *port != 0 {
            peers.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(*ip)), *port));
        }
    }
    for (ip, port) in &i.peers6 {
        if *port != 0 {
            peers.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(*ip)), *port));
        }
    }
    peers.truncate(tracker::MAX_PEERS);
    let cut = |t: &Vec<u8>| String::from_utf8_lossy(&t[..t.len().min(MAX_TEXT_LEN)]).into_owned();
    let want = AnnounceResponse {
        interval: i.interval,
        min_interval: i.min_interval,
        peers,
        complete: i.complete,
        incomplete: i.incomplete,
        warning: i.warning.as_ref().map(cut),
        tracker_id: i.tracker_id.clone().filter(|t| t.len() <= MAX_TEXT_LEN),
    };
    let got = tracker::parse_response_partial(&resp);
    assert_eq!(
        got,
        Ok(Some((want, len))),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
});
