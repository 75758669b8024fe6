//! The TLS settings every HTTPS client of the router shares: delivery's connections to
//! endpoints, and reqwest's for Discord's REST API.
//!
//! Owns the choice of verifier and roots (the platform's, as reqwest has by default) and the
//! ALPN offers; it opens no connection itself.

use std::sync::Arc;

/// TLS settings shared by every endpoint's pool.
pub type Tls = Arc<rustls::ClientConfig>;

/// The TLS settings every HTTPS client of the router uses (delivery, and reqwest for Discord's
/// REST API): the platform's verifier and roots, as reqwest had by default, and HTTP/1.1.
/// Built once per process: the verifier holds the system's roots, about a megabyte.
pub fn platform_tls() -> Result<Tls, rustls::Error> {
    static TLS: std::sync::OnceLock<Result<Tls, rustls::Error>> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls_platform_verifier::Verifier::new(provider.clone())?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    })
    .clone()
}

/// TLS settings that trust only the CA certificate(s) in `pem` (an endpoint's `ca_file`), with
/// HTTP/1.1 as the platform's settings have it.
pub fn private_ca(pem: &[u8]) -> Result<Tls, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("holds no PEM certificate".to_owned());
    }
    let mut config = (*trusting(roots)).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `tls` for a client that speaks HTTP/2 as well: reqwest, for Discord's REST API.
pub fn with_http2(tls: &Tls) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::clone(tls);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// TLS settings that trust `roots` only (tests give an empty store, or their own CA, so as not
/// to depend on the machine's roots).
pub(crate) fn trusting(roots: rustls::RootCertStore) -> Tls {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
