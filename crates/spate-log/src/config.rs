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
    def("compression.type", ConfigKind::String, "\"producer\" stores batches as the producer compressed them; \"uncompressed\", \"gzip\", \"snappy\", \"lz4\" or \"zstd\" makes the leader recompress every batch of another codec on append."),
    def("delete.retention.ms", ConfigKind::Long, "How long delete tombstones are kept on compacted topics."),
    def("file.delete.delay.ms", ConfigKind::Long, "Delay before a deleted segment's files are removed."),
    def("flush.messages", ConfigKind::Long, "Force an fsync after this many messages."),
    def("flush.ms", ConfigKind::Long, "Force an fsync after this many milliseconds; the default defers to the broker's flush interval."),
    def("index.interval.bytes", ConfigKind::Int, "Bytes of batches between two offset index entries."),
    def("max.compaction.lag.ms", ConfigKind::Long, "Longest a record stays uncompacted on a compacted topic: the active segment rolls at this age, and a log holding an older uncompacted record is cleaned whatever its dirty ratio."),
    def("max.message.bytes", ConfigKind::Int, "Largest record batch accepted, as sent and as stored after recompression."),
    def("message.timestamp.difference.max.ms", ConfigKind::Long, "Largest allowed difference between a batch's timestamps and the broker's clock; CreateTime topics only."),
    def("message.timestamp.type", ConfigKind::String, "\"CreateTime\" (records keep the producer's timestamps) or \"LogAppendTime\" (the leader stamps every batch with its clock on append)."),
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

/// The timestamp a record carries in the log (`message.timestamp.type`, KIP-32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    /// The producer's timestamps, checked against `message.timestamp.difference.max.ms`.
    CreateTime,
    /// The leader's clock at append: each batch's timestamp-type attribute is set and its max
    /// timestamp, which consumers read as every record's timestamp, becomes the append time.
    LogAppendTime,
}

impl TimestampType {
    /// The config value, as Kafka spells it.
    pub fn name(self) -> &'static str {
        match self {
            TimestampType::CreateTime => "CreateTime",
            TimestampType::LogAppendTime => "LogAppendTime",
        }
    }
}

/// A topic's `compression.type`: the codec its leader stores batches in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionType {
    /// Batches are stored as the producer compressed them.
    Producer,
    Uncompressed,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl CompressionType {
    const ALL: [CompressionType; 6] = [
        CompressionType::Producer,
        CompressionType::Uncompressed,
        CompressionType::Gzip,
        CompressionType::Snappy,
        CompressionType::Lz4,
        CompressionType::Zstd,
    ];

    /// The config value, as Kafka spells it.
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Producer => "producer",
            CompressionType::Uncompressed => "uncompressed",
            CompressionType::Gzip => "gzip",
            CompressionType::Snappy => "snappy",
            CompressionType::Lz4 => "lz4",
            CompressionType::Zstd => "zstd",
        }
    }

    /// The batch attribute codec id the leader stores in, `None` for `producer`.
    pub fn codec(self) -> Option<i16> {
        match self {
            CompressionType::Producer => None,
            CompressionType::Uncompressed => Some(0),
            CompressionType::Gzip => Some(1),
            CompressionType::Snappy => Some(2),
            CompressionType::Lz4 => Some(3),
            CompressionType::Zstd => Some(4),
        }
    }
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
    pub compression_type: CompressionType,
    pub delete_retention_ms: i64,
    pub min_cleanable_dirty_ratio: f64,
    pub min_compaction_lag_ms: i64,
    /// KIP-354; `i64::MAX` (Kafka's default) means no bound.
    pub max_compaction_lag_ms: i64,
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
            compression_type: CompressionType::Producer,
            delete_retention_ms: DAY_MS,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
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
                // Case-sensitive, as Kafka's validator is; "none" is the producer's spelling,
                // which Kafka refuses for a topic too.
                "compression.type" => {
                    c.compression_type = CompressionType::ALL
                        .into_iter()
                        .find(|t| t.name() == v)
                        .ok_or_else(|| {
                            invalid(
                                n,
                                v,
                                "must be one of uncompressed, zstd, lz4, snappy, gzip, producer",
                            )
                        })?
                }
                "delete.retention.ms" => c.delete_retention_ms = parse_i64(n, v, 0, i64::MAX)?,
                "file.delete.delay.ms" => c.file_delete_delay_ms = parse_i64(n, v, 0, i64::MAX)?,
                "flush.messages" => c.flush_messages = parse_i64(n, v, 1, i64::MAX)?,
                "flush.ms" => c.flush_ms = parse_i64(n, v, 0, i64::MAX)?,
                "index.interval.bytes" => c.index_interval_bytes = parse_u64(n, v, 0, int)?,
                "max.compaction.lag.ms" => c.max_compaction_lag_ms = parse_i64(n, v, 1, i64::MAX)?,
                "max.message.bytes" => {
                    c.max_message_bytes = parse_u64(n, v, 0, BATCH_BYTES_MAX as i64)
                        .map_err(|_| invalid(n, v, format!("must be in [0, {BATCH_BYTES_MAX}]")))?
                        as usize
                }
                "message.timestamp.difference.max.ms" => {
                    c.message_timestamp_difference_max_ms = parse_i64(n, v, 0, i64::MAX)?
                }
                // Case-sensitive, as Kafka's validator is.
                "message.timestamp.type" => {
                    c.message_timestamp_type = match v {
                        "CreateTime" => TimestampType::CreateTime,
                        "LogAppendTime" => TimestampType::LogAppendTime,
                        _ => {
                            return Err(invalid(
                                n,
                                v,
                                "must be \"CreateTime\" or \"LogAppendTime\"",
                            ))
                        }
                    }
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
        // Kafka's LogConfig.validateValues.
        if c.min_compaction_lag_ms > c.max_compaction_lag_ms {
            let name = if overrides.contains_key("max.compaction.lag.ms") {
                "max.compaction.lag.ms"
            } else {
                "min.compaction.lag.ms"
            };
            return Err(invalid(
                name,
                overrides.get(name).map_or("", String::as_str),
                format!(
                    "min.compaction.lag.ms ({}) is larger than max.compaction.lag.ms ({})",
                    c.min_compaction_lag_ms, c.max_compaction_lag_ms
                ),
            ));
        }
        Ok(c)
    }

    /// The age at which the active segment rolls (Kafka's `LogConfig.maxSegmentMs`): a
    /// compacted topic rolls by `max.compaction.lag.ms` too, since only rolled segments are
    /// cleaned.
    pub fn max_segment_ms(&self) -> i64 {
        if self.compacts() {
            self.segment_ms.min(self.max_compaction_lag_ms)
        } else {
            self.segment_ms
        }
    }

    /// The effective value of a known config, rendered as Kafka renders it.
    pub fn value_of(&self, name: &str) -> Option<String> {
        Some(match name {
            "cleanup.policy" => self.cleanup_policy.clone(),
            "compression.type" => self.compression_type.name().into(),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "file.delete.delay.ms" => self.file_delete_delay_ms.to_string(),
            "flush.messages" => self.flush_messages.to_string(),
            "flush.ms" => self.flush_ms.to_string(),
            "index.interval.bytes" => self.index_interval_bytes.to_string(),
            "max.compaction.lag.ms" => self.max_compaction_lag_ms.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "message.timestamp.difference.max.ms" => {
                self.message_timestamp_difference_max_ms.to_string()
            }
            "message.timestamp.type" => self.message_timestamp_type.name().into(),
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
    fn message_timestamp_type_takes_both_kafka_values() {
        let c = LogConfig::default();
        assert_eq!(c.message_timestamp_type, TimestampType::CreateTime);
        let lat = c
            .with_overrides(&o(&[("message.timestamp.type", "LogAppendTime")]))
            .unwrap();
        assert_eq!(lat.message_timestamp_type, TimestampType::LogAppendTime);
        assert_eq!(
            lat.value_of("message.timestamp.type").unwrap(),
            "LogAppendTime"
        );
        let back = lat
            .with_overrides(&o(&[("message.timestamp.type", "CreateTime")]))
            .unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn compression_type_takes_every_kafka_value() {
        let c = LogConfig::default();
        assert_eq!(c.compression_type, CompressionType::Producer);
        for t in CompressionType::ALL {
            let set = c
                .with_overrides(&o(&[("compression.type", t.name())]))
                .unwrap();
            assert_eq!(set.compression_type, t);
            assert_eq!(set.value_of("compression.type").unwrap(), t.name());
        }
        assert_eq!(CompressionType::Producer.codec(), None);
        assert_eq!(CompressionType::Uncompressed.codec(), Some(0));
        assert_eq!(CompressionType::Zstd.codec(), Some(4));
    }

    #[test]
    fn max_compaction_lag_bounds_the_segment_age_of_compacted_topics_only() {
        let c = LogConfig::default();
        assert_eq!(c.max_compaction_lag_ms, i64::MAX);
        assert_eq!(
            c.value_of("max.compaction.lag.ms").unwrap(),
            "9223372036854775807"
        );
        let lag = |policy: &str, lag: &str| {
            c.with_overrides(&o(&[
                ("cleanup.policy", policy),
                ("segment.ms", "60000"),
                ("max.compaction.lag.ms", lag),
            ]))
            .unwrap()
        };
        assert_eq!(lag("compact", "1000").max_segment_ms(), 1000);
        assert_eq!(lag("compact,delete", "1000").max_segment_ms(), 1000);
        assert_eq!(lag("compact", "90000").max_segment_ms(), 60000);
        assert_eq!(lag("delete", "1000").max_segment_ms(), 60000);
        assert_eq!(lag("compact", "1").max_compaction_lag_ms, 1);
    }

    #[test]
    fn min_compaction_lag_may_not_exceed_max_compaction_lag() {
        let c = LogConfig::default();
        let err = c
            .with_overrides(&o(&[
                ("min.compaction.lag.ms", "5000"),
                ("max.compaction.lag.ms", "4000"),
            ]))
            .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { name, .. } if name == "max.compaction.lag.ms"),
            "{err}"
        );
        let err = c
            .with_overrides(&o(&[("max.compaction.lag.ms", "4000")]))
            .unwrap()
            .with_overrides(&o(&[("min.compaction.lag.ms", "5000")]))
            .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { name, .. } if name == "min.compaction.lag.ms"),
            "{err}"
        );
        assert!(c
            .with_overrides(&o(&[
                ("min.compaction.lag.ms", "4000"),
                ("max.compaction.lag.ms", "4000"),
            ]))
            .is_ok());
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
            ("compression.type", "none"),
            ("compression.type", "GZIP"),
            ("compression.type", "brotli"),
            ("message.timestamp.type", "logappendtime"),
            ("message.timestamp.type", "NoTimestamp"),
            ("min.insync.replicas", "0"),
            ("cleanup.policy", "shred"),
            ("unclean.leader.election.enable", "true"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("max.compaction.lag.ms", "0"),
            ("max.compaction.lag.ms", "-1"),
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
