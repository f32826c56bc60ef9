//! TLS material for the listeners that speak it: SIP over TLS (`[sip] tls`) and the admin API
//! over HTTPS (`[admin] tls_cert`). rustls with the `ring` provider; no cryptography here.
//!
//! Certificates are served through [`ReloadingCert`], a `ResolvesServerCert` backed by an
//! `ArcSwap`: [`reload_on_sighup`] re-reads the files, and a new handshake gets the new chain
//! while connections already up keep theirs. A file that fails to load (unreadable, no
//! certificate, a key that does not match) keeps the old certificate and logs why, so a
//! half-copied renewal never takes the listener down.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

/// Why TLS material could not be loaded; the message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{path}: cannot read a PEM certificate chain: {reason}")]
    Chain { path: PathBuf, reason: String },
    #[error("{path}: cannot read a PEM private key: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{key} does not belong to the certificate in {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("{path}: cannot use as client CA bundle: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("building the TLS configuration: {0}")]
    Config(String),
}

/// The one crypto provider every TLS listener uses (ring: builds quickly, maintained).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (leaf first, as servers send it).
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Chain {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if chain.is_empty() {
        return Err(bad("no CERTIFICATE block".to_owned()));
    }
    Ok(chain)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Loads a chain and its key and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_chain(cert)?;
    let private = read_key(key)?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Reads a PEM bundle of CA certificates that client certificates must chain to.
pub fn read_client_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let bad = |reason: String| TlsError::ClientCa {
        path: path.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no CERTIFICATE block".to_owned()));
    }
    Ok(roots)
}

/// A certificate and key read from files, swapped atomically by [`ReloadingCert::reload`].
pub struct ReloadingCert {
    /// What it serves, for log lines (`"sip"`, `"admin"`).
    name: &'static str,
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("name", &self.name)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads the pair once; call at start (config validation has already read it).
    pub fn load(name: &'static str, cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let loaded = load_certified_key(cert, key)?;
        Ok(Arc::new(Self {
            name,
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(loaded),
        }))
    }

    /// Re-reads the files. On success new handshakes get the new certificate; on failure the
    /// old one stays and the error is returned (and logged by [`reload_on_sighup`]).
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = load_certified_key(&self.cert, &self.key)?;
        self.current.store(Arc::new(loaded));
        Ok(())
    }

    /// The leaf certificate now served (tests compare serials).
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current.load().cert.first().cloned()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A server configuration (TLS 1.2 and 1.3) serving `cert`; with `client_ca`, clients must
/// present a certificate chaining to it (mutual TLS), else the handshake fails.
pub fn server_config(
    cert: Arc<ReloadingCert>,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = read_client_roots(path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Installs the SIGHUP handler now (so a SIGHUP right after start is never the default
/// action, which would end the process) and returns the task that, until `shutdown`, re-reads
/// every certificate on each SIGHUP. Connections and calls are untouched: only handshakes after
/// the swap see the new certificate.
pub fn reload_on_sighup(
    certs: Vec<Arc<ReloadingCert>>,
    shutdown: CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = hangup.recv() => if received.is_none() { return },
            }
            if certs.is_empty() {
                tracing::info!("SIGHUP: no TLS certificate configured, nothing to reload");
            }
            for cert in &certs {
                match cert.reload() {
                    Ok(()) => {
                        tracing::info!(listener = cert.name, path = %cert.cert.display(), "TLS certificate reloaded")
                    }
                    Err(e) => {
                        tracing::error!(listener = cert.name, error = %e, "TLS certificate reload failed; still serving the previous one")
                    }
                }
            }
        }
    })
}

/// Lets one log line through per second: failed handshakes come from scanners in bursts, and
/// the counter (not the log) is where their volume shows.
#[derive(Debug, Default)]
pub struct LogGate {
    last_second: AtomicU64,
}

impl LogGate {
    /// True at most once per wall-clock second.
    pub fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_second.load(Ordering::Relaxed);
        now != last
            && self
                .last_second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
