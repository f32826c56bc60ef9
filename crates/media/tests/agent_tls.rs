//! `connect_agent` to `wss://` runtimes on loopback, with certificates made in process (rcgen):
//! a good one connects; an expired one, one for another name and one from a CA we do not
//! trust fail with a reason that says which, as the admin API's `status_detail` shows it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt as _;
use switchboard_media::twilio::new_sid;
use switchboard_media::{
    connect_agent, AgentTls, CustomParameters, MediaError, StartParams, StreamIds,
};
use tokio::net::TcpListener;

struct Ca {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

fn ca(name: &str) -> Result<Ca> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Ca { key, cert })
}

/// A wss:// agent presenting a certificate for `name` from `ca`, valid until `not_after`.
async fn agent(ca: &Ca, name: &str, not_after: Option<(i32, u8, u8)>) -> Result<u16> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    if let Some((y, m, d)) = not_after {
        params.not_before = rcgen::date_time_ymd(y - 1, m, d);
        params.not_after = rcgen::date_time_ymd(y, m, d);
    }
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca.cert, &ca.key)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            });
        }
    });
    Ok(port)
}

async fn connect(url: &str, trust: &AgentTls) -> Result<(), MediaError> {
    let params = StartParams {
        ids: StreamIds::generate(new_sid("AC")),
        custom_parameters: CustomParameters::new(),
        dialect: switchboard_media::AgentDialect::Twilio,
    };
    let link = connect_agent(url, params, Duration::from_secs(5), trust).await?;
    link.abandon().await;
    Ok(())
}

#[tokio::test]
async fn wss_agents_are_verified_by_chain_name_and_validity() -> Result<()> {
    let (ours, theirs) = (ca("trusted test CA")?, ca("unknown CA")?);
    let trust = AgentTls::from_pem(ours.cert.pem().as_bytes())?;

    let good = agent(&ours, "localhost", None).await?;
    connect(&format!("wss://localhost:{good}/media"), &trust).await?;

    let failures = [
        (
            format!(
                "wss://localhost:{}/media",
                agent(&theirs, "localhost", None).await?
            ),
            "issuer",
        ),
        (
            format!(
                "wss://localhost:{}/media",
                agent(&ours, "localhost", Some((2021, 1, 1))).await?
            ),
            "expired",
        ),
        (format!("wss://127.0.0.1:{good}/media"), "name"),
    ];
    for (url, why) in failures {
        let err = connect(&url, &trust).await.expect_err("must not connect");
        assert!(matches!(err, MediaError::AgentConnect { .. }), "{err}");
        assert_eq!(err.sip_status(), 503);
        let text = err.to_string().to_lowercase();
        assert!(
            text.contains("certificate") && text.contains(why),
            "{url}: {text}"
        );
    }
    Ok(())
}
