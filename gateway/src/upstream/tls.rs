//! The certificates an `https` upstream is verified against. By default, Mozilla's roots (built
//! in, so a container without a CA bundle still reaches public services) plus the system's trust
//! store, where a company's private CA is usually installed. When `SSL_CERT_FILE` or
//! `SSL_CERT_DIR` is set, the bundle and directories they name are the whole trusted set, as for
//! OpenSSL and curl: an operator can trust only a private CA.
//!
//! The store is read once per process, when the first service with an `https` instance (or a
//! `jwks_url`) is built; a CA added later needs a restart. A store that failed to load is not
//! kept: the next reload tries again.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::{ClientConfig, RootCertStore};
use rustls_native_certs::{ErrorKind, load_certs_from_paths};

use super::BuildError;

/// The client TLS settings for a service; `https` is whether any of its instances uses TLS (a
/// service without one does not read the trust store, nor fail on a bad `SSL_CERT_FILE`).
pub fn client_config(https: bool) -> Result<ClientConfig, BuildError> {
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
fn trusted() -> Result<Arc<RootCertStore>, BuildError> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    if let Some(roots) = ROOTS.get() {
        return Ok(roots.clone());
    }
    let roots = Arc::new(load(&Named::from_env()).map_err(BuildError::TrustStore)?);
    Ok(ROOTS.get_or_init(|| roots).clone())
}

/// What `SSL_CERT_FILE` and `SSL_CERT_DIR` name, read as rustls-native-certs reads them (a
/// directory list split like `PATH`, empty entries dropped).
#[derive(Debug, Default)]
struct Named {
    file: Option<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Named {
    fn from_env() -> Self {
        Self {
            file: std::env::var_os("SSL_CERT_FILE").map(PathBuf::from),
            dirs: std::env::var_os("SSL_CERT_DIR")
                .map(|dirs| {
                    std::env::split_paths(&dirs)
                        .filter(|d| !d.as_os_str().is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

fn load(named: &Named) -> Result<RootCertStore, String> {
    if named.file.is_none() && named.dirs.is_empty() {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        // The system's store may be missing or partly unreadable; the built-in roots stay.
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        return Ok(roots);
    }
    let mut roots = RootCertStore::empty();
    // The file named must be read whole: a typo would otherwise show only as every https
    // backend failing its handshake.
    if let Some(file) = &named.file {
        let loaded = load_certs_from_paths(Some(file), None);
        if let Some(error) = loaded.errors.first() {
            return Err(format!("SSL_CERT_FILE={}: {error}", file.display()));
        }
        roots.add_parsable_certificates(loaded.certs);
    }
    // A directory must be readable; a file in it that holds no certificate is passed over, as
    // OpenSSL passes it over.
    for dir in &named.dirs {
        let loaded = load_certs_from_paths(None, Some(dir));
        let unreadable = loaded
            .errors
            .iter()
            .find(|e| matches!(&e.kind, ErrorKind::Io { path, .. } if path == dir));
        if let Some(error) = unreadable {
            return Err(format!("SSL_CERT_DIR entry {}: {error}", dir.display()));
        }
        roots.add_parsable_certificates(loaded.certs);
    }
    if roots.is_empty() {
        return Err(format!("no usable certificate in {}", describe(named)));
    }
    Ok(roots)
}

fn describe(named: &Named) -> String {
    let file = named
        .file
        .iter()
        .map(|f| format!("SSL_CERT_FILE={}", f.display()));
    let dirs = named
        .dirs
        .iter()
        .map(|d| format!("SSL_CERT_DIR entry {}", d.display()));
    file.chain(dirs).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tls")
    }

    fn named(file: Option<PathBuf>, dirs: &[PathBuf]) -> Named {
        Named {
            file,
            dirs: dirs.to_vec(),
        }
    }

    #[test]
    fn by_default_the_built_in_roots_are_trusted() {
        let roots = load(&Named::default()).unwrap();
        assert!(roots.len() >= webpki_roots::TLS_SERVER_ROOTS.len());
    }

    #[test]
    fn a_named_bundle_is_the_whole_trusted_set() {
        let roots = load(&named(Some(fixtures().join("ca.pem")), &[])).unwrap();
        assert_eq!(roots.len(), 1);
        // The fixture directory holds the CA and two server certificates (and keys, a script:
        // passed over).
        let roots = load(&named(None, &[fixtures()])).unwrap();
        assert_eq!(roots.len(), 3);
    }

    #[test]
    fn what_is_named_must_be_readable_and_hold_a_certificate() {
        let missing = load(&named(Some("/nonexistent/ca.pem".into()), &[])).unwrap_err();
        assert!(
            missing.starts_with("SSL_CERT_FILE=/nonexistent/ca.pem: "),
            "{missing}"
        );
        let no_dir = load(&named(None, &["/nonexistent".into()])).unwrap_err();
        assert!(
            no_dir.starts_with("SSL_CERT_DIR entry /nonexistent: "),
            "{no_dir}"
        );
        let not_pem = load(&named(Some(fixtures().join("make.sh")), &[])).unwrap_err();
        assert_eq!(
            not_pem,
            "no usable certificate in SSL_CERT_FILE=".to_owned()
                + fixtures().join("make.sh").to_str().unwrap()
        );
    }
}
