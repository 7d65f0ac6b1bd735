//! Sans-io SOCKS5 codec: server side of RFC 1928 with RFC 1929 username/password
//! authentication, plus the client-side encoders/parsers needed to test it (and for a
//! future SOCKS5 client).
//!
//! What it is for: an event-loop proxy handler keeps a receive buffer, calls
//! [`Handshake::feed`] with the unconsumed bytes, writes whatever `feed` appended to its
//! output buffer, drops the `consumed` bytes and, once a [`Request`] comes out, connects
//! (or resolves) on its own and answers with [`encode_reply`] (mapping connect errors via
//! [`Reply::from_io_error`]). Any bytes after the request are tunnel payload and are
//! never consumed by this module.
//!
//! What it must not do: no sockets, no name resolution, no clock, no threads, no
//! unbounded buffering and no panics on any input. Every message has a hard size bound
//! ([`MAX_GREETING_LEN`], [`MAX_USERPASS_LEN`], [`MAX_REQUEST_LEN`]); while `feed` answers
//! [`Step::NeedMore`] the unconsumed remainder is always a strict prefix of one message,
//! so it is shorter than [`MAX_MESSAGE_LEN`] and a handler may cap its buffer there.
//!
//! Leniency decisions (all deliberate):
//! - The reserved byte of a request/reply is ignored even when nonzero: RFC 1928 only
//!   says it "must be 0", rejecting would buy nothing and a stray value from an odd
//!   client is harmless (curl and friends send 0 anyway).
//! - A greeting with zero methods parses; the server then answers "no acceptable methods".
//! - RFC 1929 says ULEN/PLEN are 1..=255, but the parser accepts 0 (the credentials then
//!   simply fail to match); the encoder is strict.
//! - Domain names are not resolved or normalised here; an IP literal sent as a domain
//!   stays a [`Target::Domain`]. Empty, non-UTF-8 or control-character names are rejected
//!   and answered with [`Reply::GeneralFailure`] (0x01): RFC 1928 has no dedicated code
//!   and 0x04 "host unreachable" would wrongly suggest a lookup was attempted.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// SOCKS protocol version byte (RFC 1928).
pub const VERSION: u8 = 0x05;
/// Username/password subnegotiation version byte (RFC 1929).
pub const AUTH_VERSION: u8 = 0x01;
/// Method: no authentication required.
pub const METHOD_NO_AUTH: u8 = 0x00;
/// Method: username/password (RFC 1929).
pub const METHOD_USERPASS: u8 = 0x02;
/// Method-selection answer: none of the offered methods is acceptable.
pub const METHOD_NO_ACCEPTABLE: u8 = 0xFF;
/// Address type: IPv4 (4 bytes).
pub const ATYP_IPV4: u8 = 0x01;
/// Address type: domain name (1 length byte + name).
pub const ATYP_DOMAIN: u8 = 0x03;
/// Address type: IPv6 (16 bytes).
pub const ATYP_IPV6: u8 = 0x04;

/// Largest possible greeting: VER, NMETHODS, up to 255 methods.
pub const MAX_GREETING_LEN: usize = 2 + 255;
/// Largest possible RFC 1929 request: VER, ULEN, user, PLEN, pass.
pub const MAX_USERPASS_LEN: usize = 3 + 255 + 255;
/// Largest possible request (or reply): VER, CMD, RSV, ATYP, 1+255 name bytes, port.
pub const MAX_REQUEST_LEN: usize = 4 + 1 + 255 + 2;
/// Largest single message the handshake may wait for; see the module docs.
pub const MAX_MESSAGE_LEN: usize = MAX_USERPASS_LEN;

/// Longest domain name the wire format can carry (one length byte).
pub const MAX_DOMAIN_LEN: usize = 255;

// Linux errno values, used only when std could not classify an error (ErrorKind::Other
// or an uncategorised kind); other platforms rely on ErrorKind alone.
#[cfg(any(target_os = "linux", target_os = "android"))]
mod errno {
    pub(super) const ETIMEDOUT: i32 = 110;
    pub(super) const ECONNREFUSED: i32 = 111;
    pub(super) const ENETDOWN: i32 = 100;
    pub(super) const ENETUNREACH: i32 = 101;
    pub(super) const EHOSTDOWN: i32 = 112;
    pub(super) const EHOSTUNREACH: i32 = 113;
}

/// A SOCKS5 command (the CMD byte of a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// 0x01: open a TCP connection to the target.
    Connect,
    /// 0x02: listen for one inbound TCP connection.
    Bind,
    /// 0x03: relay UDP datagrams.
    UdpAssociate,
}

impl Command {
    /// The wire value of this command.
    pub fn code(self) -> u8 {
        match self {
            Command::Connect => 0x01,
            Command::Bind => 0x02,
            Command::UdpAssociate => 0x03,
        }
    }

    /// Decodes a CMD byte; `None` for values RFC 1928 does not define.
    pub fn from_code(code: u8) -> Option<Command> {
        match code {
            0x01 => Some(Command::Connect),
            0x02 => Some(Command::Bind),
            0x03 => Some(Command::UdpAssociate),
            _ => None,
        }
    }
}

/// Where the client wants to go (or, in a reply, the bound address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A literal IPv4 or IPv6 socket address.
    Addr(SocketAddr),
    /// A host name still to be resolved by the caller. `host` is non-empty, at most
    /// 255 bytes, valid UTF-8 and free of control characters.
    Domain {
        /// The host name exactly as sent (not lower-cased, not resolved).
        host: String,
        /// The destination port.
        port: u16,
    },
}

impl Target {
    /// The destination port, whatever the address type.
    pub fn port(&self) -> u16 {
        match self {
            Target::Addr(a) => a.port(),
            Target::Domain { port, .. } => *port,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Domain { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A parsed SOCKS5 request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    /// What the client asks for. The codec parses all three commands; a handler that
    /// does not implement one answers [`Reply::CommandNotSupported`] itself.
    pub command: Command,
    /// The destination.
    pub target: Target,
}

/// A SOCKS5 reply code (RFC 1928 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reply {
    /// 0x00 succeeded.
    Succeeded,
    /// 0x01 general SOCKS server failure.
    GeneralFailure,
    /// 0x02 connection not allowed by ruleset.
    NotAllowed,
    /// 0x03 network unreachable.
    NetworkUnreachable,
    /// 0x04 host unreachable.
    HostUnreachable,
    /// 0x05 connection refused.
    ConnectionRefused,
    /// 0x06 TTL expired (also used for connect timeouts).
    TtlExpired,
    /// 0x07 command not supported.
    CommandNotSupported,
    /// 0x08 address type not supported.
    AddressTypeNotSupported,
}

impl Reply {
    /// Every reply code, in wire order.
    pub const ALL: [Reply; 9] = [
        Reply::Succeeded,
        Reply::GeneralFailure,
        Reply::NotAllowed,
        Reply::NetworkUnreachable,
        Reply::HostUnreachable,
        Reply::ConnectionRefused,
        Reply::TtlExpired,
        Reply::CommandNotSupported,
        Reply::AddressTypeNotSupported,
    ];

    /// The REP byte.
    pub fn code(self) -> u8 {
        match self {
            Reply::Succeeded => 0x00,
            Reply::GeneralFailure => 0x01,
            Reply::NotAllowed => 0x02,
            Reply::NetworkUnreachable => 0x03,
            Reply::HostUnreachable => 0x04,
            Reply::ConnectionRefused => 0x05,
            Reply::TtlExpired => 0x06,
            Reply::CommandNotSupported => 0x07,
            Reply::AddressTypeNotSupported => 0x08,
        }
    }

    /// Decodes a REP byte; `None` for the unassigned values 0x09..=0xFF.
    pub fn from_code(code: u8) -> Option<Reply> {
        Reply::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Maps a failed connect/resolve to the reply the client should see.
    ///
    /// Mapping: `ConnectionRefused` → 0x05, `HostUnreachable` → 0x04,
    /// `NetworkUnreachable`/`NetworkDown` → 0x03, `TimedOut` → 0x06,
    /// `PermissionDenied` → 0x02, `NotFound` → 0x04 (callers report failed name
    /// resolution as `NotFound`: the host cannot be reached because it has no address),
    /// `AddrNotAvailable` → 0x04 (no usable local/remote address for that host).
    /// Anything else is looked up by raw errno on Linux (ENETUNREACH/ENETDOWN → 0x03,
    /// EHOSTUNREACH/EHOSTDOWN → 0x04, ECONNREFUSED → 0x05, ETIMEDOUT → 0x06) in case it
    /// arrived with an uninformative kind; otherwise 0x01.
    pub fn from_io_error(err: &io::Error) -> Reply {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
            io::ErrorKind::HostUnreachable => Reply::HostUnreachable,
            io::ErrorKind::NetworkUnreachable | io::ErrorKind::NetworkDown => {
                Reply::NetworkUnreachable
            }
            io::ErrorKind::TimedOut => Reply::TtlExpired,
            io::ErrorKind::PermissionDenied => Reply::NotAllowed,
            io::ErrorKind::NotFound | io::ErrorKind::AddrNotAvailable => Reply::HostUnreachable,
            _ => Self::from_raw_os_error(err.raw_os_error()),
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn from_raw_os_error(code: Option<i32>) -> Reply {
        match code {
            Some(errno::ENETUNREACH | errno::ENETDOWN) => Reply::NetworkUnreachable,
            Some(errno::EHOSTUNREACH | errno::EHOSTDOWN) => Reply::HostUnreachable,
            Some(errno::ECONNREFUSED) => Reply::ConnectionRefused,
            Some(errno::ETIMEDOUT) => Reply::TtlExpired,
            _ => Reply::GeneralFailure,
        }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn from_raw_os_error(_code: Option<i32>) -> Reply {
        Reply::GeneralFailure
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Reply::Succeeded => "succeeded",
            Reply::GeneralFailure => "general SOCKS server failure",
            Reply::NotAllowed => "connection not allowed by ruleset",
            Reply::NetworkUnreachable => "network unreachable",
            Reply::HostUnreachable => "host unreachable",
            Reply::ConnectionRefused => "connection refused",
            Reply::TtlExpired => "TTL expired",
            Reply::CommandNotSupported => "command not supported",
            Reply::AddressTypeNotSupported => "address type not supported",
        };
        write!(f, "{text} (0x{:02x})", self.code())
    }
}

/// Why a domain name was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainError {
    /// Zero-length name.
    Empty,
    /// Longer than [`MAX_DOMAIN_LEN`] bytes (only possible when encoding).
    TooLong(usize),
    /// Not valid UTF-8.
    NotUtf8,
    /// Contains a control character (C0, DEL or C1), which could forge log lines or
    /// confuse resolvers.
    ControlChar,
}

impl fmt::Display for DomainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainError::Empty => write!(f, "domain name is empty"),
            DomainError::TooLong(n) => {
                write!(f, "domain name is {n} bytes, at most {MAX_DOMAIN_LEN} fit")
            }
            DomainError::NotUtf8 => write!(f, "domain name is not valid UTF-8"),
            DomainError::ControlChar => write!(f, "domain name contains a control character"),
        }
    }
}

impl std::error::Error for DomainError {}

/// A malformed or unsupported message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The SOCKS version byte was not 0x05: not a SOCKS5 peer, close without answering.
    BadVersion(u8),
    /// The RFC 1929 version byte was not 0x01.
    BadAuthVersion(u8),
    /// CMD byte outside 0x01..=0x03; answer [`Reply::CommandNotSupported`].
    UnknownCommand(u8),
    /// ATYP byte not 0x01/0x03/0x04; answer [`Reply::AddressTypeNotSupported`].
    UnknownAddressType(u8),
    /// Unusable domain name; answer [`Reply::GeneralFailure`].
    InvalidDomain(DomainError),
}

impl ParseError {
    /// The SOCKS reply a server should send before closing, if any. Version errors get
    /// none: the peer is not speaking SOCKS5, so nothing we send would be understood.
    /// (RFC 1929 errors are answered with an auth status, not a SOCKS reply.)
    pub fn reply(&self) -> Option<Reply> {
        match self {
            ParseError::BadVersion(_) | ParseError::BadAuthVersion(_) => None,
            ParseError::UnknownCommand(_) => Some(Reply::CommandNotSupported),
            ParseError::UnknownAddressType(_) => Some(Reply::AddressTypeNotSupported),
            ParseError::InvalidDomain(_) => Some(Reply::GeneralFailure),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::BadVersion(v) => write!(
                f,
                "SOCKS version byte is 0x{v:02x}, expected 0x05 (peer is not a SOCKS5 client/server)"
            ),
            ParseError::BadAuthVersion(v) => write!(
                f,
                "username/password subnegotiation version is 0x{v:02x}, expected 0x01 (RFC 1929)"
            ),
            ParseError::UnknownCommand(c) => {
                write!(f, "unknown SOCKS5 command 0x{c:02x} (valid: 0x01..=0x03)")
            }
            ParseError::UnknownAddressType(a) => write!(
                f,
                "unknown SOCKS5 address type 0x{a:02x} (valid: 0x01 IPv4, 0x03 domain, 0x04 IPv6)"
            ),
            ParseError::InvalidDomain(e) => write!(f, "invalid destination: {e}"),
        }
    }
}

impl std::error::Error for ParseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ParseError::InvalidDomain(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a client-side message could not be encoded. Nothing is written on error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A greeting must offer at least one method.
    NoMethods,
    /// A greeting can offer at most 255 methods.
    TooManyMethods(usize),
    /// RFC 1929 usernames are 1..=255 bytes.
    UsernameLength(usize),
    /// RFC 1929 passwords are 1..=255 bytes.
    PasswordLength(usize),
    /// The target domain cannot be sent.
    InvalidDomain(DomainError),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::NoMethods => write!(f, "a SOCKS5 greeting must offer at least one method"),
            EncodeError::TooManyMethods(n) => {
                write!(
                    f,
                    "{n} methods offered, a SOCKS5 greeting carries at most 255"
                )
            }
            EncodeError::UsernameLength(n) => {
                write!(f, "username is {n} bytes, RFC 1929 allows 1..=255")
            }
            EncodeError::PasswordLength(n) => {
                write!(f, "password is {n} bytes, RFC 1929 allows 1..=255")
            }
            EncodeError::InvalidDomain(e) => write!(f, "cannot encode target: {e}"),
        }
    }
}

impl std::error::Error for EncodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EncodeError::InvalidDomain(e) => Some(e),
            _ => None,
        }
    }
}

/// A parsed client greeting, borrowing the offered methods from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting<'a> {
    /// The METHODS bytes as offered (may be empty).
    pub methods: &'a [u8],
}

impl Greeting<'_> {
    /// Whether the client offered `method`.
    pub fn offers(&self, method: u8) -> bool {
        self.methods.contains(&method)
    }
}

/// Parsed RFC 1929 credentials, borrowed from the input.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UserPass<'a> {
    /// UNAME bytes (not necessarily UTF-8).
    pub user: &'a [u8],
    /// PASSWD bytes (not necessarily UTF-8).
    pub pass: &'a [u8],
}

// Hand-written so a stray `{:?}` in a log line cannot leak a password.
impl fmt::Debug for UserPass<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserPass")
            .field("user", &String::from_utf8_lossy(self.user))
            .field("pass", &"<redacted>")
            .finish()
    }
}

/// Parses a client greeting (VER, NMETHODS, METHODS). `Ok(None)`: need more bytes.
pub fn parse_greeting(input: &[u8]) -> Result<Option<(Greeting<'_>, usize)>, ParseError> {
    let Some(&ver) = input.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(ParseError::BadVersion(ver));
    }
    let Some(&n) = input.get(1) else {
        return Ok(None);
    };
    let end = 2 + usize::from(n);
    Ok(input.get(2..end).map(|methods| (Greeting { methods }, end)))
}

/// Parses an RFC 1929 username/password request. `Ok(None)`: need more bytes.
pub fn parse_userpass(input: &[u8]) -> Result<Option<(UserPass<'_>, usize)>, ParseError> {
    let Some(&ver) = input.first() else {
        return Ok(None);
    };
    if ver != AUTH_VERSION {
        return Err(ParseError::BadAuthVersion(ver));
    }
    let Some(&ulen) = input.get(1) else {
        return Ok(None);
    };
    let user_end = 2 + usize::from(ulen);
    let Some(user) = input.get(2..user_end) else {
        return Ok(None);
    };
    let Some(&plen) = input.get(user_end) else {
        return Ok(None);
    };
    let pass_start = user_end + 1;
    let pass_end = pass_start + usize::from(plen);
    let Some(pass) = input.get(pass_start..pass_end) else {
        return Ok(None);
    };
    Ok(Some((UserPass { user, pass }, pass_end)))
}

/// Parses a request (VER, CMD, RSV, ATYP, DST.ADDR, DST.PORT). `Ok(None)`: need more.
///
/// Errors are reported as soon as the offending byte arrives, so a hostile client
/// cannot make the server wait for the rest of a message that is already invalid.
/// Bytes after the request are not consumed.
pub fn parse_request(input: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
    let Some(&ver) = input.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(ParseError::BadVersion(ver));
    }
    let Some(&cmd) = input.get(1) else {
        return Ok(None);
    };
    let command = Command::from_code(cmd).ok_or(ParseError::UnknownCommand(cmd))?;
    // input[2] is RSV: ignored on purpose, see the module docs.
    let Some(&atyp) = input.get(3) else {
        return Ok(None);
    };
    let rest = input.get(4..).unwrap_or(&[]);
    Ok(parse_address(atyp, rest)?.map(|(target, n)| (Request { command, target }, 4 + n)))
}

/// Parses a server reply (client side). Returns the raw REP byte (map it with
/// [`Reply::from_code`]; unassigned values are passed through, not rejected), the bound
/// address and the bytes consumed. `Ok(None)`: need more bytes.
pub fn parse_reply(input: &[u8]) -> Result<Option<(u8, Target, usize)>, ParseError> {
    let Some(&ver) = input.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(ParseError::BadVersion(ver));
    }
    let Some(&rep) = input.get(1) else {
        return Ok(None);
    };
    let Some(&atyp) = input.get(3) else {
        return Ok(None);
    };
    let rest = input.get(4..).unwrap_or(&[]);
    Ok(parse_address(atyp, rest)?.map(|(target, n)| (rep, target, 4 + n)))
}

/// Parses the server's method selection (client side): the chosen method and 2.
pub fn parse_method_selection(input: &[u8]) -> Result<Option<(u8, usize)>, ParseError> {
    let Some(&ver) = input.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(ParseError::BadVersion(ver));
    }
    Ok(input.get(1).map(|&m| (m, 2)))
}

/// Parses an RFC 1929 status (client side): `true` if authentication succeeded, and 2.
pub fn parse_auth_status(input: &[u8]) -> Result<Option<(bool, usize)>, ParseError> {
    let Some(&ver) = input.first() else {
        return Ok(None);
    };
    if ver != AUTH_VERSION {
        return Err(ParseError::BadAuthVersion(ver));
    }
    Ok(input.get(1).map(|&status| (status == 0x00, 2)))
}

/// Parses ATYP-specific address + port from `rest` (the bytes after ATYP).
fn parse_address(atyp: u8, rest: &[u8]) -> Result<Option<(Target, usize)>, ParseError> {
    match atyp {
        ATYP_IPV4 => {
            let Some(b) = rest.first_chunk::<6>() else {
                return Ok(None);
            };
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = u16::from_be_bytes([b[4], b[5]]);
            Ok(Some((
                Target::Addr(SocketAddr::V4(SocketAddrV4::new(ip, port))),
                6,
            )))
        }
        ATYP_IPV6 => {
            let Some(b) = rest.first_chunk::<18>() else {
                return Ok(None);
            };
            let (ip, port) = b.split_at(16);
            let ip: [u8; 16] = ip.try_into().unwrap_or([0; 16]);
            let port: [u8; 2] = port.try_into().unwrap_or([0; 2]);
            let addr = SocketAddrV6::new(Ipv6Addr::from(ip), u16::from_be_bytes(port), 0, 0);
            Ok(Some((Target::Addr(SocketAddr::V6(addr)), 18)))
        }
        ATYP_DOMAIN => {
            let Some(&len) = rest.first() else {
                return Ok(None);
            };
            if len == 0 {
                return Err(ParseError::InvalidDomain(DomainError::Empty));
            }
            let len = usize::from(len);
            let end = 1 + len + 2;
            let Some(body) = rest.get(1..end) else {
                return Ok(None);
            };
            let Some((host, port)) = body.split_at_checked(len) else {
                return Ok(None);
            };
            let host = validate_domain(host).map_err(ParseError::InvalidDomain)?;
            let port = match port {
                [hi, lo] => u16::from_be_bytes([*hi, *lo]),
                _ => return Ok(None),
            };
            Ok(Some((
                Target::Domain {
                    host: host.to_owned(),
                    port,
                },
                end,
            )))
        }
        other => Err(ParseError::UnknownAddressType(other)),
    }
}

/// Checks a domain name against the rules of [`Target::Domain`].
fn validate_domain(host: &[u8]) -> Result<&str, DomainError> {
    if host.is_empty() {
        return Err(DomainError::Empty);
    }
    if host.len() > MAX_DOMAIN_LEN {
        return Err(DomainError::TooLong(host.len()));
    }
    let s = std::str::from_utf8(host).map_err(|_| DomainError::NotUtf8)?;
    if s.chars().any(char::is_control) {
        return Err(DomainError::ControlChar);
    }
    Ok(s)
}

/// Appends ATYP + address + port. Validates before writing so `out` is untouched on error.
fn encode_target(target: &Target, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match target {
        Target::Addr(addr) => encode_socket_addr(*addr, out),
        Target::Domain { host, port } => {
            validate_domain(host.as_bytes()).map_err(EncodeError::InvalidDomain)?;
            let len = u8::try_from(host.len())
                .map_err(|_| EncodeError::InvalidDomain(DomainError::TooLong(host.len())))?;
            out.push(ATYP_DOMAIN);
            out.push(len);
            out.extend_from_slice(host.as_bytes());
            out.extend_from_slice(&port.to_be_bytes());
        }
    }
    Ok(())
}

fn encode_socket_addr(addr: SocketAddr, out: &mut Vec<u8>) {
    match addr {
        SocketAddr::V4(a) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&a.ip().octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// The server's method-selection message.
pub fn encode_method_selection(method: u8) -> [u8; 2] {
    [VERSION, method]
}

/// The server's RFC 1929 status message (0x00 success, 0x01 failure).
pub fn encode_auth_status(ok: bool) -> [u8; 2] {
    [AUTH_VERSION, if ok { 0x00 } else { 0x01 }]
}

/// Appends a server reply. With `bound == None` the address is IPv4 `0.0.0.0:0`, which
/// is what clients expect on failures and when the bound address is irrelevant.
pub fn encode_reply(reply: Reply, bound: Option<SocketAddr>, out: &mut Vec<u8>) {
    out.extend_from_slice(&[VERSION, reply.code(), 0x00]);
    let bound = bound.unwrap_or(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)));
    encode_socket_addr(bound, out);
}

/// Appends a client greeting offering `methods` (1..=255 of them).
pub fn encode_greeting(methods: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if methods.is_empty() {
        return Err(EncodeError::NoMethods);
    }
    let n = u8::try_from(methods.len()).map_err(|_| EncodeError::TooManyMethods(methods.len()))?;
    out.push(VERSION);
    out.push(n);
    out.extend_from_slice(methods);
    Ok(())
}

/// Appends a client RFC 1929 request; both fields must be 1..=255 bytes.
pub fn encode_userpass(user: &[u8], pass: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let ulen = u8::try_from(user.len())
        .ok()
        .filter(|&n| n > 0)
        .ok_or(EncodeError::UsernameLength(user.len()))?;
    let plen = u8::try_from(pass.len())
        .ok()
        .filter(|&n| n > 0)
        .ok_or(EncodeError::PasswordLength(pass.len()))?;
    out.push(AUTH_VERSION);
    out.push(ulen);
    out.extend_from_slice(user);
    out.push(plen);
    out.extend_from_slice(pass);
    Ok(())
}

/// Appends a client request.
pub fn encode_request(
    command: Command,
    target: &Target,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[VERSION, command.code(), 0x00]);
    if let Err(e) = encode_target(target, out) {
        out.truncate(start);
        return Err(e);
    }
    Ok(())
}

/// Compares credentials without an early exit on the first differing byte, so the
/// time taken does not reveal how long a correct prefix was. ("-ish": the supplied
/// length, which the attacker knows anyway, and whether it exceeds the expected length
/// can still be observed.)
fn ct_eq(supplied: &[u8], expected: &[u8]) -> bool {
    let mut diff = supplied.len() ^ expected.len();
    for (i, &s) in supplied.iter().enumerate() {
        let e = expected.get(i).copied().unwrap_or(0);
        diff |= usize::from(s ^ e);
    }
    std::hint::black_box(diff) == 0
}

/// What [`Handshake::feed`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The input ends inside a message; call again with the unconsumed bytes plus more.
    NeedMore,
    /// The handshake is complete. The server must now act on the request and send
    /// exactly one reply with [`encode_reply`].
    Request(Request),
}

/// Why the handshake failed. In every case `feed` has already appended to `out` the
/// bytes the server must send before closing (possibly none, see each variant), after
/// any output produced earlier in the same call: the handler flushes `out`, then closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The greeting was malformed. Nothing was written.
    Greeting(ParseError),
    /// The client offered no method this server accepts (`required` is the one it
    /// needed). `05 FF` was written.
    NoAcceptableMethod {
        /// The method the server would have selected.
        required: u8,
    },
    /// The RFC 1929 message was malformed. A failure status `01 01` was written.
    Auth(ParseError),
    /// Wrong username or password. A failure status `01 01` was written.
    AuthFailed,
    /// The request was malformed or unsupported. If [`ParseError::reply`] is `Some`,
    /// that reply (with bound address 0.0.0.0:0) was written; otherwise nothing.
    Request(ParseError),
    /// `feed` was called after the handshake had already finished or failed. Nothing
    /// was written; this is a bug in the caller.
    Finished,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Greeting(e) => write!(f, "bad SOCKS5 greeting: {e}"),
            HandshakeError::NoAcceptableMethod { required } => {
                let name = match *required {
                    METHOD_NO_AUTH => "no authentication",
                    METHOD_USERPASS => "username/password",
                    _ => "other",
                };
                write!(
                    f,
                    "client offered no acceptable auth method (server requires 0x{required:02x} {name})"
                )
            }
            HandshakeError::Auth(e) => write!(f, "bad SOCKS5 authentication message: {e}"),
            HandshakeError::AuthFailed => write!(
                f,
                "SOCKS5 authentication failed: wrong username or password"
            ),
            HandshakeError::Request(e) => write!(f, "bad SOCKS5 request: {e}"),
            HandshakeError::Finished => {
                write!(f, "SOCKS5 handshake already finished; feed called again")
            }
        }
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HandshakeError::Greeting(e) | HandshakeError::Auth(e) | HandshakeError::Request(e) => {
                Some(e)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Greeting,
    Auth,
    Request,
    Done,
}

/// Server-side handshake state machine: greeting, optional RFC 1929 auth, request.
pub struct Handshake {
    auth: Option<(Vec<u8>, Vec<u8>)>,
    stage: Stage,
}

// Hand-written so the configured password never reaches a log.
impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("auth_required", &self.auth.is_some())
            .field("stage", &self.stage)
            .finish()
    }
}

impl Handshake {
    /// A new handshake. With `auth = Some((user, pass))` the client must select
    /// username/password and present exactly these credentials; with `None` it must
    /// offer "no authentication" (a client offering only username/password is refused
    /// rather than having arbitrary credentials accepted).
    pub fn new(auth: Option<(Vec<u8>, Vec<u8>)>) -> Handshake {
        Handshake {
            auth,
            stage: Stage::Greeting,
        }
    }

    /// True once a request has been returned or an error reported.
    pub fn is_finished(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Processes as many complete messages from `input` as possible (so a pipelined
    /// greeting + auth + request in one read is handled in one call), appending the
    /// server's answers to `out`. Returns how many bytes of `input` were used: the
    /// caller drops exactly those and passes the rest (plus new data) next time. After
    /// [`Step::Request`] the unconsumed bytes are tunnel payload. On error, see
    /// [`HandshakeError`] for what was written to `out`.
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, Step), HandshakeError> {
        let mut pos = 0usize;
        loop {
            let rest = input.get(pos..).unwrap_or(&[]);
            match self.stage {
                Stage::Greeting => {
                    let (greeting, n) = match parse_greeting(rest) {
                        Ok(Some(v)) => v,
                        Ok(None) => return Ok((pos, Step::NeedMore)),
                        Err(e) => return Err(self.fail(HandshakeError::Greeting(e))),
                    };
                    pos += n;
                    let (required, next) = match self.auth {
                        Some(_) => (METHOD_USERPASS, Stage::Auth),
                        None => (METHOD_NO_AUTH, Stage::Request),
                    };
                    if !greeting.offers(required) {
                        out.extend_from_slice(&encode_method_selection(METHOD_NO_ACCEPTABLE));
                        return Err(self.fail(HandshakeError::NoAcceptableMethod { required }));
                    }
                    out.extend_from_slice(&encode_method_selection(required));
                    self.stage = next;
                }
                Stage::Auth => {
                    let (creds, n) = match parse_userpass(rest) {
                        Ok(Some(v)) => v,
                        Ok(None) => return Ok((pos, Step::NeedMore)),
                        Err(e) => {
                            out.extend_from_slice(&encode_auth_status(false));
                            return Err(self.fail(HandshakeError::Auth(e)));
                        }
                    };
                    pos += n;
                    let ok = match &self.auth {
                        // Non-short-circuit `&` so a wrong user costs the same as a
                        // wrong password.
                        Some((user, pass)) => ct_eq(creds.user, user) & ct_eq(creds.pass, pass),
                        None => false,
                    };
                    out.extend_from_slice(&encode_auth_status(ok));
                    if !ok {
                        return Err(self.fail(HandshakeError::AuthFailed));
                    }
                    self.stage = Stage::Request;
                }
                Stage::Request => {
                    let (request, n) = match parse_request(rest) {
                        Ok(Some(v)) => v,
                        Ok(None) => return Ok((pos, Step::NeedMore)),
                        Err(e) => {
                            if let Some(reply) = e.reply() {
                                encode_reply(reply, None, out);
                            }
                            return Err(self.fail(HandshakeError::Request(e)));
                        }
                    };
                    pos += n;
                    self.stage = Stage::Done;
                    return Ok((pos, Step::Request(request)));
                }
                Stage::Done => return Err(HandshakeError::Finished),
            }
        }
    }

    fn fail(&mut self, err: HandshakeError) -> HandshakeError {
        self.stage = Stage::Done;
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), port))
    }

    fn v6(s: &str, port: u16) -> SocketAddr {
        let ip: Ipv6Addr = s.parse().expect("test literal");
        SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))
    }

    fn domain(host: &str, port: u16) -> Target {
        Target::Domain {
            host: host.to_owned(),
            port,
        }
    }

    /// Every strict prefix must be "need more", never an error. (A macro because the
    /// parsers' return types borrow from their input.)
    macro_rules! assert_prefixes_need_more {
        ($msg:expr, $parse:expr) => {{
            let msg: &[u8] = $msg;
            for i in 0..msg.len() {
                let r = $parse(&msg[..i]);
                assert!(matches!(r, Ok(None)), "prefix {i} of {msg:?} gave {r:?}");
            }
        }};
    }

    // ---------- Reply codes ----------

    #[test]
    fn every_reply_code_encodes() {
        for (i, r) in Reply::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(r.code()), i);
            assert_eq!(Reply::from_code(r.code()), Some(r));
            let mut out = Vec::new();
            encode_reply(r, None, &mut out);
            assert_eq!(out, [5, r.code(), 0, 1, 0, 0, 0, 0, 0, 0]);
            let (code, bound, n) = parse_reply(&out).unwrap().unwrap();
            assert_eq!((code, n), (r.code(), 10));
            assert_eq!(bound, Target::Addr(v4([0, 0, 0, 0], 0)));
            assert!(r.to_string().contains(&format!("0x{:02x}", r.code())));
        }
        for c in 9..=255u8 {
            assert_eq!(Reply::from_code(c), None);
        }
    }

    #[test]
    fn reply_with_bound_addresses_round_trips() {
        let mut out = Vec::new();
        encode_reply(Reply::Succeeded, Some(v4([10, 1, 2, 3], 1080)), &mut out);
        assert_eq!(out, [5, 0, 0, 1, 10, 1, 2, 3, 0x04, 0x38]);
        let a6 = v6("2001:db8::1", 443);
        out.clear();
        encode_reply(Reply::HostUnreachable, Some(a6), &mut out);
        assert_eq!(out.len(), 4 + 16 + 2);
        assert_eq!(&out[..4], &[5, 4, 0, 4]);
        out.extend_from_slice(b"tail");
        assert_eq!(parse_reply(&out), Ok(Some((4, Target::Addr(a6), 22))));
    }

    #[test]
    fn parse_reply_domain_unknown_code_and_errors() {
        let mut msg = vec![5, 0x42, 7, 3, 3];
        msg.extend_from_slice(b"abc");
        msg.extend_from_slice(&[0, 80]);
        assert_prefixes_need_more!(&msg, parse_reply);
        // Unassigned REP codes and nonzero RSV pass through.
        assert_eq!(parse_reply(&msg), Ok(Some((0x42, domain("abc", 80), 10))));
        assert_eq!(parse_reply(&[4]), Err(ParseError::BadVersion(4)));
        assert_eq!(
            parse_reply(&[5, 0, 0, 9]),
            Err(ParseError::UnknownAddressType(9))
        );
        assert_eq!(
            parse_reply(&[5, 0, 0, 3, 0]),
            Err(ParseError::InvalidDomain(DomainError::Empty))
        );
    }

    #[test]
    fn io_error_mapping() {
        use io::ErrorKind as K;
        let cases = [
            (K::ConnectionRefused, Reply::ConnectionRefused),
            (K::HostUnreachable, Reply::HostUnreachable),
            (K::NetworkUnreachable, Reply::NetworkUnreachable),
            (K::NetworkDown, Reply::NetworkUnreachable),
            (K::TimedOut, Reply::TtlExpired),
            (K::PermissionDenied, Reply::NotAllowed),
            (K::NotFound, Reply::HostUnreachable),
            (K::AddrNotAvailable, Reply::HostUnreachable),
            (K::ConnectionReset, Reply::GeneralFailure),
            (K::Other, Reply::GeneralFailure),
            (K::WouldBlock, Reply::GeneralFailure),
        ];
        for (kind, want) in cases {
            let e = io::Error::new(kind, "test");
            assert_eq!(Reply::from_io_error(&e), want, "{kind:?}");
        }
        let named = io::Error::new(K::NotFound, "failed to resolve example.invalid");
        assert_eq!(Reply::from_io_error(&named), Reply::HostUnreachable);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn io_error_mapping_raw_errno() {
        assert_eq!(
            Reply::from_raw_os_error(Some(101)),
            Reply::NetworkUnreachable
        );
        assert_eq!(
            Reply::from_raw_os_error(Some(100)),
            Reply::NetworkUnreachable
        );
        assert_eq!(Reply::from_raw_os_error(Some(113)), Reply::HostUnreachable);
        assert_eq!(Reply::from_raw_os_error(Some(112)), Reply::HostUnreachable);
        assert_eq!(
            Reply::from_raw_os_error(Some(111)),
            Reply::ConnectionRefused
        );
        assert_eq!(Reply::from_raw_os_error(Some(110)), Reply::TtlExpired);
        assert_eq!(Reply::from_raw_os_error(Some(1)), Reply::GeneralFailure);
        assert_eq!(Reply::from_raw_os_error(None), Reply::GeneralFailure);
        // Through the public path, whatever kind std assigns.
        for (errno, want) in [
            (101, Reply::NetworkUnreachable),
            (113, Reply::HostUnreachable),
            (112, Reply::HostUnreachable),
            (111, Reply::ConnectionRefused),
            (110, Reply::TtlExpired),
        ] {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(Reply::from_io_error(&e), want, "errno {errno}");
        }
    }

    // ---------- Greeting / method selection ----------

    #[test]
    fn greeting_parses_and_leaves_trailing() {
        let msg = [5, 2, 0, 2, 0xAA];
        assert_prefixes_need_more!(&msg[..4], parse_greeting);
        let (g, n) = parse_greeting(&msg).unwrap().unwrap();
        assert_eq!(n, 4);
        assert_eq!(g.methods, &[0, 2]);
        assert!(g.offers(METHOD_USERPASS) && !g.offers(1));
        let (g, n) = parse_greeting(&[5, 0]).unwrap().unwrap();
        assert_eq!((g.methods.len(), n), (0, 2));
        assert_eq!(parse_greeting(&[4, 1, 0]), Err(ParseError::BadVersion(4)));
        assert_eq!(parse_greeting(&[0x16]), Err(ParseError::BadVersion(0x16)));
    }

    #[test]
    fn greeting_max_size_and_encoder() {
        let methods: Vec<u8> = (0..=254).collect();
        let mut out = Vec::new();
        encode_greeting(&methods, &mut out).unwrap();
        assert_eq!(out.len(), MAX_GREETING_LEN);
        assert_prefixes_need_more!(&out, parse_greeting);
        let (g, n) = parse_greeting(&out).unwrap().unwrap();
        assert_eq!((g.methods, n), (&methods[..], MAX_GREETING_LEN));

        out.clear();
        assert_eq!(encode_greeting(&[], &mut out), Err(EncodeError::NoMethods));
        assert_eq!(
            encode_greeting(&[0; 256], &mut out),
            Err(EncodeError::TooManyMethods(256))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn method_selection_and_auth_status() {
        assert_eq!(encode_method_selection(2), [5, 2]);
        assert_eq!(encode_auth_status(true), [1, 0]);
        assert_eq!(encode_auth_status(false), [1, 1]);
        assert_eq!(parse_method_selection(&[]), Ok(None));
        assert_eq!(parse_method_selection(&[5]), Ok(None));
        assert_eq!(parse_method_selection(&[5, 0xFF, 9]), Ok(Some((0xFF, 2))));
        assert_eq!(
            parse_method_selection(&[1, 0]),
            Err(ParseError::BadVersion(1))
        );
        assert_eq!(parse_auth_status(&[]), Ok(None));
        assert_eq!(parse_auth_status(&[1]), Ok(None));
        assert_eq!(parse_auth_status(&[1, 0]), Ok(Some((true, 2))));
        assert_eq!(parse_auth_status(&[1, 7]), Ok(Some((false, 2))));
        assert_eq!(
            parse_auth_status(&[5, 0]),
            Err(ParseError::BadAuthVersion(5))
        );
    }

    // ---------- RFC 1929 ----------

    #[test]
    fn userpass_parses_borrows_and_round_trips() {
        let mut out = Vec::new();
        encode_userpass(b"alice", b"s3cret", &mut out).unwrap();
        assert_eq!(out, b"\x01\x05alice\x06s3cret");
        assert_prefixes_need_more!(&out, parse_userpass);
        out.push(0x99);
        let (up, n) = parse_userpass(&out).unwrap().unwrap();
        assert_eq!((up.user, up.pass, n), (&b"alice"[..], &b"s3cret"[..], 14));
        let dbg = format!("{up:?}");
        assert!(dbg.contains("alice") && !dbg.contains("s3cret"));
        // Zero lengths are tolerated by the parser.
        let (up, n) = parse_userpass(&[1, 0, 0]).unwrap().unwrap();
        assert_eq!((up.user, up.pass, n), (&[][..], &[][..], 3));
        assert_eq!(
            parse_userpass(&[5, 1, b'a']),
            Err(ParseError::BadAuthVersion(5))
        );
    }

    #[test]
    fn userpass_max_size_and_encoder_errors() {
        let long = [b'x'; 255];
        let mut out = Vec::new();
        encode_userpass(&long, &long, &mut out).unwrap();
        assert_eq!(out.len(), MAX_USERPASS_LEN);
        assert_eq!(parse_userpass(&out).unwrap().unwrap().1, MAX_USERPASS_LEN);
        out.clear();
        assert_eq!(
            encode_userpass(b"", b"p", &mut out),
            Err(EncodeError::UsernameLength(0))
        );
        assert_eq!(
            encode_userpass(&[0; 256], b"p", &mut out),
            Err(EncodeError::UsernameLength(256))
        );
        assert_eq!(
            encode_userpass(b"u", b"", &mut out),
            Err(EncodeError::PasswordLength(0))
        );
        assert_eq!(
            encode_userpass(b"u", &[0; 300], &mut out),
            Err(EncodeError::PasswordLength(300))
        );
        assert!(out.is_empty());
    }

    // ---------- Requests ----------

    #[test]
    fn request_ipv4() {
        let msg = [5, 1, 0, 1, 93, 184, 216, 34, 0, 80, b'G', b'E', b'T'];
        assert_prefixes_need_more!(&msg[..10], parse_request);
        let (req, n) = parse_request(&msg).unwrap().unwrap();
        assert_eq!(n, 10, "trailing tunnel data must stay unconsumed");
        assert_eq!(req.command, Command::Connect);
        assert_eq!(req.target, Target::Addr(v4([93, 184, 216, 34], 80)));
        assert_eq!(req.target.to_string(), "93.184.216.34:80");
    }

    #[test]
    fn request_ipv6() {
        let a = v6("2001:db8::dead:beef", 8443);
        let mut msg = Vec::new();
        encode_request(Command::Bind, &Target::Addr(a), &mut msg).unwrap();
        assert_eq!(msg.len(), 22);
        assert_eq!(&msg[..4], &[5, 2, 0, 4]);
        assert_prefixes_need_more!(&msg, parse_request);
        let (req, n) = parse_request(&msg).unwrap().unwrap();
        assert_eq!(n, 22);
        assert_eq!(req.command, Command::Bind);
        assert_eq!(req.target, Target::Addr(a));
        assert_eq!(req.target.port(), 8443);
        assert_eq!(req.target.to_string(), "[2001:db8::dead:beef]:8443");
    }

    #[test]
    fn request_domain_and_max_size() {
        let t = domain("example.com", 443);
        let mut msg = Vec::new();
        encode_request(Command::UdpAssociate, &t, &mut msg).unwrap();
        assert_eq!(&msg[..5], &[5, 3, 0, 3, 11]);
        assert_prefixes_need_more!(&msg, parse_request);
        msg.extend_from_slice(b"payload");
        let (req, n) = parse_request(&msg).unwrap().unwrap();
        assert_eq!(n, 4 + 1 + 11 + 2);
        assert_eq!(req.command, Command::UdpAssociate);
        assert_eq!(req.target.port(), 443);
        assert_eq!(req.target.to_string(), "example.com:443");
        assert_eq!(req.target, t);

        let longest = "a".repeat(255);
        msg.clear();
        encode_request(Command::Connect, &domain(&longest, 1), &mut msg).unwrap();
        assert_eq!(msg.len(), MAX_REQUEST_LEN);
        assert_eq!(parse_request(&msg).unwrap().unwrap().1, MAX_REQUEST_LEN);
        // Non-ASCII UTF-8 is allowed.
        msg.clear();
        encode_request(Command::Connect, &domain("bücher.de", 80), &mut msg).unwrap();
        assert_eq!(
            parse_request(&msg).unwrap().unwrap().0.target,
            domain("bücher.de", 80)
        );
    }

    #[test]
    fn request_round_trips_every_command() {
        let targets = [
            Target::Addr(v4([127, 0, 0, 1], 0)),
            Target::Addr(v6("::1", 65535)),
            domain("h", 22),
        ];
        for cmd in [Command::Connect, Command::Bind, Command::UdpAssociate] {
            assert_eq!(Command::from_code(cmd.code()), Some(cmd));
            for t in &targets {
                let mut out = vec![0xEE]; // encoders append, never overwrite
                encode_request(cmd, t, &mut out).unwrap();
                let (req, n) = parse_request(&out[1..]).unwrap().unwrap();
                assert_eq!(n, out.len() - 1);
                assert_eq!(
                    req,
                    Request {
                        command: cmd,
                        target: t.clone()
                    }
                );
            }
        }
    }

    #[test]
    fn request_reserved_byte_tolerated() {
        let msg = [5, 1, 0xFF, 1, 1, 2, 3, 4, 0, 1];
        let (req, n) = parse_request(&msg).unwrap().unwrap();
        assert_eq!((req.target, n), (Target::Addr(v4([1, 2, 3, 4], 1)), 10));
    }

    #[test]
    fn request_errors_and_their_replies() {
        let cases: [(&[u8], ParseError, Option<Reply>); 9] = [
            (&[4, 1, 0, 1], ParseError::BadVersion(4), None),
            (
                &[5, 0],
                ParseError::UnknownCommand(0),
                Some(Reply::CommandNotSupported),
            ),
            (
                &[5, 4, 0, 1],
                ParseError::UnknownCommand(4),
                Some(Reply::CommandNotSupported),
            ),
            (
                &[5, 1, 0, 0],
                ParseError::UnknownAddressType(0),
                Some(Reply::AddressTypeNotSupported),
            ),
            (
                &[5, 1, 0, 2],
                ParseError::UnknownAddressType(2),
                Some(Reply::AddressTypeNotSupported),
            ),
            (
                &[5, 1, 0, 5, 1, 2],
                ParseError::UnknownAddressType(5),
                Some(Reply::AddressTypeNotSupported),
            ),
            (
                &[5, 1, 0, 3, 0, 0, 80],
                ParseError::InvalidDomain(DomainError::Empty),
                Some(Reply::GeneralFailure),
            ),
            (
                &[5, 1, 0, 3, 2, 0xC3, 0x28, 0, 80],
                ParseError::InvalidDomain(DomainError::NotUtf8),
                Some(Reply::GeneralFailure),
            ),
            (
                &[5, 1, 0, 3, 3, b'a', b'\n', b'b', 0, 80],
                ParseError::InvalidDomain(DomainError::ControlChar),
                Some(Reply::GeneralFailure),
            ),
        ];
        for (msg, err, reply) in cases {
            assert_eq!(parse_request(msg), Err(err.clone()), "{msg:?}");
            assert_eq!(err.reply(), reply);
            assert!(!err.to_string().is_empty());
        }
        // DEL and C1 controls are control characters too.
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 1, 0x7F, 0, 1]),
            Err(ParseError::InvalidDomain(DomainError::ControlChar))
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 2, 0xC2, 0x85, 0, 1]),
            Err(ParseError::InvalidDomain(DomainError::ControlChar))
        );
        assert_eq!(ParseError::BadAuthVersion(2).reply(), None);
        let e = ParseError::InvalidDomain(DomainError::Empty);
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn encode_request_rejects_bad_domains_without_writing() {
        let mut out = vec![1, 2, 3];
        let bad = [
            (domain("", 1), DomainError::Empty),
            (domain(&"a".repeat(256), 1), DomainError::TooLong(256)),
            (domain("a\u{0}b", 1), DomainError::ControlChar),
            (domain("a\u{9f}", 1), DomainError::ControlChar),
        ];
        for (t, e) in bad {
            assert_eq!(
                encode_request(Command::Connect, &t, &mut out),
                Err(EncodeError::InvalidDomain(e))
            );
            assert_eq!(out, [1, 2, 3]);
        }
    }

    #[test]
    fn error_messages_are_descriptive() {
        let msgs = [
            ParseError::BadVersion(4).to_string(),
            ParseError::BadAuthVersion(5).to_string(),
            ParseError::UnknownCommand(9).to_string(),
            ParseError::UnknownAddressType(2).to_string(),
            ParseError::InvalidDomain(DomainError::NotUtf8).to_string(),
            EncodeError::NoMethods.to_string(),
            EncodeError::TooManyMethods(300).to_string(),
            EncodeError::UsernameLength(0).to_string(),
            EncodeError::PasswordLength(0).to_string(),
            EncodeError::InvalidDomain(DomainError::TooLong(300)).to_string(),
            HandshakeError::Greeting(ParseError::BadVersion(4)).to_string(),
            HandshakeError::NoAcceptableMethod { required: 2 }.to_string(),
            HandshakeError::Auth(ParseError::BadAuthVersion(5)).to_string(),
            HandshakeError::AuthFailed.to_string(),
            HandshakeError::Request(ParseError::UnknownCommand(9)).to_string(),
            HandshakeError::Finished.to_string(),
        ];
        assert!(msgs[0].contains("0x04") && msgs[0].contains("0x05"));
        assert!(msgs[9].contains("300"));
        assert!(msgs[11].contains("username/password"));
        for m in msgs {
            assert!(m.len() > 10, "{m}");
        }
    }

    // ---------- Credentials ----------

    #[test]
    fn ct_eq_behaviour() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"ab", b"abc"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"abc\0", b"abc"));
        assert!(!ct_eq(b"", b"a"));
    }

    // ---------- Handshake ----------

    fn creds() -> Option<(Vec<u8>, Vec<u8>)> {
        Some((b"user".to_vec(), b"pa55".to_vec()))
    }

    fn client_bytes(auth: Option<(&[u8], &[u8])>, cmd: Command, t: &Target) -> Vec<u8> {
        let mut v = Vec::new();
        match auth {
            Some((u, p)) => {
                encode_greeting(&[METHOD_NO_AUTH, METHOD_USERPASS], &mut v).unwrap();
                encode_userpass(u, p, &mut v).unwrap();
            }
            None => encode_greeting(&[METHOD_NO_AUTH], &mut v).unwrap(),
        }
        encode_request(cmd, t, &mut v).unwrap();
        v
    }

    /// Simulates a handler: feeds `data` in chunks of `chunk` bytes through a
    /// receive buffer, dropping what was consumed. Returns (output, result, leftover).
    fn drive(
        hs: &mut Handshake,
        data: &[u8],
        chunk: usize,
    ) -> (Vec<u8>, Result<Request, HandshakeError>, Vec<u8>) {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut chunks = data.chunks(chunk.max(1));
        loop {
            match hs.feed(&buf, &mut out) {
                Ok((n, step)) => {
                    assert!(n <= buf.len());
                    buf.drain(..n);
                    match step {
                        Step::Request(r) => {
                            buf.extend(chunks.flatten());
                            return (out, Ok(r), buf);
                        }
                        Step::NeedMore => {
                            assert!(buf.len() < MAX_MESSAGE_LEN);
                            match chunks.next() {
                                Some(c) => buf.extend_from_slice(c),
                                None => return (out, Err(HandshakeError::Finished), buf),
                            }
                        }
                    }
                }
                Err(e) => return (out, Err(e), buf),
            }
        }
    }

    #[test]
    fn handshake_no_auth() {
        let t = Target::Addr(v4([1, 1, 1, 1], 53));
        let data = client_bytes(None, Command::Connect, &t);
        let mut hs = Handshake::new(None);
        let mut out = Vec::new();
        // Greeting alone first.
        assert_eq!(hs.feed(&data[..3], &mut out), Ok((3, Step::NeedMore)));
        assert_eq!(out, [5, 0]);
        assert!(!hs.is_finished());
        let (n, step) = hs.feed(&data[3..], &mut out).unwrap();
        assert_eq!(n, data.len() - 3);
        assert_eq!(
            step,
            Step::Request(Request {
                command: Command::Connect,
                target: t
            })
        );
        assert_eq!(out, [5, 0]);
        assert!(hs.is_finished());
        assert_eq!(hs.feed(&[5, 1, 0], &mut out), Err(HandshakeError::Finished));
        assert_eq!(out, [5, 0]);
    }

    #[test]
    fn handshake_pipelined_equals_byte_by_byte() {
        let t = domain("example.org", 80);
        let mut data = client_bytes(Some((b"user", b"pa55")), Command::Connect, &t);
        let handshake_len = data.len();
        data.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");

        // Everything in one feed call: one pass over all stages.
        let mut hs = Handshake::new(creds());
        let mut out = Vec::new();
        let (n, step) = hs.feed(&data, &mut out).unwrap();
        assert_eq!(n, handshake_len, "tunnel payload must not be consumed");
        assert_eq!(out, [5, 2, 1, 0]);
        let want = Step::Request(Request {
            command: Command::Connect,
            target: t,
        });
        assert_eq!(step, want);

        for chunk in [1, 2, 3, 7, 64] {
            let mut hs = Handshake::new(creds());
            let (out2, res, leftover) = drive(&mut hs, &data, chunk);
            assert_eq!(out2, out, "chunk {chunk}");
            assert_eq!(Step::Request(res.unwrap()), want);
            assert_eq!(leftover, b"GET / HTTP/1.1\r\n\r\n");
        }
    }

    #[test]
    fn handshake_wrong_credentials() {
        for (u, p) in [
            (&b"user"[..], &b"pa56"[..]),
            (b"usr", b"pa55"),
            (b"user", b"pa55x"),
            (b"x", b"y"),
        ] {
            let data = client_bytes(Some((u, p)), Command::Connect, &domain("a", 1));
            let mut hs = Handshake::new(creds());
            let mut out = Vec::new();
            assert_eq!(hs.feed(&data, &mut out), Err(HandshakeError::AuthFailed));
            assert_eq!(out, [5, 2, 1, 1]);
            assert!(hs.is_finished());
            assert_eq!(hs.feed(&data, &mut out), Err(HandshakeError::Finished));
        }
        // Empty credentials (tolerated by the parser) also just fail.
        let mut hs = Handshake::new(creds());
        let mut out = Vec::new();
        assert_eq!(
            hs.feed(&[5, 1, 2, 1, 0, 0], &mut out),
            Err(HandshakeError::AuthFailed)
        );
        assert_eq!(out, [5, 2, 1, 1]);
    }

    #[test]
    fn handshake_no_acceptable_method() {
        // Auth required, client offers only "no auth".
        let mut hs = Handshake::new(creds());
        let mut out = Vec::new();
        assert_eq!(
            hs.feed(&[5, 1, 0], &mut out),
            Err(HandshakeError::NoAcceptableMethod { required: 2 })
        );
        assert_eq!(out, [5, 0xFF]);
        // No auth configured, client offers only username/password.
        let mut hs = Handshake::new(None);
        out.clear();
        assert_eq!(
            hs.feed(&[5, 1, 2], &mut out),
            Err(HandshakeError::NoAcceptableMethod { required: 0 })
        );
        assert_eq!(out, [5, 0xFF]);
        // Zero methods.
        let mut hs = Handshake::new(None);
        out.clear();
        assert_eq!(
            hs.feed(&[5, 0], &mut out),
            Err(HandshakeError::NoAcceptableMethod { required: 0 })
        );
        assert_eq!(out, [5, 0xFF]);
    }

    #[test]
    fn handshake_bad_greeting_writes_nothing() {
        let mut hs = Handshake::new(None);
        let mut out = Vec::new();
        // A SOCKS4 client.
        assert_eq!(
            hs.feed(&[4, 1, 0, 80, 1, 2, 3, 4, 0], &mut out),
            Err(HandshakeError::Greeting(ParseError::BadVersion(4)))
        );
        assert!(out.is_empty());
        assert_eq!(hs.feed(&[], &mut out), Err(HandshakeError::Finished));
    }

    #[test]
    fn handshake_bad_auth_version() {
        let mut hs = Handshake::new(creds());
        let mut out = Vec::new();
        let e = hs.feed(&[5, 1, 2, 5, 4], &mut out).unwrap_err();
        assert_eq!(e, HandshakeError::Auth(ParseError::BadAuthVersion(5)));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(out, [5, 2, 1, 1]);
    }

    #[test]
    fn handshake_request_errors_write_replies() {
        let cases: [(&[u8], HandshakeError, &[u8]); 4] = [
            (
                &[5, 7],
                HandshakeError::Request(ParseError::UnknownCommand(7)),
                &[5, 7, 0, 1, 0, 0, 0, 0, 0, 0],
            ),
            (
                &[5, 1, 0, 6],
                HandshakeError::Request(ParseError::UnknownAddressType(6)),
                &[5, 8, 0, 1, 0, 0, 0, 0, 0, 0],
            ),
            (
                &[5, 1, 0, 3, 0],
                HandshakeError::Request(ParseError::InvalidDomain(DomainError::Empty)),
                &[5, 1, 0, 1, 0, 0, 0, 0, 0, 0],
            ),
            (
                &[6],
                HandshakeError::Request(ParseError::BadVersion(6)),
                &[],
            ),
        ];
        for (req, err, reply) in cases {
            // Pipelined after the greeting: both answers land in `out`, in order.
            let mut data = vec![5, 1, 0];
            data.extend_from_slice(req);
            let mut hs = Handshake::new(None);
            let mut out = Vec::new();
            assert_eq!(hs.feed(&data, &mut out), Err(err.clone()));
            let mut want = vec![5, 0];
            want.extend_from_slice(reply);
            assert_eq!(out, want);
            assert!(hs.is_finished());
        }
    }

    #[test]
    fn handshake_partial_stages_consume_exactly() {
        let data = client_bytes(Some((b"user", b"pa55")), Command::Bind, &domain("x.y", 9));
        // greeting = 4 bytes, userpass = 11 bytes
        let mut hs = Handshake::new(creds());
        let mut out = Vec::new();
        assert_eq!(hs.feed(&data[..6], &mut out), Ok((4, Step::NeedMore)));
        assert_eq!(out, [5, 2]);
        assert_eq!(hs.feed(&data[4..17], &mut out), Ok((11, Step::NeedMore)));
        assert_eq!(out, [5, 2, 1, 0]);
        assert_eq!(hs.feed(&[], &mut out), Ok((0, Step::NeedMore)));
        let (n, step) = hs.feed(&data[15..], &mut out).unwrap();
        assert_eq!(n, data.len() - 15);
        assert!(matches!(
            step,
            Step::Request(Request {
                command: Command::Bind,
                ..
            })
        ));
        let dbg = format!("{hs:?}");
        assert!(!dbg.contains("pa55"));
    }

    // ---------- Robustness ----------

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            reactor_test_support::fuzz::xorshift(&mut x);
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn bytes(&mut self, len: usize) -> Vec<u8> {
            let mut v: Vec<u8> = (0..len).map(|_| self.next() as u8).collect();
            // Often make the header plausible so deeper code is reached.
            if self.below(3) > 0 {
                let plausible = [5u8, 1, 0, 1, 3, 4, 2];
                for b in v.iter_mut().take(4) {
                    *b = plausible[self.below(plausible.len())];
                }
                if let Some(b) = v.first_mut() {
                    *b = if self.below(4) == 0 { 1 } else { 5 };
                }
            }
            v
        }
    }

    #[test]
    fn never_panics_on_random_input() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let len = rng.below(600);
            let data = rng.bytes(len);
            if let Ok(Some((_, n))) = parse_greeting(&data) {
                assert!(n <= data.len() && n <= MAX_GREETING_LEN);
            }
            if let Ok(Some((_, n))) = parse_userpass(&data) {
                assert!(n <= data.len() && n <= MAX_USERPASS_LEN);
            }
            if let Ok(Some((req, n))) = parse_request(&data) {
                assert!(n <= data.len() && n <= MAX_REQUEST_LEN);
                // Anything we accept must re-encode to the same bytes (modulo RSV).
                let mut again = Vec::new();
                encode_request(req.command, &req.target, &mut again).unwrap();
                assert_eq!(again.len(), n);
                assert_eq!(again[3..], data[3..n]);
            }
            if let Ok(Some((_, _, n))) = parse_reply(&data) {
                assert!(n <= data.len() && n <= MAX_REQUEST_LEN);
            }
            let _ = parse_method_selection(&data);
            let _ = parse_auth_status(&data);

            let auth = if rng.below(2) == 0 { None } else { creds() };
            let mut hs = Handshake::new(auth);
            let chunk = 1 + rng.below(40);
            let (out, _res, _left) = drive(&mut hs, &data, chunk);
            assert!(out.len() <= 2 + 2 + MAX_REQUEST_LEN);
        }
    }

    #[test]
    fn truncations_of_valid_messages_need_more() {
        let mut rng = XorShift(42);
        for _ in 0..300 {
            let t = match rng.below(3) {
                0 => Target::Addr(v4([1, 2, 3, 4], rng.next() as u16)),
                1 => Target::Addr(v6("fe80::1", rng.next() as u16)),
                _ => domain(&"z".repeat(1 + rng.below(255)), rng.next() as u16),
            };
            let mut req = Vec::new();
            encode_request(Command::Connect, &t, &mut req).unwrap();
            assert_prefixes_need_more!(&req, parse_request);
            let user = vec![b'u'; 1 + rng.below(255)];
            let pass = vec![b'p'; 1 + rng.below(255)];
            let mut up = Vec::new();
            encode_userpass(&user, &pass, &mut up).unwrap();
            assert_prefixes_need_more!(&up, parse_userpass);
            let mut hs = Handshake::new(Some((user.clone(), pass.clone())));
            let mut all = vec![5, 1, 2];
            all.extend_from_slice(&up);
            all.extend_from_slice(&req);
            let (out, res, left) = drive(&mut hs, &all, 1 + rng.below(50));
            assert_eq!(out, [5, 2, 1, 0]);
            assert_eq!(res.unwrap().target, t);
            assert!(left.is_empty());
        }
    }
}
