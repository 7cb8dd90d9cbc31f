//! What sits under HTTP/2: the TLS client configuration (which roots are
//! trusted) and the way to the host (direct, or an HTTP CONNECT tunnel through
//! a proxy). Connection errors are turned into messages that name the problem
//! and never carry proxy credentials.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderValue, Uri};
use hyper_util::client::proxy::matcher::Matcher;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{SenderConfig, SenderError, Target};

/// Largest CONNECT answer read from a proxy (status line and headers).
const MAX_PROXY_ANSWER: usize = 16 * 1024;

/// An HTTP proxy's URL, `http://[user:password@]host[:port]`. Its `Debug` and
/// `Display` show the credentials as `***`, so it can sit in logged structs.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    url: String,
    shown: String,
}

impl ProxyUrl {
    /// Checks the URL: `http://` (or no scheme, as curl reads it), a host, no
    /// path. Errors show the URL with its credentials masked.
    pub fn parse(url: &str) -> Result<ProxyUrl, SenderError> {
        let url = url.trim();
        let shown = mask_credentials(url);
        let invalid = |reason: &str| SenderError::InvalidProxy { url: shown.clone(), reason: reason.into() };
        let with_scheme = if url.contains("://") { url.to_owned() } else { format!("http://{url}") };
        let uri: Uri = with_scheme.parse().map_err(|_| invalid("not a valid URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(invalid("TLS to the proxy itself (https://) is not supported; use http://"))
            }
            _ => return Err(invalid("only http:// proxies (HTTP CONNECT) are supported")),
        }
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        let host = authority.host().rsplit('@').next().unwrap_or_default();
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("a proxy URL has no path"));
        }
        Ok(ProxyUrl { shown: mask_credentials(&with_scheme), url: with_scheme })
    }

    /// The URL with its credentials masked, for messages.
    pub fn redacted(&self) -> &str {
        &self.shown
    }

    /// Whether the URL carries credentials.
    pub fn has_credentials(&self) -> bool {
        self.url != self.shown
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ProxyUrl").field(&self.shown).finish()
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `scheme://user:pass@host` → `scheme://***@host`; anything else unchanged.
pub fn mask_credentials(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_owned() };
    let masked = format!("***@{}", &rest[at + 1..]);
    match scheme {
        Some(scheme) => format!("{scheme}://{masked}"),
        None => masked,
    }
}

/// A CONNECT tunnel through a proxy to the target.
#[derive(Clone)]
pub(crate) struct Tunnel {
    /// `host:port` of the proxy, to connect to.
    proxy_host: String,
    proxy_port: u16,
    /// `Basic …`, marked sensitive; `None` without credentials.
    authorization: Option<HeaderValue>,
    /// The proxy URL, credentials masked, for messages.
    shown: String,
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel")
            .field("proxy", &self.shown)
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The tunnel to use for `target`, or `None` to connect directly: no proxy
/// configured, or `no_proxy` names the host (curl's NO_PROXY rules: host
/// suffixes, `*`, IP addresses and networks).
pub(crate) fn route(config: &SenderConfig, target: &Target) -> Result<Option<Tunnel>, SenderError> {
    let Some(proxy) = &config.proxy else { return Ok(None) };
    let matcher = Matcher::builder().all(proxy.url.clone()).no(config.no_proxy.clone()).build();
    let destination: Uri = format!("{}://{}/", target.scheme, target.authority).parse().map_err(
        |e: http::uri::InvalidUri| SenderError::InvalidUrl {
            url: config.base_url.clone(),
            reason: e.to_string(),
        },
    )?;
    let Some(intercept) = matcher.intercept(&destination) else {
        tracing::info!(proxy = %proxy, host = %target.host, "the Graph API host is in NO_PROXY: connecting directly");
        return Ok(None);
    };
    let invalid =
        |reason: &str| SenderError::InvalidProxy { url: proxy.shown.clone(), reason: reason.into() };
    let authority = intercept.uri().authority().ok_or_else(|| invalid("no host"))?;
    let proxy_host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let proxy_port = authority.port_u16().unwrap_or(80);
    tracing::info!(proxy = %proxy, host = %target.host, "the Graph API is reached through an HTTP CONNECT proxy");
    Ok(Some(Tunnel {
        proxy_host,
        proxy_port,
        authorization: intercept.basic_auth().cloned(),
        shown: proxy.shown.clone(),
    }))
}

/// Opens a TCP connection to the proxy and asks it for a tunnel to the
/// target (`CONNECT host:port`); the stream then carries TLS or h2c as if it
/// were a direct connection. Errors name the proxy (credentials masked) and
/// its answer.
pub(crate) async fn open_tunnel(tunnel: &Tunnel, target: &Target) -> Result<TcpStream, String> {
    let shown = &tunnel.shown;
    let mut tcp = TcpStream::connect((tunnel.proxy_host.as_str(), tunnel.proxy_port))
        .await
        .map_err(|e| format!("TCP connect to the proxy {shown}: {e}"))?;
    let destination = match target.host.contains(':') {
        true => format!("[{}]:{}", target.host, target.port),
        false => format!("{}:{}", target.host, target.port),
    };
    let mut request = format!("CONNECT {destination} HTTP/1.1\r\nHost: {destination}\r\n").into_bytes();
    if let Some(authorization) = &tunnel.authorization {
        request.extend_from_slice(b"Proxy-Authorization: ");
        request.extend_from_slice(authorization.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    tcp.write_all(&request).await.map_err(|e| format!("writing CONNECT to the proxy {shown}: {e}"))?;

    let mut answer = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let read =
            tcp.read(&mut chunk).await.map_err(|e| format!("reading the proxy {shown}'s answer: {e}"))?;
        if read == 0 {
            return Err(format!("the proxy {shown} closed the connection instead of answering CONNECT"));
        }
        answer.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&answer) {
            Ok(httparse::Status::Complete(length)) => {
                let code = response.code.unwrap_or_default();
                let reason = response.reason.unwrap_or_default();
                if !(200..300).contains(&code) {
                    return Err(refusal(shown, &destination, code, reason, tunnel.authorization.is_some()));
                }
                // The server speaks only after the client (TLS ClientHello or
                // the h2 preface), so nothing may follow the proxy's answer.
                if length != answer.len() {
                    return Err(format!("the proxy {shown} sent data after its CONNECT answer"));
                }
                return Ok(tcp);
            }
            Ok(httparse::Status::Partial) if answer.len() < MAX_PROXY_ANSWER => {}
            Ok(httparse::Status::Partial) => {
                return Err(format!(
                    "the proxy {shown}'s CONNECT answer is longer than {MAX_PROXY_ANSWER} bytes"
                ))
            }
            Err(e) => return Err(format!("the proxy {shown} answered CONNECT with invalid HTTP: {e}")),
        }
    }
}

fn refusal(shown: &str, destination: &str, code: u16, reason: &str, had_credentials: bool) -> String {
    let what = match code {
        407 if had_credentials => "refused the proxy credentials",
        407 => "requires proxy credentials (give them as http://user:password@host:port)",
        403 => "does not allow a tunnel to this host and port",
        _ => "refused the tunnel",
    };
    format!("the proxy {shown} {what}: CONNECT {destination} answered {code} {reason}")
}

/// The TLS client configuration for https targets: the system's roots (its
/// store, or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set), the bundled Mozilla
/// roots, and the CAs of `ca_file`; ring; ALPN `h2` only (the pool speaks
/// nothing else).
pub(crate) fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, SenderError> {
    let mut roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let bundled = roots.len();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "cannot read part of the system's certificate store");
    }
    let (system, unusable) = roots.add_parsable_certificates(native.certs);
    if unusable > 0 {
        tracing::debug!(unusable, "system certificates rustls cannot use as roots were skipped");
    }
    let from_file = match ca_file {
        Some(path) => {
            let certs = read_ca_file(path)?;
            let count = certs.len();
            for cert in certs {
                roots.add(cert).map_err(|e| SenderError::CaFile {
                    path: path.display().to_string(),
                    reason: format!("a certificate cannot be a trust anchor: {e}"),
                })?;
            }
            count
        }
        None => 0,
    };
    tracing::info!(system, bundled, ca_file = from_file, "TLS roots trusted for the Graph API");
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| SenderError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of a PEM file: at least one, each usable as a trust
/// anchor. Errors name the file and the problem.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, SenderError> {
    let error = |reason: String| SenderError::CaFile { path: path.display().to_string(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(pem_problem(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(pem_problem(e)))?;
    if certs.is_empty() {
        return Err(error("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into()));
    }
    let mut check = rustls::RootCertStore::empty();
    for cert in &certs {
        check.add(cert.clone()).map_err(|e| error(format!("a certificate cannot be a trust anchor: {e}")))?;
    }
    Ok(certs)
}

fn pem_problem(error: rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(e) => format!("cannot read it: {e}"),
        other => format!("not a valid PEM file: {other:?}"),
    }
}

/// A TLS handshake failure as a message that names the certificate problem.
pub(crate) fn tls_failure(host: &str, error: &std::io::Error) -> String {
    let tls = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(problem)) => {
            let hint = match problem {
                rustls::CertificateError::UnknownIssuer => {
                    ": it is not signed by a trusted CA (add the CA to graph.ca_file, the system's \
                     store or SSL_CERT_FILE)"
                }
                rustls::CertificateError::BadSignature => {
                    ": its signature does not match the trusted CA of that name (is graph.ca_file the \
                     right CA?)"
                }
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. } => ": it does not name this host",
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
                    ": it has expired"
                }
                _ => "",
            };
            format!("TLS handshake with {host}: the server's certificate is not trusted ({error}){hint}")
        }
        _ => format!("TLS handshake with {host}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_are_checked_and_never_shown_with_credentials() {
        let proxy = ProxyUrl::parse("http://alice:s3cret@proxy.internal:3128").unwrap();
        assert_eq!(proxy.redacted(), "http://***@proxy.internal:3128");
        assert!(proxy.has_credentials());
        assert!(!format!("{proxy:?} {proxy}").contains("s3cret"));
        assert_eq!(ProxyUrl::parse("proxy:3128").unwrap().redacted(), "http://proxy:3128");
        for bad in
            ["https://u:s3cret@proxy:443", "socks5://u:s3cret@p:1080", "http://u:s3cret@p:3128/x", "http://"]
        {
            let error = ProxyUrl::parse(bad).unwrap_err().to_string();
            assert!(!error.contains("s3cret"), "{error}");
        }
    }

    #[test]
    fn masks_userinfo_only() {
        assert_eq!(mask_credentials("http://u:p@h:1"), "http://***@h:1");
        assert_eq!(mask_credentials("u:p@h:1"), "***@h:1");
        assert_eq!(mask_credentials("http://h:1/a@b"), "http://h:1/a@b");
        assert_eq!(mask_credentials("http://h:1"), "http://h:1");
    }

    #[test]
    fn no_proxy_bypasses_the_proxy() {
        let proxy = Some(ProxyUrl::parse("http://u:p@127.0.0.1:3128").unwrap());
        let target = Target::parse("https://graph.facebook.com/v21.0").unwrap();
        let config = |no_proxy: &str| SenderConfig {
            proxy: proxy.clone(),
            no_proxy: no_proxy.into(),
            ..SenderConfig::default()
        };
        let tunnel = route(&config(""), &target).unwrap().expect("through the proxy");
        assert_eq!((tunnel.proxy_host.as_str(), tunnel.proxy_port), ("127.0.0.1", 3128));
        assert!(tunnel.authorization.as_ref().is_some_and(HeaderValue::is_sensitive));
        assert!(!format!("{tunnel:?}").contains("dTpw"), "{tunnel:?}");
        for no_proxy in ["facebook.com", ".facebook.com", "*", "localhost, graph.facebook.com"] {
            assert!(route(&config(no_proxy), &target).unwrap().is_none(), "{no_proxy}");
        }
        assert!(route(&config("book.com"), &target).unwrap().is_some());
        let local = Target::parse("http://127.0.0.1:8080/v21.0").unwrap();
        assert!(route(&config("127.0.0.0/8"), &local).unwrap().is_none());
        assert!(route(&config("10.0.0.1"), &local).unwrap().is_some());
    }

    #[test]
    fn tls_config_offers_h2_and_a_bad_ca_file_is_named() {
        assert_eq!(tls_config(None).unwrap().alpn_protocols, vec![b"h2".to_vec()]);
        let missing = Path::new("/nonexistent/ca.pem");
        let error = tls_config(Some(missing)).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/ca.pem") && error.contains("cannot read"), "{error}");
        let dir = std::env::temp_dir().join(format!("wabulk-sender-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let error = read_ca_file(&not_pem).unwrap_err().to_string();
        assert!(error.contains("no PEM certificate"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
