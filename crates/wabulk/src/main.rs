//! `wabulk`: the command line (CONTRACT §7). Each subcommand is a thin layer
//! over the library: parse arguments, set up logging, run, map the outcome
//! to an exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use wabulk::config::Config;
use wabulk::setup::EngineSetup;
use wabulk_lab::demo::DemoOptions;
use wabulk_lab::{graph_sim, loadgen};
use wabulk_telemetry::{Health, Metrics};

mod admin;

/// Subcommands with more to them than a call into the library.
mod cli {
    pub(crate) mod campaign;
    pub(crate) mod send;
}

/// glibc's allocator serialises threads on its arena locks under this
/// workload (many small JSON and HTTP/2 buffers freed on other threads);
/// mimalloc's per-thread heaps do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "wabulk", version, about = "Bulk sender for the WhatsApp Cloud API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine: consume jobs from Kafka, send them, write results.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The whole system on this machine with no set-up: embedded Kafka, the
    /// Graph API simulator, the load generator and the engine.
    Demo(DemoOptions),
    /// The Graph API simulator alone (HTTP/1.1 and HTTP/2 cleartext, or
    /// HTTPS with `--tls`).
    Simulate {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Serve HTTPS with a CA and certificate made at start (as `tls = true`
        /// in the configuration); the engine trusts it with `graph.ca_file`.
        #[arg(long)]
        tls: bool,
        /// Where to write the CA's PEM in the HTTPS mode.
        #[arg(long, default_value = "wabulk-sim-ca.pem")]
        ca_out: PathBuf,
        /// Simulator configuration (TOML); without it, the built-in example:
        /// numbers at 1000, 80, 80 and 20 msg/s over two WABAs.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Multiply Meta-like latency by this (0.01 for fast runs; 0 for none).
        #[arg(long)]
        latency_scale: Option<f64>,
        /// Print the effective configuration as TOML and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Write jobs to Kafka at a target rate (`--spec`), or run a whole
    /// capacity scenario (`loadgen run SCENARIO.toml`).
    Loadgen(LoadgenArgs),
    /// Meta's status webhooks alone (it also runs inside `run` when the
    /// configuration has `[webhooks]`): statuses to the statuses topic,
    /// replies to the inbound topic. Stateless; scale it apart.
    Webhooks {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration and print the effective one, secrets masked.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write jobs (one JSON a line, from FILE or standard input) to the jobs
    /// topic, each checked as the engine checks it. Exit status 1 if a line
    /// was not a job (the valid ones are written all the same), 2 if the
    /// configuration, the input or Kafka failed.
    Send(cli::send::SendArgs),
    /// Pause, resume or cancel a campaign (one record on the control topic,
    /// applied by every engine instance), or show each campaign's state and
    /// counts. Exit status 1 if a change is refused, 2 if the configuration
    /// or Kafka failed.
    Campaign(cli::campaign::CampaignArgs),
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct LoadgenArgs {
    #[command(subcommand)]
    command: Option<LoadgenCommand>,
    /// Load specification (TOML); see crates/wabulk-loadgen.
    #[arg(long, required = true)]
    spec: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "wabulk.jobs")]
    topic: String,
    /// Override the spec's job count.
    #[arg(long)]
    jobs: Option<u64>,
    /// Override the spec's rate (jobs/s); 0 means as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
}

#[derive(Debug, Subcommand)]
enum LoadgenCommand {
    /// Start the scenario's broker, simulator and engine on 127.0.0.1, drive
    /// its load, and write a report (JSON, Markdown, SVG charts).
    Run {
        /// Scenario file, e.g. loadtest/scenarios/smoke.toml.
        scenario: PathBuf,
        /// Report directory; default loadtest/reports/<scenario name>.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the scenario's job count (for a quick try).
        #[arg(long)]
        jobs: Option<u64>,
        /// No progress lines, only the summary.
        #[arg(long)]
        quiet: bool,
        /// Serve the engine's /metrics, /healthz and /readyz here during the run.
        #[arg(long)]
        http_listen: Option<SocketAddr>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter(&cli.command))),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The demo and capacity runs print their own progress and check their own
/// outcome; library
/// logs, librdkafka's complaints as the embedded cluster goes away among
/// them, would drown it.
fn default_filter(command: &Command) -> &'static str {
    match command {
        Command::Demo(_) | Command::Loadgen(LoadgenArgs { command: Some(_), .. }) => {
            "error,rdkafka=off,librdkafka=off"
        }
        // `send` reports on stderr: besides that, only warnings (a broker
        // that cannot be reached, say).
        Command::Send(_) => "warn",
        // `campaign`'s reads fail at once when Kafka cannot be reached, with
        // the cause in its own message; librdkafka's warnings would repeat it
        // hundreds of times.
        Command::Campaign(_) => "warn,librdkafka=error",
        // The consumer is closed on its polling thread (so that the final
        // revocation stores the offsets there); rdkafka's own drop then tries
        // to close it again and logs that as an error on every clean stop.
        // Besides that error the module logs only two warnings, about
        // consumer events the engine's own rebalance handling covers.
        _ => "info,rdkafka::consumer::base_consumer=off",
    }
}

/// The `/metrics`, `/healthz` and `/readyz` listener, running.
struct Telemetry {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Telemetry {
    async fn start(
        listen: SocketAddr,
        metrics: &Arc<Metrics>,
        health: &Arc<Health>,
        admin: Option<wabulk_telemetry::AdminHandler>,
    ) -> anyhow::Result<Telemetry> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("http.listen: cannot bind {listen}"))?;
        let address = listener.local_addr().unwrap_or(listen);
        tracing::info!(%address, "serving /metrics, /healthz, /readyz");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(wabulk_telemetry::serve_with_admin(
            listener,
            Arc::clone(metrics),
            Arc::clone(health),
            admin,
            async move {
                let _ = stopped.await;
            },
        ));
        Ok(Telemetry { stop, task })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::CheckConfig { config } => {
            let loaded = load_config(&config)?;
            print!("{}", loaded.render_masked(&|var| std::env::var(var).ok()));
            match wabulk_kafka::client_build() {
                Ok(build) => println!("# librdkafka {}: {}", build.version, build.features.join(",")),
                Err(error) => println!("# librdkafka: {error}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Send(args) => Ok(cli::send::run(args).await),
        Command::Campaign(args) => Ok(cli::campaign::run(args).await),
        Command::Run { config } => {
            let stop = stop_signal();
            let loaded = load_config(&config)?;
            let setup = EngineSetup::from_config(&loaded, &|var| std::env::var(var).ok())?;
            let metrics = Arc::new(Metrics::new());
            let (changes_tx, changes) = tokio::sync::mpsc::unbounded_channel();
            let reloader = Arc::new(std::sync::Mutex::new(wabulk::reload::Reloader::new(
                config.clone(),
                loaded.clone(),
                Arc::clone(&setup.tokens),
                changes_tx,
                Arc::clone(&metrics),
            )));
            let admin = admin::handler(loaded.clone(), Arc::clone(&reloader))?;
            let (stop_reloads, reloads_stopped) = tokio::sync::oneshot::channel::<()>();
            let reloads = tokio::spawn(wabulk::reload::watch(reloader, async move {
                let _ = reloads_stopped.await;
            }));
            let health = Arc::new(Health::new());
            let telemetry = Telemetry::start(setup.http_listen, &metrics, &health, admin).await?;
            let env = |var: &str| std::env::var(var).ok();
            let (stop_webhooks, webhooks_stopped) = tokio::sync::oneshot::channel::<()>();
            let webhooks = match loaded.webhooks {
                Some(_) => Some(
                    wabulk::webhooks::start(&loaded, &env, Arc::clone(&metrics), async move {
                        let _ = webhooks_stopped.await;
                    })
                    .await?,
                ),
                None => None,
            };
            let ran = wabulk::engine::run_with_changes(setup, metrics, health, stop, changes).await;
            let _ = stop_reloads.send(());
            let _ = reloads.await;
            ran?;
            let _ = stop_webhooks.send(());
            if let Some(webhooks) = webhooks {
                let _ = webhooks.await;
            }
            telemetry.stop().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Webhooks { config } => {
            let stop = stop_signal();
            let loaded = load_config(&config)?;
            let env = |var: &str| std::env::var(var).ok();
            let metrics = Arc::new(Metrics::new());
            // The configured numbers' statuses at 0, as `run` has them.
            metrics.create_status_zero_series(loaded.phones.iter().map(|p| p.id.as_str()));
            let health = Arc::new(Health::new());
            let listen: SocketAddr = loaded.http.listen.parse().context("http.listen")?;
            let telemetry = Telemetry::start(listen, &metrics, &health, None).await?;
            let receiver = wabulk::webhooks::start(&loaded, &env, metrics, stop).await?;
            // Nothing to consume and nothing to send: ready while it receives.
            health.set_consuming(true);
            health.set_sending(true);
            let served = receiver.await.context("webhook receiver task")?;
            health.set_consuming(false);
            telemetry.stop().await;
            served.context("webhook receiver")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(options) => {
            let summary = unless_stopped(wabulk_lab::demo::run(options)).await?;
            Ok(if summary.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Simulate { listen, tls, ca_out, config, latency_scale, print_config } => {
            let mut sim = match config {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    toml::from_str(&text).with_context(|| {
                        format!("{} is not a valid simulator configuration", path.display())
                    })?
                }
                None => graph_sim::example_config(),
            };
            if let Some(scale) = latency_scale {
                sim.latency = graph_sim::Latency::Meta { scale };
            }
            sim.tls |= tls;
            if print_config {
                print!("{}", toml::to_string_pretty(&sim).context("cannot print the configuration")?);
                return Ok(ExitCode::SUCCESS);
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot bind {listen}"))?;
            let handle = graph_sim::Simulator::start(sim, listener).await.context("simulator")?;
            if handle.ca_pem().is_some() {
                handle
                    .write_ca_pem(&ca_out)
                    .with_context(|| format!("cannot write the CA to {}", ca_out.display()))?;
                println!("CA certificate in {} (graph.ca_file)", ca_out.display());
            }
            println!("Graph API simulator on {} (stats: GET /__sim/stats)", handle.base_url());
            stop_signal().await;
            let stats = handle.stats();
            handle.shutdown().await;
            println!("{}", serde_json::to_string_pretty(&stats).context("stats")?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Loadgen(LoadgenArgs {
            command: Some(LoadgenCommand::Run { scenario, out, jobs, quiet, http_listen }),
            ..
        }) => {
            let mut loaded = wabulk_lab::scenario::Scenario::load(&scenario)?;
            if let Some(jobs) = jobs {
                loaded.load.jobs = jobs;
            }
            let out = out.unwrap_or_else(|| PathBuf::from("loadtest/reports").join(&loaded.name));
            let options = wabulk_lab::scenario::RunOptions {
                quiet,
                http_listen,
                command: std::env::args().collect::<Vec<_>>().join(" "),
                work_dir: out.clone(),
                engine_binary: None,
            };
            let report = unless_stopped(wabulk_lab::scenario::run(&loaded, &options)).await?;
            wabulk_lab::scenario::print_summary(&report);
            let written = report.write_to(&out)?;
            println!(
                "  report: {}",
                written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            );
            Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Loadgen(LoadgenArgs { spec, brokers, topic, jobs, rate, .. }) => {
            let spec = spec.context("--spec is required")?;
            let text =
                std::fs::read_to_string(&spec).with_context(|| format!("cannot read {}", spec.display()))?;
            let mut spec: loadgen::LoadSpec = toml::from_str(&text)
                .with_context(|| format!("{} is not a valid load spec", spec.display()))?;
            if let Some(jobs) = jobs {
                spec.jobs = jobs;
            }
            if let Some(rate) = rate {
                spec.rate = (rate > 0.0).then_some(rate);
            }
            if spec.id_prefix.is_empty() {
                spec.id_prefix = format!("loadgen-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S"));
            }
            let writer = wabulk_kafka::JobWriter::connect(&brokers, &Default::default())?;
            let report = loadgen::run(&spec, &writer, &topic, true).await?;
            println!(
                "wrote {} jobs ({} malformed) in {:.1} s: {:.0} jobs/s",
                report.written,
                report.malformed,
                report.elapsed.as_secs_f64(),
                report.achieved_rate
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path, std::env::vars())
        .with_context(|| format!("configuration {} is not valid", path.display()))
}

/// Runs a lab run (the demo, a capacity run) until it ends or SIGTERM or
/// SIGINT comes. On the signal the run is dropped, and with it the engine
/// process it started (killed by its `Drop`), so that nothing is left
/// running; only SIGKILL, which no process can catch, leaves the engine.
async fn unless_stopped<T>(run: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::select! {
        result = run => result,
        () = stop_signal() => anyhow::bail!("stopped by a signal; the run's engine was stopped with it"),
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: a signal that comes while
/// the engine is still starting (reading its topics, creating the parking
/// ones) then stops it gracefully once it has started, instead of killing
/// it.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    async fn received(signal: Option<Signal>) {
        match signal {
            Some(mut signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    let (terminate, interrupt) = (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok());
    async move {
        tokio::select! {
            () = received(terminate) => {}
            () = received(interrupt) => {}
        }
    }
}
