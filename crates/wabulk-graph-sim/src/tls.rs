//! The simulator's HTTPS mode: a CA and a server certificate made at start
//! (nothing to ship or expire), and the rustls server configuration.

use std::io;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// What the HTTPS listener serves with, and the CA a client must trust.
pub(crate) struct SimTls {
    pub(crate) server: Arc<rustls::ServerConfig>,
    pub(crate) ca_pem: String,
}

impl SimTls {
    /// A fresh CA (so a client trusting an older run's CA is refused) and a
    /// server certificate it signed for the loopback names.
    pub(crate) fn generate() -> io::Result<SimTls> {
        let ca_key = KeyPair::generate().map_err(other)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(other)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own per run: clients look a CA up by name, and another
        // run's CA of the same name would read as a bad signature rather than
        // as the unknown issuer it is.
        let run: u64 = rand::random();
        ca.distinguished_name.push(DnType::CommonName, format!("wabulk graph simulator CA {run:016x}"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key).map_err(other)?;

        let server_key = KeyPair::generate().map_err(other)?;
        let names = ["127.0.0.1", "::1", "localhost"].map(String::from).to_vec();
        let mut server = CertificateParams::new(names).map_err(other)?;
        server.distinguished_name.push(DnType::CommonName, "wabulk graph simulator");
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = server.signed_by(&server_key, &ca, &ca_key).map_err(other)?;

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(other)?
                .with_no_client_auth()
                .with_single_cert(vec![server.der().clone(), ca.der().clone()], key)
                .map_err(other)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(SimTls { server: Arc::new(config), ca_pem: ca.pem() })
    }
}

fn other(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("cannot make the simulator's certificate: {error}"))
}
