//! The broker a capacity run uses: librdkafka's mock cluster in this process,
//! or tansu as a child process on a free 127.0.0.1 port, killed when the run
//! ends whatever happens.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use wabulk_kafka::EmbeddedKafka;

use super::{BrokerKind, BrokerSpec};

/// Where `scripts/install-tansu` puts the binary, relative to the checkout.
const INSTALLED_TANSU: &str = ".tools/tansu/bin/tansu";

/// tansu's SQLite database, in the run's directory.
const DATABASE: &str = "tansu.db";

/// How long tansu may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(super) enum Broker {
    Embedded(EmbeddedKafka),
    Tansu(TansuProcess),
}

impl Broker {
    /// Starts the broker and creates `topics` (name, partitions).
    pub(super) async fn start(
        spec: &BrokerSpec,
        topics: &[(&str, i32)],
        run_dir: &Path,
    ) -> anyhow::Result<Broker> {
        match spec.kind {
            BrokerKind::Embedded => {
                let kafka = EmbeddedKafka::start(1).context("cannot start the embedded Kafka")?;
                for (topic, partitions) in topics {
                    kafka
                        .create_topic(topic, *partitions)
                        .with_context(|| format!("cannot create {topic}"))?;
                }
                Ok(Broker::Embedded(kafka))
            }
            BrokerKind::Tansu => {
                let tansu = TansuProcess::start(spec.tansu_bin.as_deref(), run_dir).await?;
                wabulk_kafka::create_topics(&tansu.bootstrap(), topics, Duration::from_secs(30))
                    .await
                    .context("cannot create the topics on tansu")?;
                Ok(Broker::Tansu(tansu))
            }
        }
    }

    pub(super) fn bootstrap_servers(&self) -> String {
        match self {
            Broker::Embedded(kafka) => kafka.bootstrap_servers(),
            Broker::Tansu(tansu) => tansu.bootstrap(),
        }
    }

    /// For the progress lines and the report.
    pub(super) fn describe(&self) -> String {
        match self {
            Broker::Embedded(_) => "librdkafka mock cluster (in process)".into(),
            Broker::Tansu(_) => "tansu (SQLite storage, child process)".into(),
        }
    }
}

/// A tansu broker child process.
#[derive(Debug)]
pub(super) struct TansuProcess {
    child: Child,
    /// Holds the database, removed when the broker goes.
    run_dir: PathBuf,
    address: SocketAddr,
}

impl TansuProcess {
    async fn start(binary: Option<&Path>, run_dir: &Path) -> anyhow::Result<TansuProcess> {
        // Absolute: the child runs in the run's directory.
        let binary = std::path::absolute(find_tansu(binary)?).context("tansu's path")?;
        let address = free_port().context("cannot find a free port for tansu")?;
        let url = format!("tcp://{address}");
        std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
        // A fresh broker per run.
        remove_database(run_dir);
        let log_path = run_dir.join("tansu.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let child = Command::new(&binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            // SQLite in the run's directory (relative to the working
            // directory). Not the memory engine: tansu 0.6.0's acknowledged
            // about 1 % of produced records that it then never stored
            // (loadtest/RESULTS.md, "backlog").
            .args(["--storage-engine", &format!("sqlite://{DATABASE}")])
            .current_dir(run_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("tansu log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut tansu = TansuProcess { child, run_dir: run_dir.to_owned(), address };
        let deadline = Instant::now() + START_TIMEOUT;
        while tokio::net::TcpStream::connect(address).await.is_err() {
            if let Some(status) = tansu.child.try_wait()? {
                bail!("tansu exited with {status} before accepting connections; see {}", log_path.display());
            }
            if Instant::now() > deadline {
                bail!("tansu did not accept connections on {address} within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(tansu)
    }

    fn bootstrap(&self) -> String {
        self.address.to_string()
    }
}

impl Drop for TansuProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_database(&self.run_dir);
    }
}

/// The database is the run's backlog (hundreds of MB): not kept.
fn remove_database(run_dir: &Path) {
    for suffix in ["", "-shm", "-wal", "-journal"] {
        let _ = std::fs::remove_file(run_dir.join(format!("{DATABASE}{suffix}")));
    }
}

fn find_tansu(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = configured {
        return Ok(path.to_owned());
    }
    if let Some(path) = std::env::var_os("WABULK_TANSU") {
        return Ok(path.into());
    }
    if Path::new(INSTALLED_TANSU).is_file() {
        return Ok(INSTALLED_TANSU.into());
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("tansu"))
        .find(|candidate| candidate.is_file());
    on_path.context(
        "this scenario needs tansu and none was found (not in $WABULK_TANSU, .tools/tansu/bin/tansu \
         under the current directory, or the PATH): run scripts/install-tansu from the checkout (a \
         cargo install of about 15 minutes), or set WABULK_TANSU or broker.tansu_bin to its path",
    )
}

/// A port nothing listens on right now. Another process could take it
/// before tansu binds it; tansu then fails to start and the run says so.
fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()
}
