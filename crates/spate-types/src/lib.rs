//! Identifiers, limits and the seams for time and fresh ids ([`clock`]), the network ([`net`])
//! and the disk ([`disk`]) shared by every Spate crate.
//!
//! Ids are newtypes so that an offset is never passed where a leader epoch is expected. The
//! inner value is public because these cross the wire as plain Kafka integers.

use serde::{Deserialize, Serialize};
use std::fmt;

pub mod clock;
pub mod disk;
pub mod exec;
pub mod net;

pub use clock::{Clock, IdSource, ManualClock, RandomIds, Seams, SeededIds, SystemClock};
pub use disk::{Disk, DiskFile, MemoryDisk, OpenMode, OsDisk};
pub use net::{BoxConn, BoxRead, BoxWrite, Listener, MemoryNetwork, Network, TcpNetwork};

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(value: $inner) -> Self {
                Self(value)
            }
        }
    };
}

id_newtype!(
    /// Position of a record in a partition.
    Offset(i64)
);
id_newtype!(
    /// Epoch of a partition's leadership; bumped on every leader change.
    LeaderEpoch(i32)
);
id_newtype!(
    /// A broker or controller node.
    NodeId(i32)
);
id_newtype!(
    /// Identifies an idempotent or transactional producer.
    ProducerId(i64)
);
id_newtype!(
    /// Epoch of a producer id; a higher epoch fences older producer instances.
    ProducerEpoch(i16)
);

impl Offset {
    pub const fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

/// A topic partition, named the way Kafka names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Hard limits. Configurable limits default below these and are checked against them.
pub mod limits {
    /// Largest request frame accepted regardless of configuration (`socket.request.max.bytes`
    /// may only lower it).
    pub const FRAME_BYTES_MAX: usize = 100 * 1024 * 1024;
    /// Largest record batch a log will store.
    pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;
    /// Longest topic name Kafka allows.
    pub const TOPIC_NAME_LEN_MAX: usize = 249;
    /// Most partitions a topic may have.
    pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;
    /// Requests one connection may have in flight before the broker stops reading from it.
    /// Their bytes are bounded separately (`queued.max.request.bytes`); this count is large
    /// because librdkafka with `linger.ms=0` sends one small Produce per message and an
    /// `acks=all` answer waits for an fsync round: a small window caps a connection at
    /// window/fsync-time requests per second (32 per ~3 ms round was measured to collapse
    /// under CPU contention).
    pub const IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX: usize = 1024;
    /// Idempotent producers send at most this many unacknowledged batches per partition; the
    /// broker remembers as many per producer to recognise retries.
    pub const PRODUCER_BATCHES_REMEMBERED: usize = 5;

    const _: () = assert!(BATCH_BYTES_MAX <= FRAME_BYTES_MAX);
}

/// Why a topic name is invalid, as Kafka's `Topic.validate` reports it.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name cannot be '{name}'"));
    }
    if name.len() > limits::TOPIC_NAME_LEN_MAX {
        return Err(format!(
            "topic name is {} characters, longer than the maximum {}",
            name.len(),
            limits::TOPIC_NAME_LEN_MAX
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name '{name}' contains '{c}'; only ASCII alphanumerics, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_eu-west").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name(".").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("has space").is_err());
        assert!(validate_topic_name("slash/no").is_err());
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
    }
}
