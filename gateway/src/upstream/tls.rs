//! The certificates an `https` upstream is verified against: Mozilla's roots (built in, so a
//! container without a CA bundle can still reach public services) plus the system's trust store,
//! where a company's private CA is usually installed. `SSL_CERT_FILE` / `SSL_CERT_DIR` name a
//! bundle to use instead of the system's store, as for OpenSSL, curl and Go.
//!
//! The store is read once per process, when the first service with an `https` instance is built
//! (a bundle is a few hundred kilobytes of PEM): a CA added later needs a restart, not a reload.

use std::sync::{Arc, OnceLock};

use rustls::{ClientConfig, RootCertStore};

/// The client TLS settings for a service; `https` is whether any of its instances uses TLS (a
/// service without one does not read the trust store, nor fail on a bad `SSL_CERT_FILE`).
pub fn client_config(https: bool) -> Result<ClientConfig, super::BuildError> {
    let roots = if https {
        trusted()?
    } else {
        Arc::new(RootCertStore::empty())
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The roots, read on first use.
fn trusted() -> Result<Arc<RootCertStore>, super::BuildError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(load)
        .clone()
        .map_err(super::BuildError::TrustStore)
}

fn load() -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let native = rustls_native_certs::load_native_certs();
    // What the operator named must be there: a typo in SSL_CERT_FILE would otherwise show up
    // only as every https backend failing its handshake. Errors from the system's own store
    // (no bundle installed, an unreadable file among many) leave the built-in roots.
    let named: Vec<String> = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .into_iter()
        .filter_map(|var| std::env::var(var).ok().map(|v| format!("{var}={v}")))
        .collect();
    if !named.is_empty() {
        if let Some(error) = native.errors.first() {
            return Err(format!("{}: {error}", named.join(" ")));
        }
        if native.certs.is_empty() {
            return Err(format!("{}: no PEM certificate in it", named.join(" ")));
        }
    }
    // A certificate rustls cannot parse is skipped, as OpenSSL skips it.
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    Ok(Arc::new(roots))
}
