//! Server and client TLS settings: certificates and keys from PEM, SNI, ALPN, client
//! certificates, roots; and the acceptor and connector that make a [`TlsFilter`]
//! per connection.
//!
//! Everything here runs once, at start-up (reading files is blocking work: do it
//! before the loop runs). It must not do per-connection work beyond creating a
//! rustls connection object.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use crate::filter::TlsFilter;

/// The crypto provider every config here uses: `ring` (see the crate docs for why).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(what: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A certificate chain and its private key, read from PEM.
#[derive(Debug)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// From PEM text: the chain (leaf first) and the key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> io::Result<Identity> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("certificate PEM: {e}")))?;
        if chain.is_empty() {
            return Err(invalid("no certificate in the PEM data"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| invalid(format!("private key PEM: {e}")))?;
        Ok(Identity { chain, key })
    }

    /// From PEM files (read now: call it before the loop runs).
    pub fn from_pem_files(chain: &Path, key: &Path) -> io::Result<Identity> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        Identity::from_pem(&read(chain)?, &read(key)?)
    }

    fn certified(self) -> io::Result<Arc<CertifiedKey>> {
        let ck = CertifiedKey::from_der(self.chain, self.key, &provider())
            .map_err(|e| invalid(format!("certificate and key: {e}")))?;
        Ok(Arc::new(ck))
    }
}

/// Reads every certificate of a PEM file into a root store (a CA file).
fn roots_from_pem(pem: &[u8]) -> io::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| invalid(format!("CA PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| invalid(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid("no certificate in the CA data"));
    }
    Ok(roots)
}

/// Chooses the server's certificate by the name the client asked for (SNI), or the
/// default when it asked for another name or none.
#[derive(Debug)]
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|n| self.by_name.get(&n.to_ascii_lowercase()))
            .or(self.default.as_ref())
            .cloned()
    }
}

/// Server settings, built once: certificates (a default and any per SNI name),
/// ALPN protocols in order of preference, client certificates.
///
/// ```no_run
/// use reactor_tls::{Identity, ServerTls};
/// let id = Identity::from_pem_files("cert.pem".as_ref(), "key.pem".as_ref())?;
/// let acceptor = ServerTls::new(id).alpn(&["h2", "http/1.1"]).build()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
#[must_use]
pub struct ServerTls {
    default: Option<Identity>,
    by_name: Vec<(String, Identity)>,
    alpn: Vec<Vec<u8>>,
    client_ca: Option<(Vec<u8>, bool)>,
}

impl ServerTls {
    /// A server with `default` as its certificate.
    pub fn new(default: Identity) -> ServerTls {
        ServerTls {
            default: Some(default),
            by_name: Vec::new(),
            alpn: Vec::new(),
            client_ca: None,
        }
    }

    /// A server with certificates per name only (see [`ServerTls::name`]); a client
    /// that asks for no known name fails the handshake.
    pub fn without_default() -> ServerTls {
        ServerTls {
            default: None,
            by_name: Vec::new(),
            alpn: Vec::new(),
            client_ca: None,
        }
    }

    /// The certificate for clients asking for `name` (SNI, case-insensitive).
    pub fn name(mut self, name: &str, id: Identity) -> ServerTls {
        self.by_name.push((name.to_ascii_lowercase(), id));
        self
    }

    /// ALPN protocols offered, most preferred first (`"h2"`, `"http/1.1"`). A client
    /// offering none of them fails the handshake; one offering no ALPN at all
    /// connects without a protocol.
    pub fn alpn(mut self, protocols: &[&str]) -> ServerTls {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    /// Asks clients for a certificate signed by one of the CAs in `ca_pem`;
    /// `required` refuses clients without one (else they may connect anonymously).
    pub fn client_ca(mut self, ca_pem: &[u8], required: bool) -> ServerTls {
        self.client_ca = Some((ca_pem.to_vec(), required));
        self
    }

    /// Checks the certificates and keys and builds the acceptor.
    pub fn build(self) -> io::Result<TlsAcceptor> {
        let mut by_name = HashMap::new();
        for (name, id) in self.by_name {
            by_name.insert(name, id.certified()?);
        }
        let resolver = SniResolver {
            by_name,
            default: self.default.map(Identity::certified).transpose()?,
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("TLS versions: {e}")))?;
        let builder = match self.client_ca {
            None => builder.with_no_client_auth(),
            Some((pem, required)) => {
                let roots = Arc::new(roots_from_pem(&pem)?);
                let v = WebPkiClientVerifier::builder_with_provider(roots, provider());
                let v = if required {
                    v
                } else {
                    v.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(
                    v.build()
                        .map_err(|e| invalid(format!("client verifier: {e}")))?,
                )
            }
        };
        let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
        cfg.alpn_protocols = self.alpn;
        Ok(TlsAcceptor { cfg: Arc::new(cfg) })
    }
}

/// Makes the server side of a TLS connection for each accepted socket.
#[derive(Clone, Debug)]
pub struct TlsAcceptor {
    cfg: Arc<ServerConfig>,
}

impl TlsAcceptor {
    /// A new TLS server connection, as a filter for `Conn::with_filter`.
    pub fn filter(&self) -> io::Result<Box<TlsFilter>> {
        let conn = ServerConnection::new(self.cfg.clone()).map_err(|e| invalid(e.to_string()))?;
        Ok(Box::new(TlsFilter::new(conn.into())))
    }

    /// A maker of server-side filters, for [`reactor::FramedConfig::filter`] and
    /// [`reactor::echo::EchoOptions::filter`].
    pub fn factory(&self) -> reactor::FilterFactory {
        let me = self.clone();
        reactor::FilterFactory::new(move || Ok(me.filter()? as Box<dyn reactor::StreamFilter>))
    }

    /// The rustls configuration inside.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.cfg
    }
}

/// Client settings, built once: which servers to trust, ALPN, a client certificate.
///
/// ```no_run
/// use reactor_tls::ClientTls;
/// let connector = ClientTls::system_roots()?.alpn(&["http/1.1"]).build()?;
/// let ca = std::fs::read("ca.pem")?;
/// let private = ClientTls::with_ca(&ca)?.build()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
#[must_use]
pub struct ClientTls {
    roots: RootCertStore,
    alpn: Vec<Vec<u8>>,
    identity: Option<Identity>,
    resumption: bool,
}

impl ClientTls {
    /// Trusts the system's CA certificates (read now, from the platform's store).
    pub fn system_roots() -> io::Result<ClientTls> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map_or_else(|| "none found".to_string(), |e| e.to_string());
            return Err(invalid(format!("no system CA certificates: {why}")));
        }
        Ok(ClientTls {
            roots,
            alpn: Vec::new(),
            identity: None,
            resumption: true,
        })
    }

    /// Trusts the CA certificates in `ca_pem` only.
    pub fn with_ca(ca_pem: &[u8]) -> io::Result<ClientTls> {
        Ok(ClientTls {
            roots: roots_from_pem(ca_pem)?,
            alpn: Vec::new(),
            identity: None,
            resumption: true,
        })
    }

    /// Trusts the CA certificates in the PEM file `path` only.
    pub fn with_ca_file(path: &Path) -> io::Result<ClientTls> {
        let pem = std::fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        ClientTls::with_ca(&pem)
    }

    /// ALPN protocols offered, most preferred first.
    pub fn alpn(mut self, protocols: &[&str]) -> ClientTls {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    /// A client certificate, for servers that ask for one.
    pub fn identity(mut self, id: Identity) -> ClientTls {
        self.identity = Some(id);
        self
    }

    /// Resume sessions with servers seen before (TLS 1.3 tickets, 1.2 session ids):
    /// a resumed handshake skips the certificate and its signature. Default on;
    /// off makes every handshake a full one (a benchmark of handshakes, a test of
    /// the full path).
    pub fn resumption(mut self, on: bool) -> ClientTls {
        self.resumption = on;
        self
    }

    /// Builds the connector.
    pub fn build(self) -> io::Result<TlsConnector> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("TLS versions: {e}")))?
            .with_root_certificates(self.roots);
        let mut cfg = match self.identity {
            None => builder.with_no_client_auth(),
            Some(id) => builder
                .with_client_auth_cert(id.chain, id.key)
                .map_err(|e| invalid(format!("client certificate: {e}")))?,
        };
        cfg.alpn_protocols = self.alpn;
        if !self.resumption {
            cfg.resumption = rustls::client::Resumption::disabled();
        }
        Ok(TlsConnector { cfg: Arc::new(cfg) })
    }
}

/// Makes the client side of a TLS connection for each outgoing socket.
#[derive(Clone, Debug)]
pub struct TlsConnector {
    cfg: Arc<ClientConfig>,
}

impl TlsConnector {
    /// A new TLS client connection to `server_name` (checked against the server's
    /// certificate; an IP address works too), as a filter for `Conn::with_filter`.
    pub fn filter(&self, server_name: &str) -> io::Result<Box<TlsFilter>> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| invalid(format!("server name {server_name:?}: {e}")))?;
        let conn =
            ClientConnection::new(self.cfg.clone(), name).map_err(|e| invalid(e.to_string()))?;
        Ok(Box::new(TlsFilter::new(conn.into())))
    }

    /// The rustls configuration inside.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.cfg
    }
}
