//! Writes the hand-made seed inputs of the byte-oriented fuzz targets into
//! `corpus/<target>/` (run from `fuzz/`: `cargo run --example seeds`). They are
//! built with the crates' own encoders, so they are valid messages the fuzzer can
//! mutate from; campaigns then add what they find and `cargo fuzz cmin` keeps the
//! few that cover the most. The structured targets need no seeds.

use std::fs;
use std::path::Path;

use reactor_bittorrent::bencode::OwnedValue;
use reactor_bittorrent::ext_handshake::ExtHandshake as PeerExtHandshake;
use reactor_bittorrent::metadata::MetadataMsg;
use reactor_bittorrent::metainfo;
use reactor_bittorrent::pex::{PexFlags, PexMessage, PexPeer};
use reactor_bittorrent::wire::{self, ExtHandshake, Message};
use reactor_discovery::proto::{self as dproto, Announcement, Metadata};
use reactor_proxy::proxy_protocol::{self as pp, Tlv, V2Extras};
use reactor_proxy::socks5::{self, Command, Target};
use reactor_proxy::socks5_udp::{self, UdpTarget};
use reactor_relay::proto::{self as rproto, Reason};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn torrent(multi: bool) -> Vec<u8> {
    let files = if multi {
        vec![
            (vec!["a".to_string(), "b.txt".to_string()], 5),
            (vec!["c".to_string()], 40_000),
        ]
    } else {
        vec![(Vec::new(), 40_005)]
    };
    metainfo::build_torrent(
        "name",
        &files,
        16384,
        &[[7; 20]; 3],
        Some("http://t.example/announce"),
    )
    .unwrap()
}

fn main() {
    // bencode: one byte of options, then a document.
    for (i, doc) in [
        &b"d3:cow3:moo4:spaml1:a1:bee"[..],
        b"li-42ei0e4:spam0:le",
        b"d1:ad1:bd1:ci9223372036854775807eeee",
        b"i-9223372036854775808e",
    ]
    .iter()
    .enumerate()
    {
        write("bencode", &format!("{i}"), &[&[0u8][..], doc].concat());
        write(
            "bencode",
            &format!("sorted-{i}"),
            &[&[0x10u8][..], doc].concat(),
        );
    }
    write("bencode", "torrent", &[&[0u8][..], &torrent(true)].concat());

    write("metainfo", "single", &torrent(false));
    write("metainfo", "multi", &torrent(true));
    let with_list = OwnedValue::dict()
        .insert(
            "announce-list",
            vec![OwnedValue::from(vec![OwnedValue::from("http://a/")])],
        )
        .insert(
            "info",
            OwnedValue::dict()
                .insert("name", "x")
                .insert("piece length", 4)
                .insert("length", 3)
                .insert("pieces", vec![1u8; 20])
                .insert("private", 1),
        );
    write("metainfo", "private", &with_list.to_bytes());

    // Tracker responses: one byte choosing the reads, then the response.
    let body = OwnedValue::dict()
        .insert("interval", 1800)
        .insert("complete", 3)
        .insert("peers", vec![127u8, 0, 0, 1, 0x1a, 0xe1, 10, 0, 0, 2, 0, 0])
        .insert("peers6", [[0u8; 15].as_slice(), &[1, 0x1a, 0xe1]].concat())
        .to_bytes();
    let mut length = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    length.extend_from_slice(&body);
    write(
        "tracker_response",
        "length",
        &[&[3u8][..], &length].concat(),
    );
    let mut chunked = b"HTTP/1.0 200 OK\nTransfer-Encoding: chunked\n\n".to_vec();
    let (a, b) = body.split_at(10);
    chunked.extend_from_slice(format!("{:x};x=y\r\n", a.len()).as_bytes());
    chunked.extend_from_slice(a);
    chunked.extend_from_slice(format!("\r\n{:X}\r\n", b.len()).as_bytes());
    chunked.extend_from_slice(b);
    chunked.extend_from_slice(b"\r\n0\r\nTrailer: 1\r\n\r\n");
    write(
        "tracker_response",
        "chunked",
        &[&[17u8][..], &chunked].concat(),
    );
    let mut bare = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    bare.extend_from_slice(b"d8:intervali60e5:peersld2:ip9:127.0.0.14:porti6881eeee");
    write(
        "tracker_response",
        "dict-peers",
        &[&[0u8][..], &bare].concat(),
    );
    write(
        "tracker_response",
        "failure",
        b"\x05HTTP/1.1 200 OK\r\nContent-Length: 29\r\n\r\nd14:failure reason4:nopee",
    );
    write(
        "tracker_response",
        "status",
        b"\x01HTTP/1.1 404 Not Found\r\n\r\n",
    );

    // Peer wire: one byte choosing the limit (4: the default), then messages.
    let mut stream = vec![4u8];
    for m in [
        Message::KeepAlive,
        Message::Choke,
        Message::Unchoke,
        Message::Interested,
        Message::Have { piece: 7 },
        Message::Bitfield(&[0xf0]),
        Message::Request {
            index: 1,
            begin: 16384,
            length: 16384,
        },
        Message::Piece {
            index: 1,
            begin: 0,
            block: b"data",
        },
        Message::Cancel {
            index: 1,
            begin: 0,
            length: 4,
        },
        Message::Port(6881),
        Message::HaveAll,
        Message::RejectRequest {
            index: 2,
            begin: 0,
            length: 9,
        },
        Message::AllowedFast(3),
        Message::Extended {
            id: 3,
            payload: b"d1:xi1ee",
        },
        Message::Unknown {
            id: 99,
            payload: b"?",
        },
    ] {
        m.encode(&mut stream).unwrap();
    }
    let hs = ExtHandshake {
        extensions: vec![(b"ut_metadata", 2), (b"ut_pex", 1)],
        client: Some(b"reactor 0.1"),
        reqq: Some(250),
    };
    wire::encode_ext_handshake(&hs, &mut stream).unwrap();
    write("wire_message", "all", &stream);
    let mut hsb = wire::encode_handshake(
        &[1; 20],
        b"-RE0001-abcdefghijkl",
        wire::RESERVED_FAST_AND_EXTENSIONS,
    )
    .to_vec();
    write("wire_handshake", "handshake", &hsb);
    hsb.truncate(48);
    write("wire_handshake", "prefix", &hsb);
    let mut ext = Vec::new();
    wire::encode_ext_handshake(&hs, &mut ext).unwrap();
    write("wire_handshake", "ext", &ext[6..]);

    // SOCKS5 server: flags (bit 0: login required), the login if so, read sizes,
    // then the client's bytes.
    let mut c = Vec::new();
    socks5::encode_greeting(&[0, 2], &mut c).unwrap();
    socks5::encode_request(
        Command::Connect,
        &Target::Domain {
            host: "example.org".into(),
            port: 443,
        },
        &mut c,
    )
    .unwrap();
    c.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
    write(
        "socks5_server",
        "domain",
        &[&[0u8, 3, 5, 1, 9][..], &c].concat(),
    );
    let mut c = Vec::new();
    socks5::encode_greeting(&[2], &mut c).unwrap();
    socks5::encode_userpass(b"user", b"pass", &mut c).unwrap();
    socks5::encode_request(
        Command::Connect,
        &Target::Addr("[::1]:80".parse().unwrap()),
        &mut c,
    )
    .unwrap();
    write(
        "socks5_server",
        "auth-v6",
        &[&b"\x01\x04user\x04pass\x00"[..], &c].concat(),
    );
    write(
        "socks5_server",
        "auth-wrong",
        &[&b"\x01\x04user\x04word\x02\x07\x01"[..], &c].concat(),
    );

    // Relay frames.
    let mut r = Vec::new();
    for m in [
        rproto::Message::Reserve {
            peer: "peer-1",
            id: "alice",
        },
        rproto::Message::Refresh { id: "alice" },
        rproto::Message::Connect { id: "bob" },
        rproto::Message::Accept { circuit: 42 },
        rproto::Message::Heartbeat,
        rproto::Message::Reserved {
            id: "alice",
            ttl_secs: 3600,
        },
        rproto::Message::Refused {
            reason: Reason::IdTaken,
            detail: Some("taken"),
        },
        rproto::Message::Incoming {
            circuit: 7,
            id: "alice",
        },
        rproto::Message::HeartbeatAck,
        rproto::Message::Connected { circuit: 42 },
    ] {
        rproto::encode(&m, &mut r).unwrap();
    }
    r.extend_from_slice(b"raw bytes after Connected");
    write("relay_proto", "all", &r);

    // Discovery datagrams.
    let mut a = Announcement::new("node-1", 0x0102_0304_0506_0708, 6881);
    a.service = "bittorrent";
    a.metadata = Metadata::from_pairs(&[
        ("ih", "00112233445566778899aabbccddeeff00112233"),
        ("v", "1"),
    ])
    .unwrap();
    let mut d = Vec::new();
    dproto::encode(&a, &mut d).unwrap();
    write("discovery_proto", "announce", &d);
    a.leaving = true;
    a.metadata = Metadata::empty();
    d.clear();
    dproto::encode(&a, &mut d).unwrap();
    write("discovery_proto", "leaving", &d);

    // PROXY protocol: options (0x01: parse; the high nibble is how many cut bytes
    // follow the 2-byte limit), limit 0 (the default cap), cuts, then headers.
    let a = "192.0.2.1:56324".parse().unwrap();
    let b = "198.51.100.7:443".parse().unwrap();
    let six = "[2001:db8::1]:80".parse().unwrap();
    let parse_seed = |name: &str, header: &[u8]| {
        let mut v = vec![0x31u8, 0, 0, 7, 9, 20];
        v.extend_from_slice(header);
        v.extend_from_slice(b"payload");
        write("proxy_protocol", name, &v);
    };
    let mut h = Vec::new();
    pp::encode_v1(a, b, &mut h);
    parse_seed("v1-tcp4", &h);
    h.clear();
    pp::encode_v1(a, six, &mut h);
    parse_seed("v1-tcp6", &h);
    parse_seed("v1-unknown", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
    h.clear();
    pp::encode_v2(a, b, &mut h);
    parse_seed("v2-inet", &h);
    h.clear();
    pp::encode_v2_local(&mut h);
    parse_seed("v2-local", &h);
    h.clear();
    let tlvs = [
        Tlv {
            kind: pp::TLV_ALPN,
            value: b"h2",
        },
        Tlv {
            kind: pp::TLV_AUTHORITY,
            value: b"example.org",
        },
        Tlv {
            kind: pp::TLV_UNIQUE_ID,
            value: b"id-1",
        },
        Tlv {
            kind: pp::TLV_SSL,
            value: &[1, 0, 0, 0, 0],
        },
    ];
    let extras = V2Extras {
        dgram: true,
        tlvs: &tlvs,
        crc32c: true,
    };
    pp::encode_v2_with(Some((six, a)), &extras, &mut h).unwrap();
    parse_seed("v2-tlvs-crc", &h);

    // SOCKS5 UDP: options (even: parse), then a datagram.
    for (name, t) in [
        ("v4", UdpTarget::Addr(a)),
        ("v6", UdpTarget::Addr(six)),
        (
            "domain",
            UdpTarget::Domain {
                host: "example.org",
                port: 53,
            },
        ),
    ] {
        let mut d = vec![0u8];
        socks5_udp::encode_udp_header(&t, &mut d).unwrap();
        d.extend_from_slice(b"datagram");
        write("socks5_udp", name, &d);
    }

    // ut_metadata: options (even: codec; the byte also picks the metadata size a
    // request is served from), then a payload.
    for (name, m) in [
        ("request", MetadataMsg::Request { piece: 1 }),
        ("reject", MetadataMsg::Reject { piece: 0 }),
        (
            "data",
            MetadataMsg::Data {
                piece: 0,
                total_size: 5,
                data: b"d1:xe",
            },
        ),
    ] {
        let mut v = vec![0x40u8];
        m.encode(&mut v);
        write("metadata", name, &v);
    }

    // ut_pex: options (even: decode), then a payload.
    let msg = PexMessage {
        added: vec![
            PexPeer {
                addr: a,
                flags: PexFlags::SEED | PexFlags::UTP,
            },
            PexPeer {
                addr: six,
                flags: PexFlags::ENCRYPTION,
            },
        ],
        dropped: vec![b, "[2001:db8::2]:6881".parse().unwrap()],
    };
    let mut v = vec![0u8];
    msg.encode(&mut v).unwrap();
    write("pex", "added-dropped", &v);

    // Magnet links: options (0: "magnet:?" is prepended), then the query.
    write(
        "magnet",
        "full",
        b"\x00xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn=Some+Name%21\
          &tr=udp%3A%2F%2Ftracker.example%3A80&tr=http://t.example/announce\
          &x.pe=192.0.2.1:6881&x.pe=[2001:db8::1]:51413&x.pe=Host.Example:1&ws=x",
    );
    write(
        "magnet",
        "base32-v2",
        b"\x00xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK&xt.1=urn:btmh:1220\
          d2474e86c95b19b8bcfdb92bc12c9d44667cfa36d2474e86c95b19b8bcfdb92b",
    );

    // BEP 10 handshake as the session reads it: options (even: parse), payload.
    let ours = PeerExtHandshake::ours(
        Some(40_000),
        250,
        "reactor 0.1",
        Some(6881),
        Some("192.0.2.1".parse().unwrap()),
    );
    write(
        "ext_handshake",
        "ours",
        &[&[0u8][..], &ours.encode()].concat(),
    );
    write(
        "ext_handshake",
        "libtorrent",
        b"\x00d1:md11:ut_metadatai3e6:ut_pexi1ee13:metadata_sizei31235e1:pi6881e4:reqqi500e1:v17:libtorrent 2.0.116:yourip4:\x7f\x00\x00\x01e",
    );
}
