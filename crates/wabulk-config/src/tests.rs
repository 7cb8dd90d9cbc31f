use super::*;

const EXAMPLE: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
group_id = "wabulk"
jobs_topic = "wabulk.jobs"
results_topic = "wabulk.results"
dlq_topic = "wabulk.dlq"

[graph]
base_url = "https://graph.facebook.com/v21.0"
token_env = "WABULK_GRAPH_TOKEN"
request_timeout_ms = 10000

[limits]
default_mps = 80
pair_interval_s = 6
pair_burst = 45
waba_hourly_calls_per_number = 1800000
strict_phones = false

[[phones]]
id = "106540352242922"
waba_id = "102290129340398"
mps = 80

[[wabas]]
id = "102290129340398"
token_env = "WABA_102290129340398_TOKEN"
hourly_call_cap = 1800000

[http]
listen = "127.0.0.1:9464"
"#;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml(text, "test.toml", env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

#[test]
fn the_contract_example_loads() {
    let config = load(EXAMPLE, &[]).unwrap();
    assert_eq!(config.phones[0].mps, Some(80));
    assert_eq!(config.limits.pair_interval_s, 6.0);
    assert_eq!(config.token_env("102290129340398"), "WABA_102290129340398_TOKEN");
    assert_eq!(config.waba_cap("102290129340398"), 1_800_000);
}

#[test]
fn an_empty_file_gives_the_defaults() {
    let config = load("", &[]).unwrap();
    assert_eq!(config.kafka.jobs_topic, "wabulk.jobs");
    assert_eq!(config.limits.default_mps, 80);
    assert_eq!(config.http.listen, "127.0.0.1:9464");
}

#[test]
fn environment_overrides_win() {
    let env = [
        ("WABULK_KAFKA__BROKERS", "broker-1:9092,broker-2:9092"),
        ("WABULK_LIMITS__DEFAULT_MPS", "250"),
        ("WABULK_LIMITS__STRICT_PHONES", "true"),
        ("WABULK_GRAPH_TOKEN", "not an override: no double underscore"),
        ("PATH", "/usr/bin"),
    ];
    let config = load(EXAMPLE, &env).unwrap();
    assert_eq!(config.kafka.brokers, "broker-1:9092,broker-2:9092");
    assert_eq!(config.limits.default_mps, 250);
    assert!(config.limits.strict_phones);
}

#[test]
fn errors_name_the_key() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("[limits]\ndefault_mps = \"fast\"", &[], "limits.default_mps: invalid type: string \"fast\""),
        ("[limits]\npair_burst = 100", &[], "limits.pair_burst: must be 1 to 62"),
        (
            "[limits]\ndefault_msp = 80",
            &[],
            "limits.default_msp: unknown field `default_msp`, expected one of `default_mps`",
        ),
        ("[http]\nlisten = \"nowhere\"", &[], "http.listen: invalid socket address syntax"),
        ("[[phones]]\nid = \"12x\"\nwaba_id = \"1\"", &[], "phones[0].id: must contain only digits"),
        ("[[phones]]\nid = \"1\"\nwaba_id = \"1\"\nmps = 0", &[], "phones[0].mps: must be at least 1"),
        ("[[wabas]]\nid = \"5\"", &[], "wabas[0].id: no [[phones]] entry names this WABA"),
        ("", &[("WABULK_LIMITS__DEFAULT_MPS", "-3")], "limits.default_mps: invalid value"),
        ("", &[("WABULK_PHONES__ID", "1")], "environment variable WABULK_PHONES__ID: no section [phones]"),
        ("[graph]\nbase_url = \"ftp://x\"", &[], "graph.base_url: must start with https:// or http://"),
        ("[limits\n", &[], "test.toml: TOML parse error"),
    ];
    for (text, env, expected) in cases {
        let err = load(text, env).unwrap_err().to_string();
        assert!(err.starts_with(expected), "for {text:?}: got {err:?}, expected {expected:?}");
    }
}

#[test]
fn waba_cap_defaults_to_per_number_times_registered_numbers() {
    let text = r#"
[[phones]]
id = "1"
waba_id = "9"
[[phones]]
id = "2"
waba_id = "9"
"#;
    assert_eq!(load(text, &[]).unwrap().waba_cap("9"), 3_600_000);
}

#[test]
fn masked_rendering_never_shows_a_token() {
    let config = load(EXAMPLE, &[]).unwrap();
    let secret = "EAAG-super-secret-token";
    let text = config.render_masked(&|var| (var == "WABA_102290129340398_TOKEN").then(|| secret.to_string()));
    assert!(!text.contains(secret));
    assert!(text.contains("# WABA_102290129340398_TOKEN = \"***\"  (set)"), "{text}");
    assert!(text.contains("# WABULK_GRAPH_TOKEN = \"***\"  (NOT SET)"), "{text}");
    // What is printed loads back to the same configuration.
    let again = load(&text, &[]).unwrap();
    assert_eq!(again.phones.len(), 1);
}

#[test]
fn masked_rendering_never_shows_kafka_or_proxy_credentials() {
    let text = r#"
[kafka]
brokers = "pkc-1.confluent.cloud:9092"
[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "PLAIN"
"sasl.username" = "API-KEY-1"
"sasl.password" = "kafka-pw-1"
"ssl.key.password" = "kafka-pw-2"
"ssl.keystore.password" = "kafka-pw-3"
"sasl.oauthbearer.client.secret" = "kafka-pw-4"
[graph]
proxy = "http://alice:proxy-pw-5@proxy.internal:3128"
"#;
    let config = load(text, &[]).unwrap();
    let env = |var: &str| match var {
        "NO_PROXY" => Some("localhost,.internal".to_owned()),
        _ => None,
    };
    let shown = config.render_masked(&env);
    for secret in ["API-KEY-1", "kafka-pw-1", "kafka-pw-2", "kafka-pw-3", "kafka-pw-4", "proxy-pw-5", "alice"]
    {
        assert!(!shown.contains(secret), "{secret} in:\n{shown}");
    }
    assert!(shown.contains("\"security.protocol\" = \"SASL_SSL\""), "{shown}");
    assert!(shown.contains("proxy = \"http://***@proxy.internal:3128\""), "{shown}");
    assert!(shown.contains("# NO_PROXY = \"localhost,.internal\""), "{shown}");
    // What is printed still loads.
    load(&shown, &[]).unwrap();
}

#[test]
fn the_proxy_comes_from_the_key_else_the_variable_of_the_scheme() {
    let env = |var: &str| match var {
        "HTTPS_PROXY" => Some("http://u:env-pw@secure-proxy:3128".to_owned()),
        "http_proxy" => Some("plain-proxy:8080".to_owned()),
        _ => None,
    };
    let https = load("", &[]).unwrap();
    let (source, url) = https.proxy(&env).unwrap().unwrap();
    assert_eq!((source.as_str(), url.redacted()), ("HTTPS_PROXY", "http://***@secure-proxy:3128"));
    assert!(https.render_masked(&env).contains("# proxy from HTTPS_PROXY: http://***@secure-proxy:3128"));
    assert!(!https.render_masked(&env).contains("env-pw"));
    let http = load("[graph]\nbase_url = \"http://127.0.0.1:8080/v21.0\"", &[]).unwrap();
    assert_eq!(http.proxy(&env).unwrap().unwrap().1.redacted(), "http://plain-proxy:8080");
    let own = load("[graph]\nproxy = \"http://own:3128\"", &[]).unwrap();
    assert_eq!(own.proxy(&env).unwrap().unwrap().0, "graph.proxy");
    assert!(load("", &[]).unwrap().proxy(&|_| None).unwrap().is_none());
    let bad = |var: &str| (var == "HTTPS_PROXY").then(|| "socks5://u:env-pw@p:1080".to_owned());
    let error = https.proxy(&bad).unwrap_err().to_string();
    assert!(error.starts_with("environment variable HTTPS_PROXY:") && !error.contains("env-pw"), "{error}");
}

#[test]
fn a_bad_ca_file_or_proxy_names_its_key() {
    let err = load("[graph]\nca_file = \"/nonexistent/ca.pem\"", &[]).unwrap_err().to_string();
    assert!(err.starts_with("graph.ca_file: CA file /nonexistent/ca.pem: cannot read it"), "{err}");
    let err = load("[graph]\nproxy = \"https://u:pw-9@p:443\"", &[]).unwrap_err().to_string();
    assert!(err.starts_with("graph.proxy: proxy https://***@p:443: TLS to the proxy"), "{err}");
    assert!(!err.contains("pw-9"));
}
