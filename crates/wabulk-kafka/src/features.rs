//! What the linked librdkafka was built with: its version and its
//! `builtin.features` (`ssl`, `sasl_scram`, `zstd`, ...), so that a missing
//! capability shows up in `check-config` and in a test rather than as a
//! broker connection that never succeeds.

use rdkafka::config::ClientConfig;

use crate::KafkaError;

/// The linked librdkafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientBuild {
    /// e.g. `2.12.1`.
    pub version: String,
    /// `builtin.features`, e.g. `gzip`, `snappy`, `ssl`, `sasl_scram`, `zstd`.
    pub features: Vec<String>,
}

impl ClientBuild {
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

/// Reads the version and `builtin.features` from a client configuration
/// (no client is created, nothing connects).
pub fn client_build() -> Result<ClientBuild, KafkaError> {
    let native = ClientConfig::new()
        .create_native_config()
        .map_err(|source| KafkaError::Client { role: "configuration", source })?;
    let features = native
        .get("builtin.features")
        .map_err(|source| KafkaError::Client { role: "configuration", source })?;
    Ok(ClientBuild {
        version: rdkafka::util::get_rdkafka_version().1,
        features: features.split(',').map(str::trim).filter(|f| !f.is_empty()).map(str::to_owned).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The features managed Kafka needs (TLS, SASL/SCRAM, OAUTHBEARER,
    /// GSSAPI through Cyrus SASL) and every compression codec.
    #[test]
    fn librdkafka_is_built_with_tls_sasl_and_every_codec() {
        let build = client_build().unwrap();
        for feature in [
            "ssl",
            "sasl",
            "sasl_plain",
            "sasl_scram",
            "sasl_oauthbearer",
            "sasl_gssapi",
            "gzip",
            "snappy",
            "lz4",
            "zstd",
        ] {
            assert!(build.has(feature), "librdkafka {} lacks {feature}: {:?}", build.version, build.features);
        }
    }
}
