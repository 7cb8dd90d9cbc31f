//! One graceful stop for every stage.
//!
//! A stop is begun once (a signal, or the caller's future); from then on
//! nothing new is read or sent, and everything already under way (requests
//! in flight, results being written) has until one deadline, `drain` after
//! the beginning, to finish. Each stage watches the same [`Shutdown`], so
//! there is one bound and one place that sets it.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// A graceful stop: not begun, or begun with its deadline. Cheap to clone;
/// every clone sees the same stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    drain: Duration,
    deadline: watch::Sender<Option<Instant>>,
}

impl Shutdown {
    /// A stop not begun yet, whose work under way gets `drain` to finish.
    pub fn new(drain: Duration) -> Shutdown {
        Shutdown { drain, deadline: watch::Sender::new(None) }
    }

    /// Begins the stop (the first call sets the deadline; later calls do
    /// nothing).
    pub fn begin(&self) {
        let deadline = Instant::now() + self.drain;
        self.deadline.send_if_modified(|current| {
            let first = current.is_none();
            if first {
                *current = Some(deadline);
            }
            first
        });
    }

    /// Whether the stop has begun: nothing new is to be read or sent.
    pub fn is_draining(&self) -> bool {
        self.deadline.borrow().is_some()
    }

    /// Resolves once the stop has begun (at once if it has). Cancel-safe.
    pub async fn begun(&self) {
        let mut receiver = self.deadline.subscribe();
        // Fails only when the sender is gone, which `self` holds.
        let _ = receiver.wait_for(Option::is_some).await;
    }

    /// Resolves at the deadline: begun, and `drain` past. Cancel-safe.
    pub async fn deadline_passed(&self) {
        self.begun().await;
        let deadline = self.deadline.borrow().expect("begun");
        tokio::time::sleep_until(deadline).await;
    }

    /// Runs `work` until it ends or the deadline passes; whether it ended.
    pub async fn within_deadline(&self, work: impl std::future::Future<Output = ()>) -> bool {
        tokio::select! {
            () = work => true,
            () = self.deadline_passed() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_drain_after_the_first_begin() {
        let shutdown = Shutdown::new(Duration::from_secs(5));
        assert!(!shutdown.is_draining());
        let waiter = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                shutdown.deadline_passed().await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        let begun_at = Instant::now();
        shutdown.begin();
        tokio::time::sleep(Duration::from_secs(3)).await;
        // A second beginning does not move the deadline.
        shutdown.begin();
        assert!(shutdown.is_draining());
        assert_eq!(waiter.await.unwrap(), begun_at + Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn work_is_cut_at_the_deadline() {
        let shutdown = Shutdown::new(Duration::from_secs(2));
        shutdown.begin();
        assert!(shutdown.within_deadline(tokio::time::sleep(Duration::from_secs(1))).await);
        assert!(!shutdown.within_deadline(tokio::time::sleep(Duration::from_secs(5))).await);
    }
}
