//! HTTPS on the receiver's own listener (CONTRACT §8): a certificate chain
//! and its private key, read from PEM files at start.
//!
//! Errors name the file and what is wrong with it, never its contents: a
//! key file's bytes must not reach a log, even when they are not a key.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What a key file without a usable key is told; an encrypted key is one
/// (the receiver would have no passphrase to open it with).
const NO_KEY: &str =
    "no unencrypted private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY) in it";

/// The receiver's certificate and key, ready to serve. Its `Debug` shows
/// nothing of the key.
#[derive(Clone)]
pub struct ServerTls(Arc<rustls::ServerConfig>);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls(***)")
    }
}

/// Why the certificate and key files cannot serve HTTPS. Which variant says
/// which file (and so which configuration key) to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsFilesError {
    #[error("{path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("{path}: {reason}")]
    Key { path: String, reason: String },
    #[error(
        "the key in {key_path} does not belong to the first certificate in {cert_path} (the server's \
         own certificate must come first, its CA after)"
    )]
    Mismatch { cert_path: String, key_path: String },
}

impl ServerTls {
    /// `cert_file`: the server's certificate first, then the intermediate
    /// CAs a client needs to reach its root. `key_file`: its private key
    /// (PKCS#8, PKCS#1 or SEC1), unencrypted.
    pub fn from_pem_files(cert_file: &Path, key_file: &Path) -> Result<ServerTls, TlsFilesError> {
        let cert_error =
            |reason: String| TlsFilesError::Certificate { path: cert_file.display().to_string(), reason };
        let key_error = |reason: String| TlsFilesError::Key { path: key_file.display().to_string(), reason };
        let chain = CertificateDer::pem_file_iter(cert_file)
            .map_err(|e| cert_error(pem_problem(e)))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_error(pem_problem(e)))?;
        if chain.is_empty() {
            return Err(cert_error("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into()));
        }
        let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| match e {
            pem::Error::NoItemsFound => key_error(NO_KEY.into()),
            other => key_error(pem_problem(other)),
        })?;
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring's provider supports the default protocol versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => TlsFilesError::Mismatch {
                        cert_path: cert_file.display().to_string(),
                        key_path: key_file.display().to_string(),
                    },
                    rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_) => {
                        cert_error(format!("the certificate cannot be used: {e}"))
                    }
                    // The key's own parse (rustls names its kind, not its bytes).
                    _ => key_error(format!("the key cannot be used: {e}")),
                })?;
        // The receiver speaks HTTP/1.1 only (Meta's webhooks are single
        // requests); offering `h2` would mislead a client that prefers it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls(Arc::new(config)))
    }

    pub(crate) fn config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.0)
    }
}

/// A PEM problem in words, without the file's bytes (pki-types' own
/// messages quote the offending line).
fn pem_problem(error: pem::Error) -> String {
    let problem = match error {
        pem::Error::Io(e) => return format!("cannot read it: {e}"),
        pem::Error::MissingSectionEnd { .. } => "a section has no -----END line",
        pem::Error::IllegalSectionStart { .. } => "a -----BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section is not valid base64",
        pem::Error::NoItemsFound => "nothing of the expected kind in it",
        _ => "it cannot be read",
    };
    format!("not a valid PEM file: {problem}")
}
