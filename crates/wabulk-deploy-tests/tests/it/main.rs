//! Tests of the files that deploy wabulk, read as the tools that use them
//! would: `docker-compose.yml` and the `Dockerfile` (as Compose would resolve
//! services, builds, mounts and ports), `deploy/wabulk.toml` (through the
//! engine's own configuration loader, with the environment Compose gives the
//! engine), `deploy/loadgen.toml` (through wabulk-loadgen's `LoadSpec`),
//! `deploy/prometheus.yml`, and the Grafana dashboards and provisioning in
//! `dashboards/`.
//!
//! `prometheus_scrapes_the_engine_and_every_dashboard_query_has_data` runs a
//! real Prometheus, with deploy/prometheus.yml pointed at `wabulk demo`, and
//! evaluates every dashboard query under load, without any constant fallback
//! (`or on() vector(0)`): each must return a series built from what the
//! engine exported, and checks that the statuses the simulator posts to the
//! engine's webhook receiver reach the delivery funnel's metrics. It needs
//! the `prometheus` binary (`scripts/prometheus-test` installs it) and fails
//! without it, unless `WABULK_SKIP_PROMETHEUS=1`. The `wabulk` binary it
//! runs is `WABULK_BIN` when set, else what `cargo build -p wabulk --bin
//! wabulk` produces: the test runs that build itself (cargo builds test
//! binaries before running any, and holds no lock on the target directory
//! while they run), so the binary is never stale; `scripts/prometheus-test`
//! runs the same build first so that it is a no-op here.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use wabulk::config::Config;
use wabulk::setup::EngineSetup;

/// Services `docker compose up` must start (no profile).
const DEFAULT_SERVICES: [&str; 6] = ["kafka", "topics", "engine", "simulator", "prometheus", "grafana"];
/// The load generator, started only with `--profile load`.
const LOADGEN_SERVICE: &str = "loadgen";
const LOAD_PROFILE: &str = "load";
/// The dashboards the issue asks for; any other `*.json` in dashboards/ is checked too.
const DASHBOARDS: [&str; 2] = ["wabulk-overview.json", "wabulk-number.json"];
/// The uid the dashboards use for their datasource.
const DATASOURCE_UID: &str = "prometheus";
/// Grafana's interval variables and what the tests put in their place: one
/// minute covers at least four scrapes at any scrape interval deploy/ uses.
const GRAFANA_INTERVALS: [(&str, &str); 4] = [
    ("$__rate_interval", "1m"),
    ("${__rate_interval}", "1m"),
    ("$__interval", "1m"),
    ("${__interval}", "1m"),
];

// ---------------------------------------------------------------------------
// docker-compose.yml

#[test]
fn compose_file_is_complete() {
    let compose = Compose::load();
    let engine_config = deploy_engine_config();

    // Services, and which start by default.
    for name in DEFAULT_SERVICES {
        let service = compose.service(name);
        assert!(
            service.get("profiles").is_none(),
            "service {name} has profiles, so `docker compose up` would not start it"
        );
    }
    let loadgen = compose.service(LOADGEN_SERVICE);
    assert!(
        strings(loadgen.get("profiles")).iter().any(|p| p == LOAD_PROFILE),
        "service {LOADGEN_SERVICE} must be in the compose profile `{LOAD_PROFILE}`"
    );

    // Published ports: each service a person opens from the host.
    let engine_port = engine_config.http.listen.parse::<SocketAddr>().expect("validated").port();
    let simulator_port = listen_port_arg(&compose, "simulator");
    for (name, port) in
        [("engine", engine_port), ("simulator", simulator_port), ("prometheus", 9090), ("grafana", 3000)]
    {
        let published = published_container_ports(compose.service(name));
        assert!(
            published.contains(&port),
            "service {name} does not publish container port {port} (it publishes {published:?})"
        );
    }
    assert!(!published_container_ports(compose.service("kafka")).is_empty(), "kafka publishes no port");

    // Every bind mount's host path exists.
    let mut binds = 0;
    for (name, service) in compose.services() {
        for (host, container) in bind_mounts(service) {
            binds += 1;
            let path = repo_root().join(&host);
            assert!(
                path.exists(),
                "service {name} mounts {} at {container}, but {} does not exist",
                host.display(),
                path.display()
            );
        }
    }
    assert!(
        binds >= 5,
        "expected the engine, loadgen, Prometheus and Grafana files to be bind-mounted; found {binds}"
    );

    // The engine, simulator and load generator are built from this repository's Dockerfile.
    let engine_image = compose.service("engine").get("image").and_then(Yaml::as_str).map(str::to_owned);
    for name in ["engine", "simulator", LOADGEN_SERVICE] {
        let dockerfile = build_dockerfile(&compose, name);
        let text = read(&dockerfile);
        let stages =
            text.lines().filter(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM ")).count();
        assert!(stages >= 2, "{} is not multi-stage (build, then a slim runtime)", dockerfile.display());
        assert!(
            text.contains("cargo build") && text.contains("-p wabulk"),
            "{} does not build the wabulk package",
            dockerfile.display()
        );
        assert!(
            text.contains("install-build-deps"),
            "{} does not install librdkafka's build deps",
            dockerfile.display()
        );
        let image = compose.service(name).get("image").and_then(Yaml::as_str).map(str::to_owned);
        assert_eq!(image, engine_image, "service {name} must use the engine's image");
    }

    // The commands, and the files they read.
    let engine_cmd = command(compose.service("engine"));
    assert_eq!(engine_cmd.first().map(String::as_str), Some("run"), "engine command: {engine_cmd:?}");
    assert_eq!(
        mounted_from(&compose, "engine", &arg_after(&engine_cmd, "--config")),
        PathBuf::from("deploy/wabulk.toml"),
        "the engine must run with deploy/wabulk.toml"
    );
    let simulator_cmd = command(compose.service("simulator"));
    assert_eq!(
        simulator_cmd.first().map(String::as_str),
        Some("simulate"),
        "simulator command: {simulator_cmd:?}"
    );
    let loadgen_cmd = command(loadgen);
    assert_eq!(loadgen_cmd.first().map(String::as_str), Some("loadgen"), "loadgen command: {loadgen_cmd:?}");
    assert_eq!(
        mounted_from(&compose, LOADGEN_SERVICE, &arg_after(&loadgen_cmd, "--spec")),
        PathBuf::from("deploy/loadgen.toml"),
        "the load generator must read deploy/loadgen.toml"
    );
    assert_eq!(
        arg_after(&loadgen_cmd, "--brokers"),
        engine_config.kafka.brokers,
        "the load generator and the engine must use the same brokers"
    );

    // Kafka is reachable under the name the engine uses, and the one-shot
    // service creates the engine's topics before the engine starts.
    let kafka_env = environment(compose.service("kafka"));
    let advertised = kafka_env.get("KAFKA_ADVERTISED_LISTENERS").map(String::as_str).unwrap_or_default();
    assert!(
        advertised.contains(&format!("://{}", engine_config.kafka.brokers)),
        "kafka does not advertise {} (KAFKA_ADVERTISED_LISTENERS={advertised:?})",
        engine_config.kafka.brokers
    );
    let topics_cmd = command(compose.service("topics")).join(" ");
    for topic in
        [&engine_config.kafka.jobs_topic, &engine_config.kafka.results_topic, &engine_config.kafka.dlq_topic]
    {
        assert!(topics_cmd.contains(&format!("{topic} ")), "the topics service does not create {topic}");
    }
    assert_eq!(
        depends_on_condition(compose.service("engine"), "topics").as_deref(),
        Some("service_completed_successfully"),
        "the engine must wait for the topics to exist"
    );

    // Prometheus scrapes the engine's /metrics.
    let prometheus_cmd = command(compose.service("prometheus"));
    let config_path = prometheus_cmd
        .iter()
        .find_map(|a| a.strip_prefix("--config.file="))
        .unwrap_or("/etc/prometheus/prometheus.yml");
    let prometheus_file = mounted_from(&compose, "prometheus", config_path);
    let prometheus_config = load_yaml(&prometheus_file);
    let target = format!("engine:{engine_port}");
    let jobs = scrape_jobs_with_target(&prometheus_config, &target);
    assert!(!jobs.is_empty(), "{} has no scrape job with target {target}", prometheus_file.display());

    // Grafana's provisioning and dashboards are mounted where Grafana reads them.
    let provisioning = |kind: &str| {
        repo_root().join(mounted_from(&compose, "grafana", &format!("/etc/grafana/provisioning/{kind}")))
    };
    let datasources = yaml_files(&provisioning("datasources"));
    assert!(!datasources.is_empty(), "no datasource provisioning file");
    let mut prometheus_urls = Vec::new();
    for file in &datasources {
        for ds in sequence(load_yaml(file).get("datasources")) {
            if ds.get("uid").and_then(Yaml::as_str) == Some(DATASOURCE_UID) {
                prometheus_urls.push(ds.get("url").and_then(Yaml::as_str).unwrap_or_default().to_owned());
            }
        }
    }
    assert_eq!(
        prometheus_urls,
        vec!["http://prometheus:9090".to_owned()],
        "the datasource with uid {DATASOURCE_UID} must point at the prometheus service"
    );
    let providers = yaml_files(&provisioning("dashboards"));
    assert!(!providers.is_empty(), "no dashboard provisioning file");
    let mut provided = BTreeSet::new();
    for file in &providers {
        for provider in sequence(load_yaml(file).get("providers")) {
            let path = provider.get("options").and_then(|o| o.get("path")).and_then(Yaml::as_str);
            let path = path.unwrap_or_else(|| panic!("{}: provider without options.path", file.display()));
            let host = repo_root().join(mounted_from(&compose, "grafana", path));
            for name in DASHBOARDS {
                if host.join(name).is_file() {
                    provided.insert(name);
                }
            }
        }
    }
    assert_eq!(provided, BTreeSet::from(DASHBOARDS), "dashboards the provisioned folders hold");
}

// ---------------------------------------------------------------------------
// deploy/wabulk.toml and deploy/loadgen.toml

#[test]
fn engine_config_in_deploy_is_valid() {
    // Exactly what `wabulk run` does at start-up, with the environment that
    // docker-compose.yml gives the engine: load (file, then WABULK_*
    // overrides), validate, resolve tokens and limits.
    let compose = Compose::load();
    let env = environment(compose.service("engine"));
    let path = repo_root().join("deploy/wabulk.toml");
    let config = Config::load(&path, env.clone()).unwrap_or_else(|e| panic!("deploy/wabulk.toml: {e}"));
    let setup = EngineSetup::from_config(&config, &|var| env.get(var).cloned())
        .unwrap_or_else(|e| panic!("deploy/wabulk.toml with the engine's environment: {e:#}"));
    assert_eq!(config.kafka.brokers, "kafka:9092");
    assert!(setup.http_listen.ip().is_unspecified(), "http.listen must accept other containers (Prometheus)");

    // The Graph API is the simulator service, on the port it listens on.
    let simulator_port = listen_port_arg(&compose, "simulator");
    assert_eq!(config.graph.base_url, format!("http://simulator:{simulator_port}/v21.0"));

    // The numbers, WABAs and tokens are the simulator's built-in example
    // (the simulator runs without --config), so every job can be sent.
    let sim = wabulk_graph_sim::example_config();
    assert_eq!(config.phones.len(), sim.numbers.len(), "deploy/wabulk.toml lists the simulator's numbers");
    for number in &sim.numbers {
        let phone = config.phones.iter().find(|p| p.id == number.id);
        let phone = phone.unwrap_or_else(|| panic!("number {} is not in deploy/wabulk.toml", number.id));
        assert_eq!(phone.waba_id, number.waba_id, "WABA of number {}", number.id);
        assert_eq!(phone.mps, Some(number.mps), "tier of number {}", number.id);
    }
    for waba in &sim.wabas {
        let var = config.token_env(&waba.id);
        assert_eq!(
            env.get(var),
            Some(&waba.token),
            "token of WABA {} (variable {var}) in the engine's environment",
            waba.id
        );
        assert_eq!(config.waba_cap(&waba.id), waba.hourly_cap, "hourly cap of WABA {}", waba.id);
    }
}

#[test]
fn loadgen_spec_in_deploy_is_valid() {
    let text = read(&repo_root().join("deploy/loadgen.toml"));
    let spec: wabulk_loadgen::LoadSpec =
        toml::from_str(&text).unwrap_or_else(|e| panic!("deploy/loadgen.toml is not a LoadSpec: {e}"));
    spec.validate().unwrap_or_else(|e| panic!("deploy/loadgen.toml: {e}"));
    let config = deploy_engine_config();
    for number in &spec.numbers {
        let phone = config.phones.iter().find(|p| p.id == number.id);
        let phone =
            phone.unwrap_or_else(|| panic!("loadgen number {} is not in deploy/wabulk.toml", number.id));
        assert_eq!(phone.waba_id, number.waba_id, "WABA of loadgen number {}", number.id);
    }
}

// ---------------------------------------------------------------------------
// dashboards/

#[test]
fn dashboards_are_valid_and_use_known_metrics() {
    let documented = documented_metrics();
    assert!(documented.len() >= 14, "docs/metrics.md lists only {documented:?}");
    let dashboards = load_dashboards();
    let names: BTreeSet<&str> = dashboards.iter().map(|d| d.file.as_str()).collect();
    for name in DASHBOARDS {
        assert!(names.contains(name), "dashboards/{name} is missing");
    }
    let mut uids = BTreeSet::new();
    let mut problems = Vec::new();
    for dashboard in &dashboards {
        let file = &dashboard.file;
        let uid = dashboard.json.get("uid").and_then(Json::as_str).unwrap_or_default();
        if uid.is_empty() || !uids.insert(uid.to_owned()) {
            problems.push(format!("{file}: uid {uid:?} is empty or not unique"));
        }
        let mut ids = BTreeSet::new();
        for panel in panels(&dashboard.json) {
            let title = panel.get("title").and_then(Json::as_str).unwrap_or_default();
            let id = panel.get("id").and_then(Json::as_u64);
            if !id.is_some_and(|id| ids.insert(id)) {
                problems.push(format!("{file}: panel {title:?} has no id or a duplicate one"));
            }
            if panel.get("gridPos").is_none() {
                problems.push(format!("{file}: panel {title:?} has no gridPos"));
            }
            if panel.get("type").and_then(Json::as_str) == Some("row") {
                continue;
            }
            if title.is_empty() {
                problems.push(format!("{file}: a panel has no title"));
            }
            if datasource_uid(panel) != Some(DATASOURCE_UID) {
                problems
                    .push(format!("{file}: panel {title:?} does not use the datasource {DATASOURCE_UID:?}"));
            }
            let targets = panel.get("targets").and_then(Json::as_array).cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{file}: panel {title:?} has no targets"));
            }
            for target in &targets {
                let expr = target.get("expr").and_then(Json::as_str).unwrap_or_default();
                if expr.trim().is_empty() {
                    problems.push(format!("{file}: panel {title:?} has a target without expr"));
                }
                if target.get("datasource").is_some() && datasource_uid(target) != Some(DATASOURCE_UID) {
                    problems.push(format!("{file}: a target of {title:?} uses another datasource"));
                }
            }
        }
        for query in dashboard.expressions() {
            for metric in metric_names(&query.expr) {
                if !documented.contains(&metric) {
                    problems.push(format!(
                        "{file}: {:?} uses {metric}, which docs/metrics.md does not list: {}",
                        query.panel, query.expr
                    ));
                }
            }
            let substituted = substitute(&query.expr, &dashboard.example_variables());
            if substituted.contains('$') {
                problems.push(format!("{file}: {:?} uses an unknown variable: {}", query.panel, query.expr));
            }
        }
        for variable in dashboard.variables() {
            if label_values_query(&variable.query).is_none() {
                problems.push(format!(
                    "{file}: variable {} is not label_values(metric, label): {}",
                    variable.name, variable.query
                ));
            }
            for metric in metric_names(&variable.query) {
                if !documented.contains(&metric) {
                    problems.push(format!("{file}: variable {} uses undocumented {metric}", variable.name));
                }
            }
        }
    }
    assert!(problems.is_empty(), "dashboard problems:\n  {}", problems.join("\n  "));
}

// ---------------------------------------------------------------------------
// A real Prometheus against `wabulk demo`

/// Jobs the demo writes: at its 1,475 jobs/s this is about 20 s of writing
/// and 30 s of sending, longer than the test waits before it queries.
const DEMO_JOBS: &str = "30000";
/// Load to let Prometheus record before the queries: long enough for
/// `rate(...[1m])` over 1 s scrapes, short enough to query while the demo
/// still sends.
const LOAD_BEFORE_QUERIES: Duration = Duration::from_secs(15);

/// Panel queries that legitimately return nothing from `wabulk demo`, as
/// (dashboard file, panel title, why). The test fails if one of them has
/// data, so that the list cannot hide a panel that works. Empty: the engine
/// exports every series of its configured numbers and WABAs and of its
/// closed reason sets at 0 from start-up, and the demo's partitions are
/// assigned before the queries.
const EMPTY_IN_THE_DEMO: &[(&str, &str, &str)] = &[];

/// What the delivery funnel panels must show from `wabulk demo`, beyond
/// series at 0: statuses of each kind per number, and failures by code (the
/// simulator fails 2 % of messages with 131026).
const STATUSES_IN_THE_DEMO: [(&str, &str); 5] = [
    ("wabulk_webhook_requests_total{outcome=\"ok\"} > 0", "notifications taken"),
    ("min(wabulk_statuses_total{status=\"sent\"}) > 0", "`sent` statuses of every number"),
    ("sum(wabulk_statuses_total{status=\"delivered\"}) > 0", "`delivered` statuses"),
    ("sum(wabulk_statuses_total{status=\"read\"}) > 0", "`read` statuses"),
    ("wabulk_status_errors_total{code=\"131026\"} > 0", "failed statuses by code"),
];

/// The rules of deploy/alerts.yml.
const ALERT_RULES: usize = 9;

/// deploy/alerts.yml is valid and every alert passes its unit tests in
/// deploy/alerts.test.yml (firing on its series, quiet before), by the
/// Prometheus project's own `promtool`.
#[test]
fn alerting_rules_pass_their_promtool_tests() {
    if !prometheus_installed() {
        if std::env::var("WABULK_SKIP_PROMETHEUS").is_ok_and(|v| v == "1") {
            eprintln!("skipped: no `promtool` and WABULK_SKIP_PROMETHEUS=1");
            return;
        }
        panic!("`promtool` (Debian's prometheus package) is not installed: run scripts/prometheus-test");
    }
    let deploy = repo_root().join("deploy");
    let check = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(deploy.join("alerts.yml"))
        .output()
        .expect("promtool");
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "promtool check rules: {out}{}", String::from_utf8_lossy(&check.stderr));
    assert!(out.contains(&format!("{ALERT_RULES} rules found")), "{out}");
    let test = Command::new("promtool")
        .current_dir(&deploy)
        .args(["test", "rules", "alerts.test.yml"])
        .output()
        .expect("promtool");
    assert!(
        test.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    // Every alert has a test.
    let tests = read(&deploy.join("alerts.test.yml"));
    let rules = read(&deploy.join("alerts.yml"));
    for line in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(
            tests.contains(&format!("alertname: {line}")),
            "alert {line} has no test in deploy/alerts.test.yml"
        );
    }
}

#[test]
fn prometheus_scrapes_the_engine_and_every_dashboard_query_has_data() {
    if !prometheus_installed() {
        if std::env::var("WABULK_SKIP_PROMETHEUS").is_ok_and(|v| v == "1") {
            eprintln!("skipped: no `prometheus` binary and WABULK_SKIP_PROMETHEUS=1");
            return;
        }
        panic!(
            "the `prometheus` binary is not installed: run scripts/prometheus-test (as root) to install it, \
             or set WABULK_SKIP_PROMETHEUS=1 to skip this test"
        );
    }
    let started = Instant::now();
    let wabulk = wabulk_binary();
    let work = TempDir::new("prometheus");

    let metrics_addr = free_loopback_addr();
    let mut demo = Running::spawn(
        "wabulk demo",
        Command::new(&wabulk).args([
            "demo",
            "--jobs",
            DEMO_JOBS,
            "--latency-scale",
            "0.05",
            "--quiet",
            "--http-listen",
            &metrics_addr.to_string(),
        ]),
        &work.path.join("demo.log"),
    );

    // deploy/prometheus.yml itself, with the engine's target replaced by the
    // demo's listener and a 1 s scrape interval.
    let (config, job) = prometheus_config_for(metrics_addr);
    let config_file = work.path.join("prometheus.yml");
    std::fs::write(&config_file, config).expect("write prometheus.yml");
    let prometheus_addr = free_loopback_addr();
    let mut prometheus = Running::spawn(
        "prometheus",
        Command::new("prometheus").args([
            format!("--config.file={}", config_file.display()),
            format!("--storage.tsdb.path={}", work.path.join("data").display()),
            format!("--web.listen-address={prometheus_addr}"),
        ]),
        &work.path.join("prometheus.log"),
    );
    let api = PromApi { addr: prometheus_addr };

    wait_for(Duration::from_secs(20), &mut prometheus, "Prometheus to be ready", || {
        http_get(prometheus_addr, "/-/ready").is_ok_and(|(status, _)| status == 200)
    });
    wait_for(Duration::from_secs(40), &mut demo, "Prometheus to scrape the demo's first sends", || {
        let up = api.query(&format!("up{{job=\"{job}\"}} == 1"), None).is_ok_and(|r| !r.is_empty());
        up && api.query("sum(wabulk_messages_sent_total) > 0", None).is_ok_and(|r| !r.is_empty())
    });
    std::thread::sleep(LOAD_BEFORE_QUERIES);
    // The alerting rules loaded and evaluated against the engine's series.
    let groups = api.get("/api/v1/rules").unwrap_or_else(|e| panic!("rules: {e}"));
    let rules: Vec<&Json> = groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(rules.len(), ALERT_RULES, "deploy/alerts.yml loaded whole: {groups}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "a rule Prometheus cannot evaluate: {rule}");
    }
    if let Some(status) = demo.exited() {
        panic!("the demo ended ({status}) before the queries; its log:\n{}", tail(&demo.log, 40));
    }

    // Every query at one instant, while the demo is still sending.
    let at = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64();
    let mut empty = Vec::new();
    let mut evaluated = 0;
    for dashboard in load_dashboards() {
        // Every value of every variable, as Grafana would offer them.
        let mut bindings = vec![BTreeMap::new()];
        for variable in dashboard.variables() {
            let (metric, label) =
                label_values_query(&variable.query).expect("checked by the dashboards test");
            let values = api.label_values(&label, &metric).unwrap_or_else(|e| panic!("label values: {e}"));
            assert!(!values.is_empty(), "{}: variable {} has no values", dashboard.file, variable.name);
            let mut combined = Vec::new();
            for binding in &bindings {
                for value in &values {
                    let mut binding = binding.clone();
                    binding.insert(variable.name.clone(), value.clone());
                    combined.push(binding);
                }
            }
            bindings = combined;
        }
        for binding in &bindings {
            for query in dashboard.expressions() {
                // The fallback answers whatever the engine exports, so it
                // cannot count: what is left must name an engine metric and
                // return a series on its own.
                let expr = substitute(&without_fallback(&query.expr), binding);
                evaluated += 1;
                let listed = EMPTY_IN_THE_DEMO
                    .iter()
                    .find(|(file, panel, _)| *file == dashboard.file && *panel == query.panel);
                let problem = if metric_names(&expr).is_empty() || expr.contains("vector(") {
                    Some("not only engine metrics once the fallback is removed".to_owned())
                } else {
                    match (api.query(&expr, Some(at)), listed) {
                        (Ok(result), None) if !result.is_empty() => None,
                        (Ok(_), None) => Some("no series".to_owned()),
                        (Ok(result), Some(_)) if result.is_empty() => None,
                        (Ok(result), Some((_, _, why))) => {
                            Some(format!("listed as empty ({why}) but has data: {result:?}"))
                        }
                        (Err(e), _) => Some(e),
                    }
                };
                if let Some(problem) = problem {
                    empty.push(format!("{}: {:?}: {expr}  ({problem})", dashboard.file, query.panel));
                }
            }
        }
    }
    // The funnel panels' series exist at 0 from the start, so data alone
    // would not show that statuses flow: the demo runs the engine's
    // receiver and the simulator posts Meta's statuses to it.
    let mut no_statuses = Vec::new();
    for (expr, what) in STATUSES_IN_THE_DEMO {
        if !api.query(expr, Some(at)).is_ok_and(|r| !r.is_empty()) {
            no_statuses.push(format!("{what}: {expr}"));
        }
    }
    drop(demo);
    drop(prometheus);
    eprintln!("evaluated {evaluated} dashboard queries in {:.0} s", started.elapsed().as_secs_f64());
    assert!(evaluated > 40, "only {evaluated} queries evaluated");
    assert!(empty.is_empty(), "dashboard queries with no data under load:\n  {}", empty.join("\n  "));
    assert!(
        no_statuses.is_empty(),
        "the demo's webhooks did not reach the engine:\n  {}",
        no_statuses.join("\n  ")
    );
}

/// `expr` without a trailing constant fallback: `or on() vector(0)`, or
/// `or on() label_replace(vector(0), ...)`, the forms that keep a Grafana
/// panel from saying "No data". Anything else is returned as it is.
fn without_fallback(expr: &str) -> String {
    let compact: String = expr.split_whitespace().collect::<Vec<_>>().join(" ");
    for separator in [" or on() ", " or on () "] {
        if let Some((kept, fallback)) = compact.rsplit_once(separator) {
            if fallback.contains("vector(") && metric_names(fallback).is_empty() {
                return kept.to_owned();
            }
        }
    }
    compact
}

#[test]
fn fallbacks_are_removed_and_nothing_else() {
    let cases = [
        ("count(wabulk_waba_halted == 1) or on() vector(0)", "count(wabulk_waba_halted == 1)"),
        (
            "sum by (code) (rate(wabulk_api_errors_total[1m])) or on() label_replace(vector(0), \"code\", \"none\", \"\", \"\")",
            "sum by (code) (rate(wabulk_api_errors_total[1m]))",
        ),
        ("sum(wabulk_backlog_jobs)", "sum(wabulk_backlog_jobs)"),
        ("sum(wabulk_backlog_jobs) or on() sum(wabulk_jobs_in_memory)", "sum(wabulk_backlog_jobs) or on() sum(wabulk_jobs_in_memory)"),
    ];
    for (expr, expected) in cases {
        assert_eq!(without_fallback(expr), expected, "{expr}");
    }
}

/// deploy/prometheus.yml with a 1 s scrape interval and only the engine's
/// scrape job, aimed at `target`; also returns that job's name.
fn prometheus_config_for(target: SocketAddr) -> (String, String) {
    let engine_port = deploy_engine_config().http.listen.parse::<SocketAddr>().expect("validated").port();
    let mut config = load_yaml(&repo_root().join("deploy/prometheus.yml"));
    let jobs = scrape_jobs_with_target(&config, &format!("engine:{engine_port}"));
    let job = jobs.first().expect("deploy/prometheus.yml scrapes the engine").clone();
    let global = config.get_mut("global").and_then(Yaml::as_mapping_mut).expect("global");
    global.insert("scrape_interval".into(), "1s".into());
    global.insert("evaluation_interval".into(), "1s".into());
    let scrape_configs =
        config.get_mut("scrape_configs").and_then(Yaml::as_sequence_mut).expect("scrape_configs");
    scrape_configs.retain(|c| c.get("job_name").and_then(Yaml::as_str) == Some(job.as_str()));
    let engine_job = &mut scrape_configs[0];
    let static_config: Yaml =
        serde_norway::from_str(&format!("[{{targets: [\"{target}\"]}}]")).expect("static_configs");
    engine_job.as_mapping_mut().expect("job").insert("static_configs".into(), static_config);
    // The alerting rules from the repository, where the compose stack mounts them.
    let rules: Yaml = vec![Yaml::from(repo_root().join("deploy/alerts.yml").display().to_string())].into();
    config.as_mapping_mut().expect("a mapping").insert("rule_files".into(), rules);
    (serde_norway::to_string(&config).expect("yaml"), job)
}

fn prometheus_installed() -> bool {
    Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `WABULK_BIN`, else the binary `cargo build -p wabulk --bin wabulk` builds
/// (a no-op after scripts/prometheus-test), in this test's profile.
fn wabulk_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WABULK_BIN") {
        return PathBuf::from(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(repo_root())
        .args(["build", "-p", "wabulk", "--bin", "wabulk", "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit());
    // Cargo gives a test the variables of its own package; build scripts
    // watch some (ring reruns when CARGO_MANIFEST_DIR changes), so left in
    // place they would make this build differ from scripts/prometheus-test's
    // and rebuild every time.
    for (var, _) in std::env::vars_os() {
        let Some(name) = var.to_str() else { continue };
        let set_by_cargo_for_tests = [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_BIN_NAME",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .contains(&name)
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_");
        if set_by_cargo_for_tests {
            build.env_remove(&var);
        }
    }
    // target/<profile>/deps/<this test>: build the binary in the same profile.
    let exe = std::env::current_exe().expect("current_exe");
    if exe.parent().and_then(Path::parent).and_then(Path::file_name).is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    let output = build.output().expect("run cargo build -p wabulk");
    assert!(output.status.success(), "cargo build -p wabulk --bin wabulk failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Json>(line).ok())
        .filter(|m| m.get("reason").and_then(Json::as_str) == Some("compiler-artifact"))
        .filter(|m| m.pointer("/target/name").and_then(Json::as_str) == Some("wabulk"))
        .find_map(|m| m.get("executable").and_then(Json::as_str).map(PathBuf::from))
        .expect("cargo build reported no wabulk executable")
}

/// Prometheus' HTTP API.
struct PromApi {
    addr: SocketAddr,
}

impl PromApi {
    /// An instant query's result (vector elements, or one scalar), at `at`
    /// (Unix seconds) or now.
    fn query(&self, expr: &str, at: Option<f64>) -> Result<Vec<Json>, String> {
        let mut path = format!("/api/v1/query?query={}", url_encode(expr));
        if let Some(at) = at {
            path.push_str(&format!("&time={at:.3}"));
        }
        let data = self.get(&path)?;
        match data.get("resultType").and_then(Json::as_str) {
            Some("vector" | "matrix") => {
                Ok(data.get("result").and_then(Json::as_array).cloned().unwrap_or_default())
            }
            Some("scalar" | "string") => Ok(vec![data.get("result").cloned().unwrap_or_default()]),
            other => Err(format!("unexpected result type {other:?}")),
        }
    }

    /// What Grafana's `label_values(metric, label)` offers.
    fn label_values(&self, label: &str, metric: &str) -> Result<Vec<String>, String> {
        let data = self.get(&format!("/api/v1/label/{label}/values?match[]={}", url_encode(metric)))?;
        Ok(data.as_array().into_iter().flatten().filter_map(Json::as_str).map(str::to_owned).collect())
    }

    fn get(&self, path: &str) -> Result<Json, String> {
        let (status, body) = http_get(self.addr, path).map_err(|e| e.to_string())?;
        let json: Json = serde_json::from_str(&body).map_err(|_| format!("HTTP {status}: {body}"))?;
        if json.get("status").and_then(Json::as_str) != Some("success") {
            return Err(format!(
                "HTTP {status}: {}",
                json.get("error").and_then(Json::as_str).unwrap_or(&body)
            ));
        }
        Ok(json.get("data").cloned().unwrap_or_default())
    }
}

/// A one-shot HTTP/1.0 GET: the server closes the connection after the
/// body, so there is no chunked encoding to undo.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_loopback_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port")
}

/// Polls `ready` every 250 ms; fails with `process`'s log if it does not
/// hold within `limit` or the process ends.
fn wait_for(limit: Duration, process: &mut Running, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return;
        }
        if let Some(status) = process.exited() {
            panic!(
                "{} ended ({status}) while waiting for {what}; its log:\n{}",
                process.name,
                tail(&process.log, 40)
            );
        }
        if Instant::now() > deadline {
            panic!(
                "gave up after {} s waiting for {what}; {} log:\n{}",
                limit.as_secs(),
                process.name,
                tail(&process.log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A child process that is killed when dropped, with every process it
/// started (`wabulk demo` runs the engine as its own child: killed alone,
/// the demo would leave its engine running), its output in a log file.
struct Running {
    name: &'static str,
    child: std::process::Child,
    log: PathBuf,
}

impl Running {
    fn spawn(name: &'static str, command: &mut Command, log: &Path) -> Running {
        let file = std::fs::File::create(log).expect("log file");
        let child = command
            // Its own process group, so that Drop can kill all of it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Running { name, child, log: log.to_owned() }
    }

    /// The exit status, if it has ended (std keeps it for `Drop`'s `wait`).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // std signals only the child itself; kill(1) signals the group.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory under the system temp dir, removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(label: &str) -> TempDir {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("wabulk-deploy-{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// Dashboards: reading them

struct Dashboard {
    file: String,
    json: Json,
}

struct Query {
    panel: String,
    expr: String,
}

struct Variable {
    name: String,
    query: String,
}

impl Dashboard {
    /// Every PromQL expression of every panel.
    fn expressions(&self) -> Vec<Query> {
        panels(&self.json)
            .into_iter()
            .flat_map(|panel| {
                let title = panel.get("title").and_then(Json::as_str).unwrap_or_default().to_owned();
                let targets = panel.get("targets").and_then(Json::as_array).cloned().unwrap_or_default();
                targets.into_iter().filter_map(move |t| {
                    let expr = t.get("expr").and_then(Json::as_str)?.to_owned();
                    Some(Query { panel: title.clone(), expr })
                })
            })
            .collect()
    }

    /// The dashboard's query variables.
    fn variables(&self) -> Vec<Variable> {
        let list =
            self.json.pointer("/templating/list").and_then(Json::as_array).cloned().unwrap_or_default();
        list.iter()
            .filter(|v| v.get("type").and_then(Json::as_str) == Some("query"))
            .map(|v| {
                let query = match v.get("query") {
                    Some(Json::String(q)) => q.clone(),
                    Some(q) => q.get("query").and_then(Json::as_str).unwrap_or_default().to_owned(),
                    None => String::new(),
                };
                Variable { name: v.get("name").and_then(Json::as_str).unwrap_or_default().to_owned(), query }
            })
            .collect()
    }

    /// A value for every variable, to check that nothing else is left.
    fn example_variables(&self) -> BTreeMap<String, String> {
        self.variables().into_iter().map(|v| (v.name, "1".to_owned())).collect()
    }
}

fn load_dashboards() -> Vec<Dashboard> {
    let dir = repo_root().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let json = serde_json::from_str(&read(&path))
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
            Dashboard { file: path.file_name().expect("file").to_string_lossy().into_owned(), json }
        })
        .collect()
}

fn datasource_uid(panel_or_target: &Json) -> Option<&str> {
    panel_or_target.get("datasource")?.get("uid")?.as_str()
}

/// Panels, with those nested in collapsed rows.
fn panels(dashboard: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for panel in dashboard.get("panels").and_then(Json::as_array).into_iter().flatten() {
        out.push(panel);
        out.extend(panel.get("panels").and_then(Json::as_array).into_iter().flatten());
    }
    out
}

/// Grafana's variables in `expr` replaced: the interval ones by
/// [`GRAFANA_INTERVALS`], the dashboard's own by `values`.
fn substitute(expr: &str, values: &BTreeMap<String, String>) -> String {
    let mut expr = expr.to_owned();
    for (name, value) in GRAFANA_INTERVALS {
        expr = expr.replace(name, value);
    }
    for (name, value) in values {
        for form in [format!("${{{name}}}"), format!("[[{name}]]"), format!("${name}")] {
            expr = expr.replace(&form, value);
        }
    }
    expr
}

/// `label_values(metric, label)` → (metric, label).
fn label_values_query(query: &str) -> Option<(String, String)> {
    let inner = query.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (metric, label) = inner.rsplit_once(',')?;
    let (metric, label) = (metric.trim(), label.trim());
    (!metric.is_empty() && !label.is_empty()).then(|| (metric.to_owned(), label.to_owned()))
}

/// Metric names in a PromQL expression (`wabulk_[a-z0-9_]+`), with a
/// histogram's `_bucket`, `_sum` and `_count` series named by the histogram.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(found) = expr[i..].find("wabulk_") {
        let start = i + found;
        let preceded_by_word =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start + "wabulk_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_')
        {
            end += 1;
        }
        if !preceded_by_word {
            let name = &expr[start..end];
            let base =
                ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            names.insert(base.to_owned());
        }
        i = end;
    }
    names
}

/// The metric names docs/metrics.md documents: its table rows.
fn documented_metrics() -> BTreeSet<String> {
    read(&repo_root().join("docs/metrics.md"))
        .lines()
        .filter_map(|line| line.trim().strip_prefix("| `wabulk_"))
        .filter_map(|rest| rest.split_once('`').map(|(name, _)| format!("wabulk_{name}")))
        .collect()
}

// ---------------------------------------------------------------------------
// Compose and YAML: reading them

struct Compose {
    yaml: Yaml,
}

impl Compose {
    fn load() -> Compose {
        Compose { yaml: load_yaml(&repo_root().join("docker-compose.yml")) }
    }

    fn services(&self) -> Vec<(String, &Yaml)> {
        let services =
            self.yaml.get("services").and_then(Yaml::as_mapping).expect("docker-compose.yml: services");
        services.iter().map(|(k, v)| (k.as_str().unwrap_or_default().to_owned(), v)).collect()
    }

    fn service(&self, name: &str) -> &Yaml {
        self.yaml
            .get("services")
            .and_then(|s| s.get(name))
            .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
    }
}

/// The repository's root (this crate is crates/wabulk-deploy-tests).
fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn load_yaml(path: &Path) -> Yaml {
    let path = if path.is_absolute() { path.to_owned() } else { repo_root().join(path) };
    serde_norway::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn deploy_engine_config() -> Config {
    // Validation needs no tokens; EngineSetup (engine_config_in_deploy_is_valid) does.
    Config::load(&repo_root().join("deploy/wabulk.toml"), std::iter::empty())
        .unwrap_or_else(|e| panic!("deploy/wabulk.toml: {e}"))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    files
}

fn sequence(value: Option<&Yaml>) -> Vec<&Yaml> {
    value.and_then(Yaml::as_sequence).map(|s| s.iter().collect()).unwrap_or_default()
}

/// A string or a list of strings (Compose accepts both for `command`, `profiles`).
fn strings(value: Option<&Yaml>) -> Vec<String> {
    match value {
        Some(Yaml::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Yaml::Sequence(items)) => items.iter().filter_map(scalar).collect(),
        _ => Vec::new(),
    }
}

fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn command(service: &Yaml) -> Vec<String> {
    strings(service.get("command"))
}

fn arg_after(args: &[String], flag: &str) -> String {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"))
}

/// The port of a service's `--listen ADDR:PORT` argument.
fn listen_port_arg(compose: &Compose, service: &str) -> u16 {
    let listen = arg_after(&command(compose.service(service)), "--listen");
    listen.parse::<SocketAddr>().unwrap_or_else(|e| panic!("{service} --listen {listen}: {e}")).port()
}

/// `environment` as a map (Compose accepts a mapping or `KEY=VALUE` items).
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match service.get("environment") {
        Some(Yaml::Mapping(map)) => map
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), scalar(v).unwrap_or_default())))
            .collect(),
        Some(Yaml::Sequence(items)) => items
            .iter()
            .filter_map(Yaml::as_str)
            .map(|item| {
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Container ports a service publishes on the host.
fn published_container_ports(service: &Yaml) -> Vec<u16> {
    sequence(service.get("ports"))
        .into_iter()
        .filter_map(|port| match port {
            Yaml::Mapping(_) => port.get("target").and_then(scalar),
            other => scalar(other).map(|s| {
                // [ip:][host:]container[/protocol]
                let s = s.split('/').next().unwrap_or_default().to_owned();
                s.rsplit(':').next().unwrap_or_default().to_owned()
            }),
        })
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A service's bind mounts as (host path relative to the repository, container path).
fn bind_mounts(service: &Yaml) -> Vec<(PathBuf, String)> {
    sequence(service.get("volumes"))
        .into_iter()
        .filter_map(|volume| match volume {
            Yaml::String(s) => {
                let mut parts = s.split(':');
                let (host, container) = (parts.next()?, parts.next()?);
                (host.starts_with('.') || host.starts_with('/'))
                    .then(|| (PathBuf::from(host), container.to_owned()))
            }
            Yaml::Mapping(_) if volume.get("type").and_then(Yaml::as_str) == Some("bind") => Some((
                PathBuf::from(volume.get("source")?.as_str()?),
                volume.get("target")?.as_str()?.to_owned(),
            )),
            _ => None,
        })
        .map(|(host, container)| {
            let host = host.strip_prefix("./").map(Path::to_path_buf).unwrap_or(host);
            (host, container)
        })
        .collect()
}

/// The repository file a service sees at `container_path`, through its bind
/// mounts (a file mounted itself, or inside a mounted directory; the most
/// specific mount wins, as in Docker).
fn mounted_from(compose: &Compose, service: &str, container_path: &str) -> PathBuf {
    bind_mounts(compose.service(service))
        .into_iter()
        .filter_map(|(host, container)| {
            let rest = Path::new(container_path).strip_prefix(&container).ok()?;
            Some((container.len(), if rest.as_os_str().is_empty() { host } else { host.join(rest) }))
        })
        .max_by_key(|(specificity, _)| *specificity)
        .map(|(_, host)| host)
        .unwrap_or_else(|| panic!("service {service} mounts nothing at {container_path}"))
}

/// The Dockerfile a service is built from, checked to exist.
fn build_dockerfile(compose: &Compose, service: &str) -> PathBuf {
    let build =
        compose.service(service).get("build").unwrap_or_else(|| panic!("service {service} has no build"));
    let (context, dockerfile) = match build {
        Yaml::String(context) => (context.clone(), "Dockerfile".to_owned()),
        _ => (
            build.get("context").and_then(Yaml::as_str).unwrap_or(".").to_owned(),
            build.get("dockerfile").and_then(Yaml::as_str).unwrap_or("Dockerfile").to_owned(),
        ),
    };
    let context = repo_root().join(context);
    assert!(
        context.join("Cargo.toml").is_file(),
        "service {service}: the build context is not the workspace"
    );
    let path = context.join(dockerfile);
    assert!(path.is_file(), "service {service}: {} does not exist", path.display());
    path
}

fn depends_on_condition(service: &Yaml, on: &str) -> Option<String> {
    let depends = service.get("depends_on")?;
    depends.get(on)?.get("condition")?.as_str().map(str::to_owned)
}

/// Names of the scrape jobs with `target` among their static targets.
fn scrape_jobs_with_target(config: &Yaml, target: &str) -> Vec<String> {
    sequence(config.get("scrape_configs"))
        .into_iter()
        .filter(|job| {
            let path = job.get("metrics_path").and_then(Yaml::as_str).unwrap_or("/metrics");
            path == "/metrics"
                && sequence(job.get("static_configs"))
                    .iter()
                    .any(|c| strings(c.get("targets")).iter().any(|t| t == target))
        })
        .filter_map(|job| job.get("job_name").and_then(Yaml::as_str).map(str::to_owned))
        .collect()
}
