//! Trust for `wss://` agent runtimes: rustls (ring provider) verifying the runtime's
//! certificate chain and host name against the system roots plus an optional PEM bundle
//! (`[media] agent_ca_file`, for runtimes behind a private CA).
//!
//! Build one [`AgentTls`] at start-up and share it: the call path and the health probe both
//! hand [`AgentTls::connector`] to tokio-tungstenite, so a runtime whose certificate is
//! untrusted, expired or for another name fails the same way for both.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::Connector;

use crate::MediaError;

/// The TLS client configuration for agent WebSockets. Cheap to clone.
#[derive(Clone)]
pub struct AgentTls {
    config: Arc<ClientConfig>,
    /// Trust anchors loaded (system + bundle), for the start-up log line.
    anchors: usize,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTls")
            .field("anchors", &self.anchors)
            .finish_non_exhaustive()
    }
}

impl AgentTls {
    /// System roots plus every certificate in `extra_ca_file`. Errors when the file cannot be
    /// read or holds no certificate: a configured bundle that trusts nothing is a mistake the
    /// operator should hear about at start-up, not as failing calls.
    pub fn new(extra_ca_file: Option<&Path>) -> Result<AgentTls, MediaError> {
        let mut roots = RootCertStore::empty();
        let system = rustls_native_certs::load_native_certs();
        let (_, unparsable) = roots.add_parsable_certificates(system.certs);
        if unparsable > 0 || !system.errors.is_empty() {
            tracing::debug!(
                unparsable,
                errors = system.errors.len(),
                "some system CA certificates were skipped"
            );
        }
        if let Some(path) = extra_ca_file {
            add_bundle(&mut roots, path)?;
        }
        Self::with_roots(roots)
    }

    /// Only the certificates in the PEM text `bundle` (no system roots): for tests and
    /// benches that trust one private CA.
    pub fn from_pem(bundle: &[u8]) -> Result<AgentTls, MediaError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(bundle) {
            let cert = cert.map_err(|e| tls_config(format!("bad PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| tls_config(format!("bad CA certificate: {e}")))?;
        }
        Self::with_roots(roots)
    }

    fn with_roots(roots: RootCertStore) -> Result<AgentTls, MediaError> {
        let anchors = roots.len();
        // An explicit provider: never depends on which rustls backends other crates enable.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(AgentTls {
            config: Arc::new(config),
            anchors,
        })
    }

    /// How many trust anchors the configuration holds.
    pub fn anchors(&self) -> usize {
        self.anchors
    }

    /// The rustls client configuration itself, for other HTTPS clients that should trust what
    /// agents are trusted with (webhook deliveries).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// The connector for `connect_async_tls_with_config` (ignored for `ws://` URLs).
    pub fn connector(&self) -> Connector {
        Connector::Rustls(Arc::clone(&self.config))
    }
}

fn add_bundle(roots: &mut RootCertStore, path: &Path) -> Result<(), MediaError> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_config(format!("{shown}: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_config(format!("{shown}: {e}")))?;
    if certs.is_empty() {
        return Err(tls_config(format!("{shown}: no PEM certificate in it")));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| tls_config(format!("{shown}: bad CA certificate: {e}")))?;
    }
    Ok(())
}

fn tls_config(reason: String) -> MediaError {
    MediaError::AgentTlsConfig { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_that_is_missing_empty_or_garbage_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("agent-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for path in [&missing, &empty, &garbage] {
            let err = AgentTls::new(Some(path)).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
        // No bundle: system roots only, never an error.
        assert!(AgentTls::new(None).is_ok());
    }
}
