//! [`EmbeddedKafka`]: librdkafka's mock cluster, in-process. The default
//! Kafka of `wabulk demo` and of the tests: real Kafka protocol on localhost
//! listeners, consumer groups and offset commits included, with no broker to
//! install.
//!
//! Its limits: it keeps only about 5 MiB per partition (older data is
//! silently dropped, so a bigger backlog is lost), nothing survives the
//! process, and it is librdkafka's test tool, "experimental" in its own words.

use std::sync::mpsc;
use std::thread;

use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::mocking::MockCluster;

use crate::KafkaError;

/// A running mock cluster. librdkafka's handle is not `Send`, so one thread
/// ("wabulk-kafka-mock") owns it and this handle talks to that thread; the
/// handle itself is `Send + Sync`. Dropping it stops the cluster.
pub struct EmbeddedKafka {
    /// Requests to the owning thread; dropping it ends the thread.
    commands: Option<mpsc::Sender<Command>>,
    /// The cluster's `bootstrap.servers`, fixed at start.
    bootstrap: String,
    /// Joined on drop, so the listeners are closed once the handle is gone.
    owner: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKafka").field("bootstrap", &self.bootstrap).finish_non_exhaustive()
    }
}

enum Op {
    CreateTopic { name: String, partitions: i32 },
    BrokerDown(i32),
    BrokerUp(i32),
}

struct Command {
    op: Op,
    reply: mpsc::Sender<Result<(), RdKafkaError>>,
}

impl EmbeddedKafka {
    /// Starts a cluster of `brokers` brokers (ids 1..=brokers) on random
    /// localhost ports. Topics are auto-created on first use with librdkafka's
    /// mock defaults; [`create_topic`](Self::create_topic) chooses the
    /// partition count.
    pub fn start(brokers: i32) -> Result<Self, KafkaError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (commands, requests) = mpsc::channel::<Command>();
        let owner = thread::Builder::new()
            .name("wabulk-kafka-mock".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(cluster) => cluster,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                while let Ok(Command { op, reply }) = requests.recv() {
                    let result = match op {
                        // Replication 1: the mock does not elect new leaders
                        // anyway, so more replicas would add nothing.
                        Op::CreateTopic { name, partitions } => cluster.create_topic(&name, partitions, 1),
                        Op::BrokerDown(id) => cluster.broker_down(id),
                        Op::BrokerUp(id) => cluster.broker_up(id),
                    };
                    let _ = reply.send(result);
                }
            })
            .map_err(KafkaError::Thread)?;
        let bootstrap = match ready_rx.recv() {
            Ok(Ok(bootstrap)) => bootstrap,
            Ok(Err(source)) => {
                let _ = owner.join();
                return Err(KafkaError::Embedded {
                    what: "could not start the mock cluster".into(),
                    source: Some(source),
                });
            }
            Err(_) => {
                let _ = owner.join();
                return Err(KafkaError::Embedded {
                    what: "the mock cluster thread died while starting".into(),
                    source: None,
                });
            }
        };
        Ok(Self { commands: Some(commands), bootstrap, owner: Some(owner) })
    }

    /// The value for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.bootstrap.clone()
    }

    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), KafkaError> {
        self.request(Op::CreateTopic { name: name.to_owned(), partitions }).map_err(|(what, source)| {
            KafkaError::Embedded { what: format!("could not create topic {name}: {what}"), source }
        })
    }

    /// Disconnects broker `id` and refuses new connections to it, to test
    /// outages. Failures (an unknown id) are logged.
    pub fn broker_down(&self, id: i32) {
        if let Err((what, error)) = self.request(Op::BrokerDown(id)) {
            tracing::warn!(id, what, ?error, "could not take the mock broker down");
        }
    }

    /// Lets broker `id` accept connections again.
    pub fn broker_up(&self, id: i32) {
        if let Err((what, error)) = self.request(Op::BrokerUp(id)) {
            tracing::warn!(id, what, ?error, "could not bring the mock broker up");
        }
    }

    fn request(&self, op: Op) -> Result<(), (&'static str, Option<RdKafkaError>)> {
        const GONE: &str = "the mock cluster has stopped";
        let (reply, answer) = mpsc::channel();
        let commands = self.commands.as_ref().ok_or((GONE, None))?;
        commands.send(Command { op, reply }).map_err(|_| (GONE, None))?;
        match answer.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(("refused", Some(error))),
            Err(_) => Err((GONE, None)),
        }
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(owner) = self.owner.take() {
            let _ = owner.join();
        }
    }
}
