//! One webhook attempt: a single HTTP/1.1 POST on a fresh connection (`https://` over rustls,
//! trusting what `wss://` agents are trusted with: system roots plus `[media] agent_ca_file`,
//! host name verified), bounded as a whole by `[webhooks] timeout_ms` (connect, TLS handshake,
//! send, response head). The response body is not read.
//!
//! A fresh connection per attempt keeps a hanging receiver's socket from outliving its
//! timeout: when the budget runs out, the connection is dropped with everything else.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http::{Request, Uri};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::sign::SIGNATURE_HEADER;

/// Why an attempt did not deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// The receiver answered, but not 2xx.
    #[error("receiver answered {0}")]
    Status(u16),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Transport(String),
}

/// What goes out with each attempt besides the body.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    pub url: &'a str,
    pub body: Bytes,
    pub signature: String,
    pub event: &'a str,
    pub event_id: &'a str,
}

/// POSTs once; `Ok` with the status for a 2xx answer. `tls` verifies `https://` receivers.
pub async fn post(
    attempt: Attempt<'_>,
    budget: Duration,
    tls: &Arc<ClientConfig>,
) -> Result<u16, AttemptError> {
    match tokio::time::timeout(budget, post_unbounded(attempt, tls)).await {
        Ok(result) => result,
        Err(_) => Err(AttemptError::Timeout(budget)),
    }
}

fn transport(e: &dyn std::fmt::Display) -> AttemptError {
    AttemptError::Transport(e.to_string())
}

async fn post_unbounded(
    attempt: Attempt<'_>,
    tls: &Arc<ClientConfig>,
) -> Result<u16, AttemptError> {
    let uri: Uri = attempt.url.parse().map_err(|e| transport(&e))?;
    let secure = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(AttemptError::Transport(
                "only http:// and https:// receivers are supported".to_owned(),
            ))
        }
    };
    let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| transport(&e))?;
    let _ = stream.set_nodelay(true);
    if !secure {
        return exchange(stream, &uri, host, attempt).await;
    }
    let name = ServerName::try_from(host.to_owned()).map_err(|e| transport(&e))?;
    let stream = TlsConnector::from(Arc::clone(tls))
        .connect(name, stream)
        .await
        .map_err(|e| transport(&format!("TLS: {e}")))?;
    exchange(stream, &uri, host, attempt).await
}

/// The POST and its response head over an open (plain or TLS) connection.
async fn exchange<S>(
    stream: S,
    uri: &Uri,
    host: &str,
    attempt: Attempt<'_>,
) -> Result<u16, AttemptError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(&e))?;
    let authority = uri.authority().map_or(host, |a| a.as_str()).to_owned();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::post(path)
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/json")
        .header(
            USER_AGENT,
            concat!("switchboard/", env!("CARGO_PKG_VERSION")),
        )
        .header(SIGNATURE_HEADER, attempt.signature)
        .header("x-switchboard-event", attempt.event)
        .header("x-switchboard-event-id", attempt.event_id)
        .body(Full::new(attempt.body))
        .map_err(|e| transport(&e))?;
    let mut conn = std::pin::pin!(conn);
    let mut response = std::pin::pin!(sender.send_request(request));
    let response = tokio::select! {
        response = response.as_mut() => response,
        // With `Connection: close` the connection may finish in the same poll that read the
        // response: the response is then ready too.
        ended = conn.as_mut() => match ended {
            Ok(()) => response.await,
            Err(e) => return Err(transport(&e)),
        },
    }
    .map_err(|e| transport(&e))?;
    let status = response.status();
    match status.is_success() {
        true => Ok(status.as_u16()),
        false => Err(AttemptError::Status(status.as_u16())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    /// A CA (PEM) and a `localhost` server certificate it signed, as a server config.
    fn pki() -> (String, rustls::ServerConfig) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        (ca.pem(), server)
    }

    /// An HTTPS receiver answering one request 200; yields the request head it read.
    async fn receiver(
        server: rustls::ServerConfig,
    ) -> (u16, tokio::task::JoinHandle<Option<String>>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.ok()?;
            let mut tls = acceptor.accept(tcp).await.ok()?;
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tls.read(&mut buf).await.ok()?;
                if n == 0 {
                    return None;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            tls.write_all(answer).await.ok()?;
            tls.shutdown().await.ok()?;
            Some(String::from_utf8_lossy(&head).into_owned())
        });
        (port, task)
    }

    fn attempt(url: &str) -> Attempt<'_> {
        Attempt {
            url,
            body: Bytes::from_static(b"{}"),
            signature: "t=1,v1=00".to_owned(),
            event: "call.ended",
            event_id: "evt-1",
        }
    }

    fn trusting(ca_pem: &str) -> Arc<ClientConfig> {
        switchboard_media::AgentTls::from_pem(ca_pem.as_bytes())
            .unwrap()
            .client_config()
    }

    #[tokio::test]
    async fn https_receivers_are_verified_then_posted_to() {
        let (ca, server) = pki();
        let (port, got) = receiver(server).await;
        let url = format!("https://localhost:{port}/hooks");
        let status = post(attempt(&url), Duration::from_secs(5), &trusting(&ca)).await;
        assert_eq!(status, Ok(200));
        let head = got.await.unwrap().expect("the receiver read a request");
        assert!(head.starts_with("POST /hooks HTTP/1.1"), "{head}");
        assert!(head.contains("t=1,v1=00"), "{head}");
    }

    #[tokio::test]
    async fn an_untrusted_receiver_certificate_fails_the_attempt() {
        let (_, server) = pki();
        let (other_ca, _) = pki();
        let (port, got) = receiver(server).await;
        let url = format!("https://localhost:{port}/hooks");
        let result = post(attempt(&url), Duration::from_secs(5), &trusting(&other_ca)).await;
        assert!(
            matches!(&result, Err(AttemptError::Transport(e)) if e.starts_with("TLS")),
            "{result:?}"
        );
        assert_eq!(got.await.unwrap(), None, "nothing was delivered");
    }
}
