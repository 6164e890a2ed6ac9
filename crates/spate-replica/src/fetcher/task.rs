//! A task's loop: picking each round's partitions, idling, and the connection to its leader.

use super::{lock, until_stopped, Item, Phase, RoundError, Task, Work, CONNECTION_BACKOFF_MAX_MS};
use spate_client::{error_name, ClientError, Connection, Deadline};
use std::time::Duration;
use tokio::time::Instant;

impl Task {
    pub(super) async fn run(mut self) {
        tracing::debug!(leader = %self.leader, "replica fetcher running");
        loop {
            let Some(work) = self.work() else { break };
            if work.truncating.is_empty() && work.fetching.is_empty() {
                if !self.idle(work.next_ready).await {
                    break;
                }
                continue;
            }
            let Some(mut connection) = self.connect().await else {
                continue;
            };
            let result = if work.truncating.is_empty() {
                self.fetch_round(&mut connection, work.fetching).await
            } else {
                self.truncate_round(&mut connection, work.truncating).await
            };
            match result {
                Ok(()) => {
                    self.connection_backoff_ms = self.settings.backoff_ms;
                    if let Some(kind) = self.trouble.take() {
                        tracing::info!(leader = %self.leader, after = %kind, "replica fetcher is reaching its leader again");
                    }
                    self.keep(connection);
                }
                Err(RoundError::Client(e)) => {
                    drop(connection);
                    self.failed(client_error_kind(&e), &e).await;
                }
                Err(RoundError::Leader(e)) => {
                    self.keep(connection);
                    self.failed(error_name(e), &e).await;
                }
                Err(RoundError::Stopped) => break,
            }
        }
        tracing::debug!(leader = %self.leader, "replica fetcher stopped");
    }

    fn keep(&mut self, connection: Connection) {
        if connection.is_usable() {
            self.connection = Some(connection);
        }
    }

    /// The partitions to include in the next round; `None` once the task must end.
    fn work(&self) -> Option<Work> {
        let mut state = lock(&self.shared.state);
        if state.stopped || *self.stop.borrow() {
            return None;
        }
        if state.partitions.is_empty() {
            state.stopped = true;
            return None;
        }
        let now = Instant::now();
        let mut work = Work::default();
        for (tp, followed) in &mut state.partitions {
            if let Some(until) = followed.delayed_until {
                if until > now {
                    work.next_ready = Some(work.next_ready.map_or(until, |t| t.min(until)));
                    continue;
                }
                followed.delayed_until = None;
            }
            let item = Item {
                tp: tp.clone(),
                partition: followed.partition.clone(),
                leader_epoch: followed.leader_epoch,
                generation: followed.generation,
            };
            match followed.phase {
                Phase::Truncating => work.truncating.push(item),
                Phase::Fetching => work.fetching.push(item),
            }
        }
        Some(work)
    }

    /// Waits for a new partition, a delay to pass, or the stop; false on stop.
    async fn idle(&mut self, until: Option<Instant>) -> bool {
        let delay = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // Biased (deterministic under simulation): the stop, then the timer; both other
        // branches lead to the same next round.
        tokio::select! {
            biased;
            _ = self.stop.wait_for(|s| *s) => false,
            _ = delay => true,
            _ = self.shared.wake.notified() => true,
        }
    }

    /// The connection to the leader, opened if needed; `None` after a failure (already
    /// backed off) or on stop.
    async fn connect(&mut self) -> Option<Connection> {
        let address = self
            .addresses
            .borrow_and_update()
            .get(&self.leader)
            .cloned();
        let Some(address) = address else {
            let message = format!("no address known for node {}", self.leader);
            self.failed("no address".to_owned(), &message).await;
            return None;
        };
        if let Some(connection) = self.connection.take() {
            if connection.is_usable() && connection.addr() == address {
                return Some(connection);
            }
        }
        let deadline = Deadline::after_ms(self.settings.request_timeout_ms);
        let connecting =
            Connection::connect_via(self.settings.net.as_ref(), &address, &self.client, deadline);
        match until_stopped(&self.stop, connecting).await {
            None => None,
            Some(Ok(connection)) => {
                tracing::debug!(leader = %self.leader, %address, "replica fetcher connected");
                Some(connection)
            }
            Some(Err(e)) => {
                self.failed(client_error_kind(&e), &e).await;
                None
            }
        }
    }

    /// Logs a connection-level failure (once per kind) and backs off; an address change or
    /// the stop ends the wait early.
    async fn failed(&mut self, kind: String, error: &(dyn std::fmt::Display + Sync)) {
        self.connection_failures.send_modify(|n| *n += 1);
        if self.trouble.as_deref() != Some(kind.as_str()) {
            tracing::warn!(leader = %self.leader, %error, backoff_ms = self.connection_backoff_ms, "replica fetcher cannot fetch from its leader; retrying");
            self.trouble = Some(kind);
        }
        let wait = Duration::from_millis(self.connection_backoff_ms);
        self.connection_backoff_ms = self
            .connection_backoff_ms
            .saturating_mul(2)
            .min(CONNECTION_BACKOFF_MAX_MS.max(self.settings.backoff_ms));
        let addresses = &mut self.addresses;
        let address_changed = async {
            if addresses.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        // Biased (deterministic under simulation): the stop, then the timer. Every branch ends
        // the wait alike.
        tokio::select! {
            biased;
            _ = self.stop.wait_for(|s| *s) => {}
            _ = tokio::time::sleep(wait) => {}
            _ = address_changed => {}
        }
    }
}

/// A connection-level error's kind, for logging each kind once.
fn client_error_kind(e: &ClientError) -> String {
    let kind = match e {
        ClientError::Unreachable { .. } => "unreachable",
        ClientError::TimedOut { .. } => "timed out",
        ClientError::Io { .. } => "connection failed",
        ClientError::FrameTooLarge { .. } => "frame too large",
        ClientError::Protocol { .. } => "protocol error",
        ClientError::RequestTooLarge { .. } => "request too large",
        ClientError::Encode { .. } => "cannot encode",
        ClientError::Unsupported { .. } | ClientError::VersionNotSupported { .. } => {
            "unsupported version"
        }
        ClientError::Poisoned { .. } => "poisoned",
        ClientError::Kafka { error, .. } => return error_name(*error),
    };
    kind.to_owned()
}
