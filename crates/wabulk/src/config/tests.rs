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
