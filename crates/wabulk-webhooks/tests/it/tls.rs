//! The receiver over HTTPS: a CA and a server certificate for 127.0.0.1 made
//! for each test, written as PEM files and loaded as `webhooks.tls_*_file`
//! would be, and a client that trusts only that CA.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use wabulk_webhooks::{AppSecret, ReceiverConfig, ServerTls, TlsFilesError};

use super::{notification, post, read, start_serving, status, SECRET, STATUSES};

/// A directory of its own under the system's temporary one, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("wabulk-webhooks-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a PEM file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA, and a server certificate for 127.0.0.1 it signed, as PEM.
struct Pki {
    ca: CertificateDer<'static>,
    /// The server's certificate, then the CA: the chain a server sends.
    chain_pem: String,
    key_pem: String,
}

impl Pki {
    fn generate() -> Pki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, format!("wabulk webhooks test CA {}", rand_suffix()));
        let ca = ca.self_signed(&ca_key).expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("server params");
        server.distinguished_name.push(DnType::CommonName, "wabulk webhook receiver");
        let server = server.signed_by(&key, &ca, &ca_key).expect("server certificate");
        Pki {
            ca: ca.der().clone(),
            chain_pem: format!("{}{}", server.pem(), ca.pem()),
            key_pem: key.serialize_pem(),
        }
    }

    /// The chain and key written to `dir`, loaded as the receiver loads them.
    fn server_tls(&self, dir: &TempDir) -> ServerTls {
        let (cert, key) = (dir.write("cert.pem", &self.chain_pem), dir.write("key.pem", &self.key_pem));
        ServerTls::from_pem_files(&cert, &key).expect("a matching certificate and key load")
    }

    /// A client trusting this CA alone.
    fn client(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("trust the CA");
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

/// Distinct CA names per test: clients look a CA up by its name.
fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// One request over HTTPS on a fresh connection: the status, or the error
/// of the handshake or the exchange.
async fn call_tls(
    addr: SocketAddr,
    client: &TlsConnector,
    request: Request<Full<Bytes>>,
) -> Result<StatusCode, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let stream = client.connect(name, stream).await.map_err(|e| format!("TLS handshake: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    response.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(status)
}

fn signed(wamid: &str, state: &str) -> Request<Full<Bytes>> {
    let body = notification(vec![status(wamid, state, Some(wamid))], vec![]);
    post(&body, Some(&AppSecret::new(SECRET).sign(&body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_notifications_reach_kafka_and_bad_clients_do_not_stop_the_listener() {
    let dir = TempDir::new("serve");
    let pki = Pki::generate();
    let running = start_serving(ReceiverConfig::DEFAULT_MAX_BODY_BYTES, Some(pki.server_tls(&dir))).await;
    let client = pki.client();
    // Connected and silent: its handshake waits in its own task, so it must
    // hold nothing else up for the 10 s it is allowed.
    let _silent = TcpStream::connect(running.addr).await.expect("connect");
    let first = tokio::time::timeout(
        Duration::from_secs(5),
        call_tls(running.addr, &client, signed("wamid.a", "sent")),
    )
    .await
    .expect("served while another handshake is pending");
    assert_eq!(first, Ok(StatusCode::OK));

    // Plain HTTP to the HTTPS port: no HTTP answer, the connection closed.
    let mut plain = TcpStream::connect(running.addr).await.expect("connect");
    let body = b"{}";
    let head = format!(
        "POST /webhooks/whatsapp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    plain.write_all(head.as_bytes()).await.expect("write");
    plain.write_all(body).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer))
        .await
        .expect("the connection is closed, not left open");
    assert!(!answer.starts_with(b"HTTP/"), "plain HTTP was answered: {}", String::from_utf8_lossy(&answer));

    // A client that does not trust the certificate fails its handshake.
    let stranger = Pki::generate().client();
    let refused = call_tls(running.addr, &stranger, signed("wamid.x", "sent")).await;
    assert!(matches!(&refused, Err(e) if e.starts_with("TLS handshake")), "{refused:?}");

    // The listener still serves.
    assert_eq!(call_tls(running.addr, &client, signed("wamid.b", "delivered")).await, Ok(StatusCode::OK));
    let records = read(&running.brokers, STATUSES, 3, Duration::from_secs(3)).await;
    let mut seen: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.payload).unwrap();
            (v["wamid"].as_str().unwrap().to_owned(), v["status"].as_str().unwrap().to_owned())
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [("wamid.a".to_owned(), "sent".to_owned()), ("wamid.b".to_owned(), "delivered".to_owned())],
        "the two HTTPS notifications' statuses, and nothing of the refused ones"
    );
    assert_eq!(running.metrics.webhook_requests.with_label_values(&["ok"]).get(), 2);
    let _ = running.stop.send(());
}

/// A client that connected and never began its handshake does not hold the
/// drain: the receiver stops well within the 10 s it could otherwise wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_handshake_does_not_hold_the_shutdown() {
    let dir = TempDir::new("drain");
    let pki = Pki::generate();
    let running = start_serving(ReceiverConfig::DEFAULT_MAX_BODY_BYTES, Some(pki.server_tls(&dir))).await;
    let _silent = TcpStream::connect(running.addr).await.expect("connect");
    // Time for the listener to accept it and start its handshake.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = running.stop.send(());
    let stopped = tokio::time::timeout(Duration::from_secs(3), running.served).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "the receiver did not stop promptly: {stopped:?}");
}

#[test]
fn pem_files_that_cannot_serve_are_refused_naming_the_file_never_the_key() {
    let dir = TempDir::new("files");
    let pki = Pki::generate();
    let cert = dir.write("cert.pem", &pki.chain_pem);
    let key = dir.write("key.pem", &pki.key_pem);
    let loaded = ServerTls::from_pem_files(&cert, &key).expect("a matching pair loads");
    assert_eq!(format!("{loaded:?}"), "ServerTls(***)");

    let missing = dir.0.join("absent.pem");
    let refused = |cert: &Path, key: &Path| ServerTls::from_pem_files(cert, key).expect_err("refused");
    let error = refused(&missing, &key);
    assert!(
        matches!(&error, TlsFilesError::Certificate { path, reason }
            if path.ends_with("absent.pem") && reason.starts_with("cannot read it")),
        "{error}"
    );
    let error = refused(&cert, &missing);
    assert!(matches!(&error, TlsFilesError::Key { path, .. } if path.ends_with("absent.pem")), "{error}");
    // The files swapped: no certificate in the key file, no key in the chain.
    let error = refused(&key, &key);
    assert!(
        matches!(&error, TlsFilesError::Certificate { reason, .. } if reason.contains("no PEM certificate")),
        "{error}"
    );
    let error = refused(&cert, &cert);
    assert!(
        matches!(&error, TlsFilesError::Key { reason, .. } if reason.contains("no unencrypted private key")),
        "{error}"
    );
    // Another pair's key.
    let other_key = dir.write("other-key.pem", &Pki::generate().key_pem);
    let error = refused(&cert, &other_key);
    assert!(matches!(&error, TlsFilesError::Mismatch { .. }), "{error}");
    assert!(error.to_string().contains("does not belong"), "{error}");
    // A damaged key: the message says so without quoting a byte of it.
    let body: String = pki.key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let damaged = pki.key_pem.replacen(&body[..16], "!!!!NOT-BASE64!!", 1);
    let damaged = dir.write("damaged-key.pem", &damaged);
    let error = refused(&cert, &damaged);
    let text = error.to_string();
    assert!(matches!(&error, TlsFilesError::Key { .. }), "{error}");
    assert!(!text.contains("NOT-BASE64") && !text.contains(&body[16..40]), "key material in: {text}");
}
