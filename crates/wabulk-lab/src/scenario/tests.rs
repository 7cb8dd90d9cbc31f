use super::*;

fn shipped() -> Vec<(PathBuf, Result<Scenario, ScenarioError>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../loadtest/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("loadtest/scenarios exists")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files.into_iter().map(|path| (path.clone(), Scenario::load(&path))).collect()
}

#[test]
fn every_shipped_scenario_loads_and_its_engine_table_is_a_valid_configuration() {
    let scenarios = shipped();
    let names: Vec<String> = scenarios
        .iter()
        .map(|(path, scenario)| {
            let scenario = scenario.as_ref().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let text = toml::to_string(&scenario.engine).expect("engine table serialises");
            wabulk_config::Config::from_toml(&text, "engine", std::iter::empty())
                .unwrap_or_else(|e| panic!("{}: [engine]: {e}", path.display()));
            assert_eq!(
                path.file_stem().and_then(|s| s.to_str()),
                Some(scenario.name.as_str()),
                "a scenario's file is named after it"
            );
            scenario.name.clone()
        })
        .collect();
    for required in ["smoke", "tiers", "max-throughput", "faults", "backlog", "parked"] {
        assert!(names.iter().any(|n| n == required), "scenario {required} is shipped: {names:?}");
    }
}

/// The mock cluster keeps about 5 MiB per partition and drops older records
/// even unread: a backlog written before the engine starts must fit in it,
/// and a tansu scenario is one whose backlog would not.
#[test]
fn backlogs_go_where_they_fit() {
    const MOCK_PARTITION_BYTES: u64 = 5 * 1024 * 1024;
    for (path, scenario) in shipped() {
        let scenario = scenario.expect("loads");
        let mut bytes_per_number: std::collections::HashMap<String, u64> = Default::default();
        let load = wabulk_loadgen::LoadSpec { id_prefix: "size".into(), ..scenario.load.clone() };
        for record in wabulk_loadgen::generate(&load) {
            *bytes_per_number.entry(record.phone_number_id).or_default() += record.payload.len() as u64;
        }
        let partitions = scenario.broker.jobs_partitions as u64;
        let evenly = bytes_per_number.values().sum::<u64>() / partitions;
        let busiest_number = bytes_per_number.values().copied().max().unwrap_or_default();
        match scenario.broker.kind {
            BrokerKind::Tansu => assert!(
                evenly > MOCK_PARTITION_BYTES,
                "{}: {evenly} bytes per partition would fit the mock cluster",
                path.display()
            ),
            BrokerKind::Embedded if scenario.prefill => assert!(
                busiest_number.max(evenly) < MOCK_PARTITION_BYTES,
                "{}: a prefilled backlog of {} bytes in one partition needs tansu",
                path.display(),
                busiest_number.max(evenly)
            ),
            BrokerKind::Embedded => {}
        }
    }
}

#[test]
fn errors_name_the_key() {
    let base = r#"
name = "x"
[load]
jobs = 10
[[load.numbers]]
id = "1"
waba_id = "2"
mps = 80
"#;
    Scenario::from_toml(base, "x.toml").expect("the minimal scenario loads");
    let cases = [
        (format!("{base}\n[broker]\nkind = \"kafka\"\n"), "broker.kind"),
        (format!("{base}\n[simulator]\nlatency_ms = 3\n"), "simulator"),
        (format!("{base}\n[expect]\nmin_percent = 3.0\n"), "expect"),
        (format!("timeout = 3\n{base}"), "timeout"),
        (base.replace("jobs = 10", "jobs = \"ten\""), "load.jobs"),
        (format!("{base}\n[[simulator.numbers]]\nid = \"1\"\nwaba_id = \"2\"\n"), "simulator"),
        ("name = \"x\"\n[load]\njobs = 10\nnumbers = []\n".to_owned(), "load.numbers"),
        (format!("{base}\n[broker]\njobs_partitions = 0\n"), "broker"),
        (format!("{base}\n[simulator.webhooks]\nurl = \"http://127.0.0.1:1/x\"\n"), "simulator.webhooks"),
        (format!("webhooks = \"yes\"\n{base}"), "webhooks"),
    ];
    for (text, key) in cases {
        let error = Scenario::from_toml(&text, "x.toml").expect_err(&text).to_string();
        assert!(error.starts_with("x.toml: "), "{error}");
        assert!(error.contains(key), "error {error:?} should name {key}");
    }
}

#[test]
fn a_scenario_can_cut_the_graph_api_off_for_a_while() {
    let text = r#"
name = "x"
[simulator.faults]
outage = { after_ms = 60000, duration_ms = 120000 }
[load]
jobs = 10
[[load.numbers]]
id = "1"
waba_id = "2"
mps = 80
"#;
    let scenario = Scenario::from_toml(text, "x.toml").expect("loads");
    let outage = wabulk_graph_sim::Outage {
        after: std::time::Duration::from_secs(60),
        duration: std::time::Duration::from_secs(120),
    };
    assert_eq!(scenario.simulator.faults.outage, Some(outage));
}

#[test]
fn a_scenario_opts_in_to_the_status_webhooks_and_their_timing() {
    let base = r#"
name = "x"
[load]
jobs = 10
[[load.numbers]]
id = "1"
waba_id = "2"
mps = 80
"#;
    let off = Scenario::from_toml(base, "x.toml").expect("loads");
    assert!(!off.webhooks, "off unless asked for: the capacity scenarios run as before");
    let text = format!(
        "webhooks = true\n{base}\n[simulator.webhooks]\nread_fraction = 0.25\nfailed_fraction = 0.1\n"
    );
    let on = Scenario::from_toml(&text, "x.toml").expect("loads");
    assert!(on.webhooks);
    assert_eq!((on.simulator.webhooks.read_fraction, on.simulator.webhooks.failed_fraction), (0.25, 0.1));
    assert!(on.simulator.webhooks.url.is_none(), "the run sets the receiver's address");
}
