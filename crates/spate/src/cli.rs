//! What the commands that speak the Kafka protocol (`spate group`, `spate topic`) share: the
//! connection flags, the output format, retrying errors that go away by themselves, and
//! rendering (JSON, aligned tables).

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;
use spate_client::{ClientConfig, ClientError, Cluster, Deadline};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// The client id the CLI sends in every request.
pub const CLIENT_ID: &str = "spate-cli";
/// The longest `--timeout-ms` accepted: one hour.
const TIMEOUT_MS_MAX: u64 = 3_600_000;
/// Backoff between retries of an error that goes away by itself.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(1000);
const _: () = assert!(RETRY_BACKOFF_MIN.as_millis() <= RETRY_BACKOFF_MAX.as_millis());
/// Metadata has allow_auto_topic_creation from this version.
const METADATA_AUTO_CREATE_VERSION: i16 = 4;
/// Metadata asks for every topic with a null list from this version (v0: an empty list).
const METADATA_NULL_TOPICS_VERSION: i16 = 1;

#[derive(clap::Args)]
pub struct ConnectArgs {
    /// Brokers to bootstrap from, comma-separated; the first that answers is used.
    #[arg(
        long,
        env = "SPATE_BOOTSTRAP_SERVER",
        default_value = "127.0.0.1:9092",
        value_name = "HOST:PORT[,HOST:PORT...]"
    )]
    pub bootstrap_server: String,
    /// Give up after this many milliseconds (connecting, waiting for answers, retrying).
    #[arg(
        long,
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..=TIMEOUT_MS_MAX)
    )]
    pub timeout_ms: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

impl ConnectArgs {
    /// The cluster these flags name; the timeout starts now.
    pub fn cluster(&self) -> Cluster {
        cluster(&self.bootstrap_server, self.timeout_ms)
    }
}

/// A cluster reached through `bootstrap`, every call of which ends `timeout_ms` from now.
pub fn cluster(bootstrap: &str, timeout_ms: u64) -> Cluster {
    Cluster::new(
        bootstrap,
        ClientConfig::new(CLIENT_ID),
        Deadline::after_ms(timeout_ms),
    )
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Runs a command's future on a single-threaded runtime; returns what to print on stdout.
pub fn block_on(command: impl Future<Output = anyhow::Result<String>>) -> anyhow::Result<String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(command)
}

/// A Metadata request for the named topics (`None`: every topic). It never asks the broker to
/// create a topic where the version can say so (v4+); an empty list at v0 means every topic.
pub fn metadata_request(version: i16, topics: Option<&[&str]>) -> MetadataRequest {
    let topics = match topics {
        None if version < METADATA_NULL_TOPICS_VERSION => Some(Vec::new()),
        None => None,
        Some(names) => Some(
            names
                .iter()
                .map(|name| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string((*name).to_owned()))))
                })
                .collect(),
        ),
    };
    let request = MetadataRequest::default().with_topics(topics);
    if version >= METADATA_AUTO_CREATE_VERSION {
        request.with_allow_auto_topic_creation(false)
    } else {
        request
    }
}

/// Pretty JSON with a final newline.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

/// Retrying an error that goes away by itself until the cluster's deadline, with backoff.
pub struct Retry {
    backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            backoff: RETRY_BACKOFF_MIN,
        }
    }
}

impl Retry {
    /// Waits before the next attempt, or returns the error if `retriable` says it is not worth
    /// retrying or the deadline would pass.
    pub async fn wait(
        &mut self,
        cluster: &Cluster,
        error: anyhow::Error,
        retriable: impl Fn(&ClientError) -> bool,
    ) -> anyhow::Result<()> {
        if !error.downcast_ref::<ClientError>().is_some_and(retriable) {
            return Err(error);
        }
        let deadline = cluster.deadline();
        if Instant::now() + self.backoff >= deadline.at() {
            return Err(error.context(format!("gave up after {} ms", deadline.timeout_ms())));
        }
        tracing::debug!("retrying in {:?}: {error:#}", self.backoff);
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(RETRY_BACKOFF_MAX);
        Ok(())
    }
}

/// `-` for an empty cell.
pub fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// Left-aligned columns, two spaces apart, no trailing spaces; one line per row.
///
/// # Panics
///
/// If a row has not as many cells as there are headers.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        assert_eq!(row.len(), headers.len(), "row and header widths differ");
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align_without_trailing_spaces() {
        let table = render_table(
            &["GROUP", "STATE", "PROTOCOL TYPE"],
            &[
                vec!["a-long-group".into(), "Stable".into(), "consumer".into()],
                vec!["g".into(), "Empty".into(), "-".into()],
            ],
        );
        assert_eq!(
            table,
            "GROUP         STATE   PROTOCOL TYPE\n\
             a-long-group  Stable  consumer\n\
             g             Empty   -\n"
        );
        assert_eq!(render_table(&["A", "B"], &[]), "A  B\n");
    }

    #[test]
    fn empty_cells_are_dashes() {
        assert_eq!(dash(""), "-");
        assert_eq!(dash("x"), "x");
    }
}
