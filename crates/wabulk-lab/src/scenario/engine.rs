//! The engine of a capacity run as its own process, as in production:
//! `wabulk run --config FILE` with the configuration written into the run's
//! directory, the tokens in the environment variables it names (never on the
//! command line, never in the file), `/metrics` on a 127.0.0.1 port that the
//! runner reads once per sample, and SIGTERM at the end (a graceful stop).
//! Killed when dropped, so a failing run leaves nothing behind.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use wabulk_config::Config;

/// How long the engine may take to serve `/metrics` after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a graceful stop may take (the engine drains what is in flight
/// and commits) before the run calls it a failure.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// One `/metrics` read.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(super) struct EngineProcess {
    child: Option<Child>,
    pid: u32,
    listen: SocketAddr,
    log: PathBuf,
    /// Clock ticks per second, the unit of /proc/PID/stat's CPU times.
    ticks_per_s: f64,
}

impl EngineProcess {
    /// Writes `config` to `dir/engine.toml`, starts `binary run --config`
    /// with `tokens` in its environment and waits until it serves `/metrics`.
    pub(super) async fn start(
        binary: &Path,
        config: &Config,
        tokens: &HashMap<String, String>,
        dir: &Path,
    ) -> anyhow::Result<EngineProcess> {
        let listen: SocketAddr = config.http.listen.parse().context("http.listen")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let config_path = dir.join("engine.toml");
        let text = toml::to_string(config).context("cannot write the engine's configuration as TOML")?;
        std::fs::write(&config_path, text)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let log = dir.join("engine.log");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(binary);
        command.arg("run").arg("--config").arg(&config_path);
        // The file is the whole configuration: no `WABULK_SECTION__KEY`
        // override from the shell changes what the report describes.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("WABULK_") {
                command.env_remove(var);
            }
        }
        let child = command
            .envs(tokens)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start the engine ({})", binary.display()))?;
        let mut engine =
            EngineProcess { pid: child.id(), child: Some(child), listen, log, ticks_per_s: clock_ticks() };
        let deadline = Instant::now() + START_TIMEOUT;
        while engine.scrape().await.is_err() {
            engine.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "the engine did not serve /metrics on {listen} within {START_TIMEOUT:?}{}",
                    engine.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(engine)
    }

    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    pub(super) fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Fails, with the end of its log, when the engine has exited.
    pub(super) fn check_running(&mut self) -> anyhow::Result<()> {
        let child = self.child.as_mut().context("the engine was stopped")?;
        match child.try_wait().context("cannot wait for the engine")? {
            None => Ok(()),
            Some(status) => {
                self.child = None;
                bail!("the engine exited during the run ({status}){}", self.log_tail())
            }
        }
    }

    /// The engine's `/metrics`.
    pub(super) async fn scrape(&self) -> anyhow::Result<Exposition> {
        let read = async {
            let stream = tokio::net::TcpStream::connect(self.listen).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let request = hyper::Request::get("/metrics")
                .header(hyper::header::HOST, self.listen.to_string())
                .body(Empty::<Bytes>::new())?;
            let response = sender.send_request(request).await?;
            if !response.status().is_success() {
                anyhow::bail!("/metrics answered {}", response.status());
            }
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok(Exposition(String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(SCRAPE_TIMEOUT, read).await.context("/metrics did not answer in time")?
    }

    /// User plus system CPU time the engine has used so far, from
    /// /proc/PID/stat (`process_cpu_seconds_total` in its /metrics is
    /// whole seconds only); `None` where /proc does not say.
    pub(super) fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        Some(cpu_ticks(&stat)? as f64 / self.ticks_per_s)
    }

    /// The most memory the engine has held resident so far (`VmHWM`), in
    /// bytes; `None` where /proc does not say.
    pub(super) fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line["VmHWM:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    }

    /// SIGTERM, then waits for the engine to finish its graceful stop;
    /// fails when it exits unsuccessfully or does not exit in time.
    pub(super) async fn stop(mut self) -> anyhow::Result<()> {
        self.check_running()?;
        // std has no signal but SIGKILL, and this crate forbids the unsafe
        // a libc call would take; kill(1) is everywhere the engine runs.
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("cannot run kill -TERM")?;
        if !sent.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.wait_briefly()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("the engine did not stop within {STOP_TIMEOUT:?} of SIGTERM{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if !status.success() {
            bail!("the engine's graceful stop failed ({status}){}", self.log_tail());
        }
        Ok(())
    }

    fn wait_briefly(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else { return Ok(None) };
        let status = child.try_wait().context("cannot wait for the engine")?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// The last lines of the engine's log, to end an error message with.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("; its log is {}, ending:\n{tail}", self.log.display())
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A 127.0.0.1 port nothing listens on right now. Another process could
/// take it before the engine binds it; the engine then exits and the run
/// says so.
pub(super) fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?)
}

/// utime + stime of a /proc/PID/stat line: fields 14 and 15, counted after
/// the command name, which is in parentheses and may hold spaces.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `after_name` starts at field 3 (the state).
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// `getconf CLK_TCK`, else 100: what Linux reports on every common
/// architecture (a safe call to sysconf would need libc and unsafe code).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

/// A Prometheus text exposition, as `/metrics` serves it.
#[derive(Debug, Clone)]
pub(super) struct Exposition(String);

impl Exposition {
    /// The value of an unlabelled series, e.g. `wabulk_backlog_jobs`.
    pub(super) fn value(&self, name: &str) -> Option<f64> {
        self.samples().find_map(|(series, value)| (series == name).then_some(value))
    }

    /// The sum of every series of `name`, whatever its labels.
    pub(super) fn sum(&self, name: &str) -> f64 {
        self.samples()
            .filter(|(series, _)| series.split('{').next() == Some(name))
            .map(|(_, value)| value)
            .sum()
    }

    /// A histogram's cumulative buckets (upper bound, count), `+Inf` included.
    pub(super) fn buckets(&self, histogram: &str) -> Vec<(f64, u64)> {
        let prefix = format!("{histogram}_bucket{{le=\"");
        self.samples()
            .filter_map(|(series, count)| {
                let bound = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse().ok()? };
                Some((bound, count as u64))
            })
            .collect()
    }

    fn samples(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.lines().filter(|line| !line.starts_with('#')).filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_whatever_the_name() {
        let stat = "4242 (wabulk run) x) S 1 4242 4242 0 -1 4194560 5000 0 0 0 731 129 0 0 20 0 13 0 \
                    100 1860812800 13071 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(731 + 129));
        assert_eq!(cpu_ticks("4242 (wabulk) S 1"), None);
        let own = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        assert!(cpu_ticks(&own).is_some(), "{own}");
    }

    #[test]
    fn exposition_reads_gauges_and_buckets() {
        let text = "# HELP wabulk_backlog_jobs x\n# TYPE wabulk_backlog_jobs gauge\nwabulk_backlog_jobs 42\n\
                    wabulk_backlog_jobs_other 7\nprocess_cpu_seconds_total 1.25\n\
                    wabulk_send_latency_seconds_bucket{le=\"0.005\"} 3\n\
                    wabulk_send_latency_seconds_bucket{le=\"0.01\"} 5\n\
                    wabulk_send_latency_seconds_bucket{le=\"+Inf\"} 9\n\
                    wabulk_send_latency_seconds_sum 0.4\nwabulk_send_latency_seconds_count 9\n";
        let e = Exposition(text.into());
        assert_eq!(e.value("wabulk_backlog_jobs"), Some(42.0));
        assert_eq!(e.value("process_cpu_seconds_total"), Some(1.25));
        assert_eq!(e.value("wabulk_inflight_requests"), None);
        assert_eq!(e.buckets("wabulk_send_latency_seconds"), vec![(0.005, 3), (0.01, 5), (f64::INFINITY, 9)]);
        // Every label set of one name, and nothing of a longer name.
        assert_eq!(e.sum("wabulk_send_latency_seconds_bucket"), 17.0);
        assert_eq!(e.sum("wabulk_backlog_jobs"), 42.0);
        assert_eq!(e.sum("wabulk_jobs_parked_total"), 0.0);
    }
}
