//! SOCKS5 client encoders against the server's parsers, and a whole handshake.
//!
//! Input: methods, credentials, a command and target, a reply and bound address.
//! Properties: each encoder either refuses (and writes nothing) or writes a
//! message the matching parser reads back to the same values, consuming it all,
//! with every strict prefix "need more"; the encoders refuse exactly what the
//! wire cannot carry; a client speaking through the encoders gets its request
//! through the server's `Handshake`, with the bytes after it left as tunnel data.
#![no_main]

use std::net::SocketAddr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor_proxy::socks5::{self, Command, Handshake, Reply, Step, Target};

#[derive(Arbitrary, Debug)]
enum T {
    Addr(SocketAddr),
    Domain(String, u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    methods: Vec<u8>,
    user: Vec<u8>,
    pass: Vec<u8>,
    command: u8,
    target: T,
    reply: u8,
    bound: Option<SocketAddr>,
    payload: Vec<u8>,
    use_auth: bool,
}

/// A socket address as the wire carries it (no flow info or scope id).
fn on_wire(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => SocketAddr::new(v6.ip().to_owned().into(), v6.port()),
        v4 => v4,
    }
}

fuzz_target!(|i: Input| {
    let command =
        [Command::Connect, Command::Bind, Command::UdpAssociate][usize::from(i.command % 3)];
    let target = match &i.target {
        T::Addr(a) => Target::Addr(on_wire(*a)),
        T::Domain(h, p) => Target::Domain {
            host: h.clone(),
            port: *p,
        },
    };

    let mut g = Vec::new();
    match socks5::encode_greeting(&i.methods, &mut g) {
        Ok(()) => {
            let (parsed, n) = socks5::parse_greeting(&g).unwrap().unwrap();
            assert_eq!((parsed.methods, n), (&i.methods[..], g.len()));
            assert!((0..g.len()).all(|k| socks5::parse_greeting(&g[..k]) == Ok(None)));
        }
        Err(_) => {
            assert!(g.is_empty());
            assert!(i.methods.is_empty() || i.methods.len() > 255);
        }
    }

    let mut up = Vec::new();
    match socks5::encode_userpass(&i.user, &i.pass, &mut up) {
        Ok(()) => {
            let (parsed, n) = socks5::parse_userpass(&up).unwrap().unwrap();
            assert_eq!(
                (parsed.user, parsed.pass, n),
                (&i.user[..], &i.pass[..], up.len())
            );
            assert!((0..up.len()).all(|k| matches!(socks5::parse_userpass(&up[..k]), Ok(None))));
        }
        Err(_) => {
            assert!(up.is_empty());
            let ok = |v: &[u8]| (1..=255).contains(&v.len());
            assert!(!ok(&i.user) || !ok(&i.pass));
        }
    }

    let mut req = Vec::new();
    let encoded = socks5::encode_request(command, &target, &mut req);
    match &encoded {
        Ok(()) => {
            let (parsed, n) = socks5::parse_request(&req).unwrap().unwrap();
            assert_eq!(n, req.len());
            assert_eq!(parsed.command, command);
            assert_eq!(parsed.target, target);
            assert!((0..req.len()).all(|k| matches!(socks5::parse_request(&req[..k]), Ok(None))));
        }
        Err(_) => {
            assert!(req.is_empty());
            let T::Domain(h, _) = &i.target else {
                panic!("an address always encodes")
            };
            assert!(h.is_empty() || h.len() > 255 || h.chars().any(char::is_control));
        }
    }

    if let Some(code) = Reply::from_code(i.reply) {
        let mut r = Vec::new();
        let bound = i.bound.map(on_wire);
        socks5::encode_reply(code, bound, &mut r);
        let (rep, addr, n) = socks5::parse_reply(&r).unwrap().unwrap();
        assert_eq!((rep, n), (i.reply, r.len()));
        let want = bound.unwrap_or_else(|| "0.0.0.0:0".parse().unwrap());
        assert_eq!(addr, Target::Addr(want));
    }

    // A whole conversation through the encoders.
    let (Ok(()), true) = (&encoded, !i.methods.is_empty() && i.methods.len() <= 255) else {
        return;
    };
    let auth = i.use_auth.then(|| (i.user.clone(), i.pass.clone()));
    let mut stream = Vec::new();
    let mut methods = i.methods.clone();
    let wanted = if auth.is_some() {
        socks5::METHOD_USERPASS
    } else {
        socks5::METHOD_NO_AUTH
    };
    if !methods.contains(&wanted) {
        methods.pop();
        methods.push(wanted);
    }
    socks5::encode_greeting(&methods, &mut stream).unwrap();
    if auth.is_some() {
        if up.is_empty() {
            return;
        }
        stream.extend_from_slice(&up);
    }
    stream.extend_from_slice(&req);
    stream.extend_from_slice(&i.payload);
    let mut hs = Handshake::new(auth.clone());
    let mut out = Vec::new();
    let (n, step) = hs
        .feed(&stream, &mut out)
        .expect("an honest client is served");
    let Step::Request(got) = step else {
        panic!("request not reached")
    };
    assert_eq!((got.command, &got.target), (command, &target));
    assert_eq!(&stream[n..], &i.payload[..]);
    let mut want = socks5::encode_method_selection(wanted).to_vec();
    if auth.is_some() {
        want.extend_from_slice(&socks5::encode_auth_status(true));
    }
    assert_eq!(out, want);
});
