//! Sender configuration, its validation, and the parsed target (scheme, host,
//! port, path prefix) every request and connection is built from.

use std::path::PathBuf;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;

/// How the sender reaches the Graph API. Every tunable says its range and the
/// effect of moving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderConfig {
    /// `https://graph.facebook.com/v21.0`, or `http://127.0.0.1:PORT/v21.0`
    /// for the simulator: `http://` means HTTP/2 cleartext with prior
    /// knowledge (no HTTP/1.1 upgrade). Requests go to
    /// `{base_url}/{phone_number_id}/messages`.
    pub base_url: String,
    /// Whole exchange (request out, status, body read) after a stream was
    /// obtained. Meta's p99 is about 2 s: much lower produces timeouts that
    /// are retried and may duplicate messages; much higher holds streams
    /// hostage to dead requests. Default 10 s.
    pub request_timeout: Duration,
    /// TCP connect + TLS + HTTP/2 handshake + the server's SETTINGS. Default 5 s.
    pub connect_timeout: Duration,
    /// Streams used at once on one connection, 1..; the server's
    /// SETTINGS_MAX_CONCURRENT_STREAMS wins when it is lower. Lower values
    /// spread load over more connections (more TCP/TLS handshakes); higher
    /// values than the server allows are never used. Default 100.
    pub max_streams_per_connection: u32,
    /// Connections to the one host, 1..; with `max_streams_per_connection`
    /// it bounds the requests in flight (64 × 100 = 6400 by default, enough
    /// for three 1000-mps numbers at 2 s latency). When all are full, sends
    /// wait in FIFO order for a free stream.
    pub max_connections: u32,
    /// HTTP/2 PING every this often on each connection, so that a dead peer
    /// or a silently dropped NAT mapping is found before requests time out on
    /// it. Default 20 s.
    pub keepalive_interval: Duration,
    /// How long a PING may wait for its answer before the connection is
    /// considered dead and replaced. Default 10 s.
    pub keepalive_timeout: Duration,
    /// Cap of the request-scope exponential backoff (transient errors, 5xx,
    /// timeouts, connection errors). Default 60 s.
    pub max_request_backoff: Duration,
    /// Extra CAs (PEM) trusted for https targets, besides the system's store
    /// (or `SSL_CERT_FILE` / `SSL_CERT_DIR`) and the bundled Mozilla roots:
    /// a private CA, or that of a TLS-inspecting proxy. Default none.
    pub ca_file: Option<PathBuf>,
    /// HTTP proxy to tunnel through with CONNECT (TLS or h2c then runs inside
    /// the tunnel, end to end with the host). Default none: direct.
    pub proxy: Option<crate::ProxyUrl>,
    /// Hosts reached directly even with a `proxy`, in NO_PROXY's syntax:
    /// comma-separated host suffixes, `*`, IP addresses or networks.
    pub no_proxy: String,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            base_url: "https://graph.facebook.com/v21.0".to_owned(),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_streams_per_connection: 100,
            max_connections: 64,
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
            max_request_backoff: crate::classify::DEFAULT_MAX_REQUEST_BACKOFF,
            ca_file: None,
            proxy: None,
            no_proxy: String::new(),
        }
    }
}

/// Why a [`crate::Sender`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("graph base URL {url:?} is not a valid URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("graph base URL {url:?} must start with http:// or https://")]
    UnsupportedScheme { url: String },
    #[error("invalid sender configuration: {0}")]
    InvalidConfig(&'static str),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("proxy {url}: {reason}")]
    InvalidProxy { url: String, reason: String },
}

/// The parsed `base_url`, shared by the pool (where to connect) and the
/// request builder (what to put in `:scheme`, `:authority` and `:path`).
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) tls: bool,
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    /// Host name or address to connect to and to verify the certificate of.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path prefix without a trailing slash, e.g. `/v21.0`.
    pub(crate) path_prefix: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Self, SenderError> {
        let invalid =
            |reason: &str| SenderError::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
        let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| invalid("no scheme"))?;
        let tls = match scheme.as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(SenderError::UnsupportedScheme { url: url.to_owned() }),
        };
        let authority = uri.authority().cloned().ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("credentials in the URL are not supported"));
        }
        if uri.query().is_some() {
            return Err(invalid("a query string is not supported"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Self { tls, scheme, authority, host, port, path_prefix })
    }

    /// `{scheme}://{authority}{prefix}/{id}/messages`, from which h2 takes the
    /// pseudo-headers.
    pub(crate) fn messages_uri(&self, phone_number_id: u64) -> Result<Uri, http::Error> {
        self.uri(&format!("{}/{}/messages", self.path_prefix, phone_number_id))
    }

    /// `{scheme}://{authority}{prefix}/{id}?fields=id`: the cheapest read of
    /// the number's node that still needs a valid token.
    pub(crate) fn token_check_uri(&self, phone_number_id: u64) -> Result<Uri, http::Error> {
        self.uri(&format!("{}/{}?fields=id", self.path_prefix, phone_number_id))
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

impl SenderConfig {
    pub(crate) fn validate(&self) -> Result<(), SenderError> {
        let checks: [(bool, &'static str); 6] = [
            (self.max_streams_per_connection == 0, "max_streams_per_connection must be at least 1"),
            (self.max_connections == 0, "max_connections must be at least 1"),
            (self.request_timeout.is_zero(), "request_timeout must be positive"),
            (self.connect_timeout.is_zero(), "connect_timeout must be positive"),
            (self.keepalive_interval.is_zero(), "keepalive_interval must be positive"),
            (self.keepalive_timeout.is_zero(), "keepalive_timeout must be positive"),
        ];
        match checks.into_iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(SenderError::InvalidConfig(why)),
            None if u64::from(self.max_streams_per_connection) * u64::from(self.max_connections)
                > 1 << 24 =>
            {
                Err(SenderError::InvalidConfig("max_connections × max_streams_per_connection is too large"))
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meta_and_simulator_urls() {
        let t = Target::parse("https://graph.facebook.com/v21.0").unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port, t.path_prefix.as_str()), ("graph.facebook.com", 443, "/v21.0"));
        assert_eq!(
            t.messages_uri(106540352242922).unwrap().to_string(),
            "https://graph.facebook.com/v21.0/106540352242922/messages"
        );

        let t = Target::parse("http://127.0.0.1:8080/v21.0/").unwrap();
        assert!(!t.tls);
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        assert_eq!(t.messages_uri(7).unwrap().to_string(), "http://127.0.0.1:8080/v21.0/7/messages");
        assert_eq!(t.token_check_uri(7).unwrap().to_string(), "http://127.0.0.1:8080/v21.0/7?fields=id");

        let t = Target::parse("http://[::1]:9/").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path_prefix.as_str()), ("::1", 9, ""));
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(matches!(Target::parse("ftp://x/"), Err(SenderError::UnsupportedScheme { .. })));
        for bad in
            ["", "graph.facebook.com/v21.0", "http://", "http://u:p@host/", "http://h/v21.0?x=1", "ht tp://x"]
        {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validates_limits() {
        assert!(SenderConfig::default().validate().is_ok());
        let bad = SenderConfig { max_connections: 0, ..SenderConfig::default() };
        assert!(matches!(bad.validate(), Err(SenderError::InvalidConfig(_))));
        let bad = SenderConfig { request_timeout: Duration::ZERO, ..SenderConfig::default() };
        assert!(bad.validate().is_err());
    }
}
