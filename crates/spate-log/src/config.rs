//! Topic-level log configuration, named and defaulted as Kafka names and defaults it.
//!
//! [`TOPIC_CONFIGS`] is the single list of topic configs Spate knows; DescribeConfigs and
//! CreateTopics/AlterConfigs validation both come from it. Values are checked against Kafka's
//! ranges and against Spate's hard limits, so a stored [`LogConfig`] is always usable.

use spate_types::limits::BATCH_BYTES_MAX;
use std::collections::BTreeMap;

/// How a config value is typed in Kafka's DescribeConfigs (`ConfigType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigKind {
    Boolean,
    Int,
    Long,
    Double,
    String,
    List,
}

/// A topic config Spate knows.
#[derive(Clone, Copy, Debug)]
pub struct TopicConfigDef {
    pub name: &'static str,
    pub kind: ConfigKind,
    pub doc: &'static str,
}

const fn def(name: &'static str, kind: ConfigKind, doc: &'static str) -> TopicConfigDef {
    TopicConfigDef { name, kind, doc }
}

/// Every topic-level config Spate accepts.
pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    def("cleanup.policy", ConfigKind::List, "\"delete\" and/or \"compact\" (keep the latest record per key; records need a key)."),
    def("compression.type", ConfigKind::String, "Only \"producer\": batches are stored as the producer compressed them."),
    def("delete.retention.ms", ConfigKind::Long, "How long delete tombstones are kept on compacted topics."),
    def("file.delete.delay.ms", ConfigKind::Long, "Delay before a deleted segment's files are removed."),
    def("flush.messages", ConfigKind::Long, "Force an fsync after this many messages."),
    def("flush.ms", ConfigKind::Long, "Force an fsync after this many milliseconds; the default defers to the broker's flush interval."),
    def("index.interval.bytes", ConfigKind::Int, "Bytes of batches between two offset index entries."),
    def("max.message.bytes", ConfigKind::Int, "Largest record batch accepted."),
    def("message.timestamp.difference.max.ms", ConfigKind::Long, "Largest allowed difference between a record's timestamp and the broker's clock."),
    def("message.timestamp.type", ConfigKind::String, "Only \"CreateTime\" is supported."),
    def("min.cleanable.dirty.ratio", ConfigKind::Double, "Dirty ratio above which the log is compacted."),
    def("min.compaction.lag.ms", ConfigKind::Long, "Minimum time a message stays uncompacted."),
    def("min.insync.replicas", ConfigKind::Int, "In-sync replicas needed to acknowledge acks=all."),
    def("retention.bytes", ConfigKind::Long, "Largest size of the partition log before old segments are deleted; -1 means no limit."),
    def("retention.ms", ConfigKind::Long, "Age after which a segment is deleted; -1 means no limit."),
    def("segment.bytes", ConfigKind::Int, "Size at which a segment is rolled."),
    def("segment.index.bytes", ConfigKind::Int, "Size at which a segment's index is full and the segment is rolled."),
    def("segment.ms", ConfigKind::Long, "Age at which a segment is rolled even if not full."),
    def("unclean.leader.election.enable", ConfigKind::Boolean, "Must stay false: Spate never elects an out-of-sync leader."),
];

/// The timestamp a record carries in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
}

/// Effective configuration of one partition log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub segment_index_bytes: u64,
    pub index_interval_bytes: u64,
    /// -1 means infinite.
    pub retention_ms: i64,
    /// -1 means infinite.
    pub retention_bytes: i64,
    pub max_message_bytes: usize,
    pub cleanup_policy: String,
    pub message_timestamp_type: TimestampType,
    pub min_insync_replicas: i32,
    pub flush_messages: i64,
    /// `i64::MAX` means "use the broker's flush interval".
    pub flush_ms: i64,
    pub compression_type: String,
    pub delete_retention_ms: i64,
    pub min_cleanable_dirty_ratio: f64,
    pub min_compaction_lag_ms: i64,
    pub file_delete_delay_ms: i64,
    pub unclean_leader_election_enable: bool,
    pub message_timestamp_difference_max_ms: i64,
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * DAY_MS,
            segment_index_bytes: 10 * 1024 * 1024,
            index_interval_bytes: 4096,
            retention_ms: 7 * DAY_MS,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            cleanup_policy: "delete".into(),
            message_timestamp_type: TimestampType::CreateTime,
            min_insync_replicas: 1,
            flush_messages: i64::MAX,
            flush_ms: i64::MAX,
            compression_type: "producer".into(),
            delete_retention_ms: DAY_MS,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            file_delete_delay_ms: 60_000,
            unclean_leader_election_enable: false,
            message_timestamp_difference_max_ms: i64::MAX,
        }
    }
}

/// Why a config override was refused (Kafka: INVALID_CONFIG).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown topic config {0}")]
    Unknown(String),
    #[error("invalid value {value:?} for {name}: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
}

fn invalid(name: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: name.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

fn parse_i64(name: &str, value: &str, min: i64, max: i64) -> Result<i64, ConfigError> {
    let v: i64 = value
        .trim()
        .parse()
        .map_err(|_| invalid(name, value, "not an integer"))?;
    if v < min || v > max {
        return Err(invalid(name, value, format!("must be in [{min}, {max}]")));
    }
    Ok(v)
}

fn parse_u64(name: &str, value: &str, min: i64, max: i64) -> Result<u64, ConfigError> {
    let v = parse_i64(name, value, min.max(0), max)?;
    u64::try_from(v).map_err(|_| invalid(name, value, "must not be negative"))
}

impl LogConfig {
    /// Applies topic-level overrides (Kafka names) on top of `self`.
    pub fn with_overrides(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Result<LogConfig, ConfigError> {
        let mut c = self.clone();
        for (name, value) in overrides {
            let (n, v) = (name.as_str(), value.as_str());
            let int = i64::from(i32::MAX);
            match n {
                "cleanup.policy" => {
                    let mut parts: Vec<&str> = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .collect();
                    if parts.is_empty() || parts.iter().any(|p| *p != "delete" && *p != "compact") {
                        return Err(invalid(
                            n,
                            v,
                            "must be a list of \"delete\" and \"compact\"",
                        ));
                    }
                    parts.sort_unstable();
                    parts.dedup();
                    c.cleanup_policy = parts.join(",");
                }
                "compression.type" => {
                    if v != "producer" {
                        return Err(invalid(n, v, "only \"producer\" is supported"));
                    }
                    c.compression_type = v.into();
                }
                "delete.retention.ms" => c.delete_retention_ms = parse_i64(n, v, 0, i64::MAX)?,
                "file.delete.delay.ms" => c.file_delete_delay_ms = parse_i64(n, v, 0, i64::MAX)?,
                "flush.messages" => c.flush_messages = parse_i64(n, v, 1, i64::MAX)?,
                "flush.ms" => c.flush_ms = parse_i64(n, v, 0, i64::MAX)?,
                "index.interval.bytes" => c.index_interval_bytes = parse_u64(n, v, 0, int)?,
                "max.message.bytes" => {
                    c.max_message_bytes = parse_u64(n, v, 0, BATCH_BYTES_MAX as i64)
                        .map_err(|_| invalid(n, v, format!("must be in [0, {BATCH_BYTES_MAX}]")))?
                        as usize
                }
                "message.timestamp.difference.max.ms" => {
                    c.message_timestamp_difference_max_ms = parse_i64(n, v, 0, i64::MAX)?
                }
                "message.timestamp.type" => {
                    if v != "CreateTime" {
                        return Err(invalid(n, v, "only \"CreateTime\" is supported"));
                    }
                    c.message_timestamp_type = TimestampType::CreateTime;
                }
                "min.cleanable.dirty.ratio" => {
                    let r: f64 = v
                        .trim()
                        .parse()
                        .map_err(|_| invalid(n, v, "not a number"))?;
                    if !(0.0..=1.0).contains(&r) {
                        return Err(invalid(n, v, "must be in [0, 1]"));
                    }
                    c.min_cleanable_dirty_ratio = r;
                }
                "min.compaction.lag.ms" => c.min_compaction_lag_ms = parse_i64(n, v, 0, i64::MAX)?,
                "min.insync.replicas" => c.min_insync_replicas = parse_i64(n, v, 1, int)? as i32,
                "retention.bytes" => c.retention_bytes = parse_i64(n, v, -1, i64::MAX)?,
                "retention.ms" => c.retention_ms = parse_i64(n, v, -1, i64::MAX)?,
                // 14 is Kafka's floor (a v0 record's overhead); the ceiling keeps file positions
                // in the u32 of an index entry even with one oversized batch past the roll point.
                "segment.bytes" => c.segment_bytes = parse_u64(n, v, 14, int)?,
                "segment.index.bytes" => c.segment_index_bytes = parse_u64(n, v, 4, int)?,
                "segment.ms" => c.segment_ms = parse_i64(n, v, 1, i64::MAX)?,
                "unclean.leader.election.enable" => match v.trim() {
                    "false" => c.unclean_leader_election_enable = false,
                    "true" => {
                        return Err(invalid(n, v, "unclean leader election is not supported"))
                    }
                    _ => return Err(invalid(n, v, "must be true or false")),
                },
                _ => return Err(ConfigError::Unknown(name.clone())),
            }
        }
        Ok(c)
    }

    /// The effective value of a known config, rendered as Kafka renders it.
    pub fn value_of(&self, name: &str) -> Option<String> {
        Some(match name {
            "cleanup.policy" => self.cleanup_policy.clone(),
            "compression.type" => self.compression_type.clone(),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "file.delete.delay.ms" => self.file_delete_delay_ms.to_string(),
            "flush.messages" => self.flush_messages.to_string(),
            "flush.ms" => self.flush_ms.to_string(),
            "index.interval.bytes" => self.index_interval_bytes.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "message.timestamp.difference.max.ms" => {
                self.message_timestamp_difference_max_ms.to_string()
            }
            "message.timestamp.type" => match self.message_timestamp_type {
                TimestampType::CreateTime => "CreateTime".into(),
            },
            "min.cleanable.dirty.ratio" => self.min_cleanable_dirty_ratio.to_string(),
            "min.compaction.lag.ms" => self.min_compaction_lag_ms.to_string(),
            "min.insync.replicas" => self.min_insync_replicas.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "retention.ms" => self.retention_ms.to_string(),
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.index.bytes" => self.segment_index_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            "unclean.leader.election.enable" => self.unclean_leader_election_enable.to_string(),
            _ => return None,
        })
    }

    /// Whether time/size retention applies (`cleanup.policy` contains `delete`).
    pub fn deletes(&self) -> bool {
        self.cleanup_policy.split(',').any(|p| p == "delete")
    }

    /// Whether the log is compacted (`cleanup.policy` contains `compact`).
    pub fn compacts(&self) -> bool {
        self.cleanup_policy.split(',').any(|p| p == "compact")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn o(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_listed_config_renders_a_value_and_round_trips() {
        let c = LogConfig::default();
        for d in TOPIC_CONFIGS {
            let v = c
                .value_of(d.name)
                .unwrap_or_else(|| panic!("{} has no value", d.name));
            let again = c.with_overrides(&o(&[(d.name, &v)])).unwrap();
            assert_eq!(again, c, "{}", d.name);
        }
    }

    #[test]
    fn overrides_apply() {
        let c = LogConfig::default()
            .with_overrides(&o(&[
                ("segment.bytes", "1024"),
                ("retention.ms", "-1"),
                ("cleanup.policy", "delete,compact"),
            ]))
            .unwrap();
        assert_eq!(c.segment_bytes, 1024);
        assert_eq!(c.retention_ms, -1);
        assert_eq!(c.value_of("cleanup.policy").unwrap(), "compact,delete");
        assert!(c.deletes());
        assert!(c.compacts());
        assert!(!LogConfig::default().compacts());
    }

    #[test]
    fn unknown_and_invalid_values_are_refused() {
        let c = LogConfig::default();
        assert_eq!(
            c.with_overrides(&o(&[("nope", "1")])),
            Err(ConfigError::Unknown("nope".into()))
        );
        for (n, v) in [
            ("segment.bytes", "13"),
            ("segment.bytes", "abc"),
            ("max.message.bytes", "-1"),
            ("max.message.bytes", "999999999999"),
            ("retention.ms", "-2"),
            ("compression.type", "gzip"),
            ("message.timestamp.type", "LogAppendTime"),
            ("min.insync.replicas", "0"),
            ("cleanup.policy", "shred"),
            ("unclean.leader.election.enable", "true"),
            ("min.cleanable.dirty.ratio", "1.5"),
        ] {
            assert!(
                matches!(
                    c.with_overrides(&o(&[(n, v)])),
                    Err(ConfigError::Invalid { .. })
                ),
                "{n}={v}"
            );
        }
        assert_eq!(c.value_of("no.such"), None);
    }
}
