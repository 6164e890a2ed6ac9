//! The node's storage health: the first failed fsync of any partition it hosts.
//!
//! After a failed fsync the kernel may already have dropped the dirty pages it could not write
//! (and marked them clean), so a later fsync that succeeds proves nothing about the earlier
//! writes: the node can no longer promise that what it acknowledged or reported to its leader
//! is on disk. It must stop and recover from what its disk really holds, as Kafka halts when
//! its only log directory fails and PostgreSQL panics on a failed fsync. The partition that saw
//! the failure refuses `acks=all` writes and stops fetching at once; the node's owner (the
//! server) watches [`StorageHealth::failed`] and exits.

use std::sync::Arc;
use tokio::sync::watch;

/// Shared by a [`crate::ReplicaManager`] and every partition it opens. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StorageHealth(Arc<watch::Sender<Option<String>>>);

impl Default for StorageHealth {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(None)))
    }
}

impl StorageHealth {
    /// Records a failure; the first one is kept (it is the cause, later ones follow from it).
    pub fn fail(&self, what: String) {
        self.0.send_if_modified(|failure| {
            if failure.is_some() {
                return false;
            }
            *failure = Some(what);
            true
        });
    }

    /// The first failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Resolves with the first failure once there is one.
    pub async fn failed(&self) -> String {
        let mut rx = self.0.subscribe();
        if rx.wait_for(Option::is_some).await.is_err() {
            // The sender lives in `self`, so the channel cannot close while this waits.
            std::future::pending::<()>().await;
        }
        let failure = rx.borrow().clone();
        failure.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_failure_is_kept_and_wakes_the_waiter() {
        let health = StorageHealth::default();
        assert_eq!(health.failure(), None);
        let waiter = tokio::spawn({
            let health = health.clone();
            async move { health.failed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        health.fail("fsync of t-0 failed: EIO".into());
        health.fail("fsync of t-1 failed: EIO".into());
        assert_eq!(waiter.await.unwrap(), "fsync of t-0 failed: EIO");
        assert_eq!(
            health.failure().as_deref(),
            Some("fsync of t-0 failed: EIO")
        );
        // A waiter that comes after the failure resolves at once.
        assert_eq!(health.failed().await, "fsync of t-0 failed: EIO");
    }
}
