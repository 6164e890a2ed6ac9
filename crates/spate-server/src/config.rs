//! Server configuration, from (lowest to highest precedence) defaults, a TOML file,
//! `SPATE_*` environment variables and command-line overrides. Names are Kafka's where the
//! concept is Kafka's (`auto.create.topics.enable`, `log.retention.ms`, ...).
//!
//! Every source is first flattened to `name → string`, then parsed once against
//! [`BROKER_CONFIGS`], so an unknown or misspelled name is an error wherever it came from.

use spate_log::LogConfig;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A broker setting: its name, default and meaning.
pub struct BrokerConfigDef {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
    /// The topic config this broker setting provides the default for.
    pub topic_config: Option<&'static str>,
}

const fn def(name: &'static str, default: &'static str, doc: &'static str) -> BrokerConfigDef {
    BrokerConfigDef {
        name,
        default,
        doc,
        topic_config: None,
    }
}

const fn topic_default(
    name: &'static str,
    topic: &'static str,
    default: &'static str,
    doc: &'static str,
) -> BrokerConfigDef {
    BrokerConfigDef {
        name,
        default,
        doc,
        topic_config: Some(topic),
    }
}

/// Every setting `spate serve` accepts.
pub const BROKER_CONFIGS: &[BrokerConfigDef] = &[
    def("node.id", "1", "This node's id."),
    def("data.dir", "./spate-data", "Directory holding metadata and partition logs."),
    def("kafka.listen", "127.0.0.1:9092", "Address of the Kafka listener."),
    def("http.listen", "127.0.0.1:9644", "Address of the HTTP listener (/metrics, /health); empty: no HTTP listener."),
    def("advertised.host", "", "Host clients are told to connect to; empty means the Kafka listener's address."),
    def("broker.rack", "", "Rack of this broker; empty means none."),
    def("controller.quorum.voters", "", "The controller voters, id@host:port separated by commas (every node of the cluster, the same list on each). Empty: a single-node cluster with no controller listener."),
    def("controller.listen", "", "Address of the controller listener; empty means this node's entry in controller.quorum.voters."),
    def("broker.heartbeat.interval.ms", "400", "How often a broker tells the active controller it is alive."),
    def("broker.session.timeout.ms", "2400", "A broker silent for this long is fenced: its leaderships move to other in-sync replicas."),
    def("replica.lag.time.max.ms", "10000", "A follower that has not caught up with the leader's log end for this long leaves the ISR."),
    def("replica.fetch.wait.max.ms", "500", "Longest a follower's fetch waits at the leader for new records."),
    def("replica.fetch.max.bytes", "1048576", "Bytes a follower asks for per partition in one fetch (at least one batch is always returned)."),
    def("replica.fetch.response.max.bytes", "10485760", "Bytes a follower asks for in one fetch response."),
    def("request.timeout.ms", "30000", "Longest this broker waits for another broker's answer (transaction markers, transaction verification); a peer the controller fences, or that registers again after a restart, fails its requests at once."),
    def("replica.socket.timeout.ms", "30000", "A follower that gets no answer from its leader this long (beyond replica.fetch.wait.max.ms) drops the connection and opens a new one."),
    def("auto.leader.rebalance.enable", "true", "Move leadership back to each partition's preferred replica once it is in sync again."),
    def("leader.imbalance.check.interval.seconds", "300", "How often the active controller looks for leadership to move back to preferred replicas."),
    def("offsets.topic.replication.factor", "3", "Replication factor of __consumer_offsets, capped at the number of live brokers when it is created."),
    def("controlled.shutdown.timeout.ms", "30000", "Longest a stopping node waits for the controller to move its leaderships away."),
    def("auto.create.topics.enable", "true", "Create a topic when a client asks for metadata of an unknown one."),
    def("num.partitions", "1", "Partitions of an auto-created topic, and of CreateTopics asking for the default."),
    def("default.replication.factor", "1", "Replication factor when a client asks for the default."),
    def("delete.topic.enable", "true", "Allow DeleteTopics."),
    def("metadata.fenced.broker.retention.ms", "900000", "How long Metadata answers still list a fenced (stopped or unreachable) broker, so that clients retry it and look their coordinators up again instead of waiting for it (0: only live brokers, as Kafka)."),
    def("socket.request.max.bytes", "104857600", "Largest request frame; larger frames close the connection."),
    def("queued.max.request.bytes", "524288000", "Request bytes held in memory across all connections before reading pauses."),
    def("log.flush.interval.ms", "1000", "Longest time an acks=0/1 write stays in the page cache before fsync."),
    def("acks.all.fsync", "true", "Answer acks=all only after fsync. false is the relaxed mode: acknowledged once in the operating system, fsynced within log.flush.interval.ms."),
    def("log.retention.check.interval.ms", "300000", "How often retention deletes old segments."),
    def("log.cleaner.backoff.ms", "15000", "How often the log cleaner looks for compacted topics to clean."),
    def("group.initial.rebalance.delay.ms", "3000", "How long a new group waits for more members before its first rebalance completes (each join extends it, up to the rebalance timeout)."),
    def("group.min.session.timeout.ms", "6000", "Smallest session timeout a member may ask for."),
    def("group.max.session.timeout.ms", "1800000", "Largest session timeout a member may ask for."),
    def("group.max.size", "2147483647", "Most members a group may have."),
    def("offset.metadata.max.bytes", "4096", "Longest metadata string an offset commit may carry."),
    def("offsets.retention.minutes", "10080", "How long an empty group's committed offsets are kept."),
    def("offsets.retention.check.interval.ms", "600000", "How often expired offsets are removed."),
    def("offsets.topic.num.partitions", "50", "Partitions of __consumer_offsets (fixed once the topic exists)."),
    def("offsets.topic.segment.bytes", "104857600", "Segment size of __consumer_offsets."),
    def("transaction.state.log.num.partitions", "50", "Partitions of __transaction_state (fixed once the topic exists)."),
    def("transaction.state.log.replication.factor", "3", "Replication factor of __transaction_state, capped at the number of live brokers when it is created."),
    def("transaction.state.log.min.isr", "2", "min.insync.replicas of __transaction_state (capped at its replication factor)."),
    def("transaction.state.log.segment.bytes", "104857600", "Segment size of __transaction_state."),
    def("transaction.max.timeout.ms", "900000", "Largest transaction.timeout.ms a producer may ask for."),
    def("transactional.id.expiration.ms", "604800000", "A transactional id unused this long (no transaction open) is removed."),
    def("transaction.abort.timed.out.transaction.cleanup.interval.ms", "10000", "How often transactions past their timeout are aborted (and expired transactional ids removed)."),
    topic_default("message.max.bytes", "max.message.bytes", "1048588", "Largest record batch accepted."),
    topic_default("log.segment.bytes", "segment.bytes", "1073741824", "Size at which a segment is rolled."),
    topic_default("log.roll.ms", "segment.ms", "604800000", "Age at which a segment is rolled."),
    topic_default("log.retention.ms", "retention.ms", "604800000", "Age after which segments are deleted; -1 keeps them forever."),
    topic_default("log.retention.bytes", "retention.bytes", "-1", "Partition size above which old segments are deleted; -1 means no limit."),
    topic_default("log.index.interval.bytes", "index.interval.bytes", "4096", "Bytes between offset index entries."),
    topic_default("log.cleanup.policy", "cleanup.policy", "delete", "Default cleanup policy."),
    topic_default("min.insync.replicas", "min.insync.replicas", "", "In-sync replicas needed for acks=all. Empty (the default): 2 for a topic created with replication factor 3 or more, 1 below that."),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown setting '{name}' (from {source_name})")]
    Unknown { name: String, source_name: String },
    #[error("invalid value '{value}' for '{name}': {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// How this node takes part in a cluster. A single node has no voters and no listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `controller.quorum.voters`: node id → controller address (host:port).
    pub voters: BTreeMap<i32, String>,
    /// `controller.listen`
    pub controller_listen: Option<SocketAddr>,
    pub heartbeat_interval_ms: u64,
    pub session_timeout_ms: u64,
    pub replica_lag_time_max_ms: u64,
    pub replica_fetch_wait_max_ms: u64,
    pub replica_fetch_max_bytes: usize,
    pub replica_fetch_response_max_bytes: usize,
    pub replica_socket_timeout_ms: u64,
    pub auto_leader_rebalance: bool,
    pub leader_imbalance_check_interval: Duration,
    /// Capped at the live brokers when the topic is created.
    pub offsets_topic_replication_factor: i16,
    pub controlled_shutdown_timeout: Duration,
}

/// Parses `controller.quorum.voters`: `1@host:port,2@host:port,...`.
fn parse_voters(raw: &str) -> Result<BTreeMap<i32, String>, ConfigError> {
    let name = "controller.quorum.voters";
    let mut voters = BTreeMap::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry
            .split_once('@')
            .ok_or_else(|| invalid(name, raw, format!("'{entry}' is not id@host:port")))?;
        let id: i32 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| invalid(name, raw, format!("'{id}' is not a node id (0 or more)")))?;
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(invalid(name, raw, format!("'{addr}' is not host:port")));
        }
        if voters.insert(id, addr.trim().to_owned()).is_some() {
            return Err(invalid(name, raw, format!("node {id} is listed twice")));
        }
    }
    Ok(voters)
}

fn cluster_settings(
    values: &BTreeMap<String, String>,
    node_id: i32,
) -> Result<ClusterSettings, ConfigError> {
    let get = |name: &str| values.get(name).map(String::as_str).unwrap_or("");
    let voters = parse_voters(get("controller.quorum.voters"))?;
    if !voters.is_empty() && !voters.contains_key(&node_id) {
        return Err(invalid(
            "controller.quorum.voters",
            get("controller.quorum.voters"),
            format!("node.id {node_id} is not in the list; every node of a cluster is a voter"),
        ));
    }
    let controller_listen = match get("controller.listen") {
        "" => match voters.get(&node_id) {
            // Listen where the other voters will dial, when that is an IP address.
            Some(addr) if voters.len() > 1 => Some(addr.parse().map_err(|_| {
                invalid(
                    "controller.listen",
                    "",
                    format!("this node's voter address '{addr}' is a host name; set controller.listen to an IP address and port"),
                )
            })?),
            _ => None,
        },
        _ => Some(parse_addr(values, "controller.listen")?),
    };
    let ms = |name: &str, min: i64| parse_num(values, name, min, i64::MAX).map(|v| v as u64);
    let heartbeat_interval_ms = ms("broker.heartbeat.interval.ms", 1)?;
    let session_timeout_ms = ms("broker.session.timeout.ms", 1)?;
    if session_timeout_ms <= heartbeat_interval_ms {
        return Err(invalid(
            "broker.session.timeout.ms",
            get("broker.session.timeout.ms"),
            format!("must exceed broker.heartbeat.interval.ms ({heartbeat_interval_ms})"),
        ));
    }
    Ok(ClusterSettings {
        voters,
        controller_listen,
        heartbeat_interval_ms,
        session_timeout_ms,
        replica_lag_time_max_ms: ms("replica.lag.time.max.ms", 1)?,
        replica_fetch_wait_max_ms: ms("replica.fetch.wait.max.ms", 0)?,
        replica_socket_timeout_ms: ms("replica.socket.timeout.ms", 1)?,
        replica_fetch_max_bytes: parse_num(values, "replica.fetch.max.bytes", 1, i32::MAX as i64)?
            as usize,
        replica_fetch_response_max_bytes: parse_num(
            values,
            "replica.fetch.response.max.bytes",
            1,
            i32::MAX as i64,
        )? as usize,
        auto_leader_rebalance: parse_bool(values, "auto.leader.rebalance.enable")?,
        leader_imbalance_check_interval: Duration::from_secs(ms(
            "leader.imbalance.check.interval.seconds",
            1,
        )?),
        offsets_topic_replication_factor: parse_num(
            values,
            "offsets.topic.replication.factor",
            1,
            i16::MAX as i64,
        )? as i16,
        controlled_shutdown_timeout: Duration::from_millis(ms(
            "controlled.shutdown.timeout.ms",
            0,
        )?),
    })
}

/// The parsed configuration of a node.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    pub kafka_listen: SocketAddr,
    /// `http.listen`; `None` (the setting empty): no HTTP listener.
    pub http_listen: Option<SocketAddr>,
    pub advertised_host: Option<String>,
    pub rack: Option<String>,
    /// The controller quorum and replication settings.
    pub cluster: ClusterSettings,
    pub auto_create_topics: bool,
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    /// `min.insync.replicas` as set by the operator; `None` (the default): decided per topic
    /// from its replication factor when it is created.
    pub min_insync_replicas: Option<i32>,
    pub delete_topic_enable: bool,
    /// `metadata.fenced.broker.retention.ms`
    pub fenced_broker_retention_ms: i64,
    pub request_bytes_max: usize,
    pub queued_request_bytes_max: usize,
    /// `request.timeout.ms`: a request to another broker.
    pub peer_request_timeout_ms: u64,
    pub flush_interval: Duration,
    pub acks_all_fsync: bool,
    pub retention_check_interval: Duration,
    /// Pause between log cleaner passes over the compacted partitions.
    pub cleaner_backoff: Duration,
    /// Group coordinator settings (`group.*`, `offsets.*`).
    pub groups: spate_kafka::GroupConfig,
    /// Transaction coordinator settings (`transaction.*`, `transactional.id.*`).
    pub txns: spate_kafka::TxnConfig,
    /// Topic defaults, from the `log.*` settings.
    pub log_defaults: LogConfig,
    /// Every setting's effective value, for display (DescribeConfigs on the broker).
    pub values: BTreeMap<String, String>,
}

impl ServerConfig {
    /// Builds the configuration from a TOML file (optional), environment variables
    /// (`SPATE_LOG_RETENTION_MS` → `log.retention.ms`) and explicit overrides (highest).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<ServerConfig, ConfigError> {
        let mut values: BTreeMap<String, String> = BROKER_CONFIGS
            .iter()
            .map(|d| (d.name.to_owned(), d.default.to_owned()))
            .collect();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            for (name, value) in parse_toml(&text).map_err(|reason| ConfigError::File {
                path: path.to_owned(),
                reason,
            })? {
                set(&mut values, name, value, &path.display().to_string())?;
            }
        }
        for (key, value) in env {
            let Some(rest) = key.strip_prefix("SPATE_") else {
                continue;
            };
            let name = rest.to_ascii_lowercase().replace('_', ".");
            // SPATE_LOG (the log filter) and the like are not settings.
            if values.contains_key(&name) {
                set(
                    &mut values,
                    name,
                    value,
                    &format!("environment variable {key}"),
                )?;
            }
        }
        for (name, value) in overrides {
            set(&mut values, name.clone(), value.clone(), "command line")?;
        }
        Self::parse(values)
    }

    fn parse(values: BTreeMap<String, String>) -> Result<ServerConfig, ConfigError> {
        let get = |name: &str| values.get(name).map(String::as_str).unwrap_or("");
        let mut topic_defaults = BTreeMap::new();
        for d in BROKER_CONFIGS {
            // An empty default (min.insync.replicas) is decided per topic at creation.
            match d.topic_config {
                Some(topic) if !get(d.name).is_empty() => {
                    topic_defaults.insert(topic.to_owned(), get(d.name).to_owned());
                }
                _ => {}
            }
        }
        let log_defaults = LogConfig::default()
            .with_overrides(&topic_defaults)
            .map_err(|e| ConfigError::Invalid {
                name: "log.*".into(),
                value: String::new(),
                reason: e.to_string(),
            })?;
        let non_empty = |name: &str| Some(get(name).to_owned()).filter(|s| !s.is_empty());
        let node_id = parse_num(&values, "node.id", 0, i32::MAX as i64)? as i32;
        let config = ServerConfig {
            node_id,
            cluster: cluster_settings(&values, node_id)?,
            data_dir: PathBuf::from(get("data.dir")),
            kafka_listen: parse_addr(&values, "kafka.listen")?,
            http_listen: match values.get("http.listen").map(String::as_str) {
                Some("") => None,
                _ => Some(parse_addr(&values, "http.listen")?),
            },
            advertised_host: non_empty("advertised.host"),
            rack: non_empty("broker.rack"),
            fenced_broker_retention_ms: parse_num(
                &values,
                "metadata.fenced.broker.retention.ms",
                0,
                i64::MAX / 2,
            )?,
            auto_create_topics: parse_bool(&values, "auto.create.topics.enable")?,
            num_partitions: parse_num(
                &values,
                "num.partitions",
                1,
                spate_types::limits::PARTITIONS_PER_TOPIC_MAX as i64,
            )? as i32,
            default_replication_factor: parse_num(
                &values,
                "default.replication.factor",
                1,
                i16::MAX as i64,
            )? as i16,
            delete_topic_enable: parse_bool(&values, "delete.topic.enable")?,
            min_insync_replicas: non_empty("min.insync.replicas")
                .map(|_| log_defaults.min_insync_replicas),
            request_bytes_max: parse_num(
                &values,
                "socket.request.max.bytes",
                1024,
                spate_types::limits::FRAME_BYTES_MAX as i64,
            )? as usize,
            queued_request_bytes_max: parse_num(
                &values,
                "queued.max.request.bytes",
                1 << 20,
                i64::MAX,
            )? as usize,
            peer_request_timeout_ms: parse_num(&values, "request.timeout.ms", 1, i32::MAX as i64)?
                as u64,
            flush_interval: Duration::from_millis(parse_num(
                &values,
                "log.flush.interval.ms",
                1,
                i64::MAX,
            )? as u64),
            acks_all_fsync: parse_bool(&values, "acks.all.fsync")?,
            retention_check_interval: Duration::from_millis(parse_num(
                &values,
                "log.retention.check.interval.ms",
                1,
                i64::MAX,
            )? as u64),
            cleaner_backoff: Duration::from_millis(parse_num(
                &values,
                "log.cleaner.backoff.ms",
                1,
                i64::MAX,
            )? as u64),
            groups: group_config(&values)?,
            txns: txn_config(&values)?,
            log_defaults,
            values,
        };
        Ok(config)
    }
}

fn group_config(
    values: &BTreeMap<String, String>,
) -> Result<spate_kafka::GroupConfig, ConfigError> {
    let num = |name: &str, min: i64, max: i64| parse_num(values, name, min, max);
    let min_session = num("group.min.session.timeout.ms", 1, i32::MAX as i64)? as i32;
    let max_session = num("group.max.session.timeout.ms", 1, i32::MAX as i64)? as i32;
    if min_session > max_session {
        return Err(ConfigError::Invalid {
            name: "group.min.session.timeout.ms".into(),
            value: min_session.to_string(),
            reason: format!("must not exceed group.max.session.timeout.ms ({max_session})"),
        });
    }
    Ok(spate_kafka::GroupConfig {
        settings: spate_coordinator::GroupSettings {
            min_session_timeout_ms: min_session,
            max_session_timeout_ms: max_session,
            initial_rebalance_delay_ms: num(
                "group.initial.rebalance.delay.ms",
                0,
                i32::MAX as i64,
            )?,
            max_size: num("group.max.size", 1, i32::MAX as i64)? as usize,
            offset_metadata_max_bytes: num("offset.metadata.max.bytes", 0, i32::MAX as i64)?
                as usize,
            offsets_retention_ms: num("offsets.retention.minutes", 1, i64::MAX / 60_000)? * 60_000,
        },
        offsets_topic_replication_factor: num(
            "offsets.topic.replication.factor",
            1,
            i16::MAX as i64,
        )? as i16,
        offsets_topic_partitions: num(
            "offsets.topic.num.partitions",
            1,
            spate_types::limits::PARTITIONS_PER_TOPIC_MAX as i64,
        )? as i32,
        offsets_topic_segment_bytes: num("offsets.topic.segment.bytes", 1 << 14, i32::MAX as i64)?
            as u64,
        offsets_retention_check: Duration::from_millis(num(
            "offsets.retention.check.interval.ms",
            1,
            i64::MAX,
        )? as u64),
    })
}

fn txn_config(values: &BTreeMap<String, String>) -> Result<spate_kafka::TxnConfig, ConfigError> {
    let num = |name: &str, min: i64, max: i64| parse_num(values, name, min, max);
    Ok(spate_kafka::TxnConfig {
        settings: spate_coordinator::txn::TxnSettings {
            max_timeout_ms: num("transaction.max.timeout.ms", 1, i32::MAX as i64)? as i32,
            id_expiration_ms: num("transactional.id.expiration.ms", 1, i64::MAX / 2)?,
            partition_count: num(
                "transaction.state.log.num.partitions",
                1,
                spate_types::limits::PARTITIONS_PER_TOPIC_MAX as i64,
            )? as i32,
        },
        state_log_replication_factor: num(
            "transaction.state.log.replication.factor",
            1,
            i16::MAX as i64,
        )? as i16,
        state_log_min_isr: num("transaction.state.log.min.isr", 1, i32::MAX as i64)? as i32,
        state_log_segment_bytes: num(
            "transaction.state.log.segment.bytes",
            1 << 14,
            i32::MAX as i64,
        )? as u64,
        abort_check: Duration::from_millis(num(
            "transaction.abort.timed.out.transaction.cleanup.interval.ms",
            1,
            i64::MAX,
        )? as u64),
    })
}

fn set(
    values: &mut BTreeMap<String, String>,
    name: String,
    value: String,
    source_name: &str,
) -> Result<(), ConfigError> {
    if !values.contains_key(&name) {
        return Err(ConfigError::Unknown {
            name,
            source_name: source_name.to_owned(),
        });
    }
    values.insert(name, value);
    Ok(())
}

/// Flattens a TOML document to dotted names: `"log.retention.ms" = 1000` and
/// `[log.retention] ms = 1000` both give `log.retention.ms`.
fn parse_toml(text: &str) -> Result<Vec<(String, String)>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut out = Vec::new();
    flatten("", &toml::Value::Table(table), &mut out)?;
    Ok(out)
}

fn flatten(
    prefix: &str,
    value: &toml::Value,
    out: &mut Vec<(String, String)>,
) -> Result<(), String> {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, value, out)?;
            }
        }
        toml::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        toml::Value::Integer(i) => out.push((prefix.to_owned(), i.to_string())),
        toml::Value::Boolean(b) => out.push((prefix.to_owned(), b.to_string())),
        toml::Value::Float(f) => out.push((prefix.to_owned(), f.to_string())),
        other => return Err(format!("'{prefix}': unsupported value {other}")),
    }
    Ok(())
}

fn invalid(name: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn parse_num(
    values: &BTreeMap<String, String>,
    name: &str,
    min: i64,
    max: i64,
) -> Result<i64, ConfigError> {
    let raw = values.get(name).map(String::as_str).unwrap_or("");
    let n: i64 = raw
        .trim()
        .parse()
        .map_err(|_| invalid(name, raw, "not an integer"))?;
    if n < min || n > max {
        return Err(invalid(
            name,
            raw,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(n)
}

fn parse_bool(values: &BTreeMap<String, String>, name: &str) -> Result<bool, ConfigError> {
    let raw = values.get(name).map(String::as_str).unwrap_or("");
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(name, raw, "must be true or false")),
    }
}

fn parse_addr(values: &BTreeMap<String, String>, name: &str) -> Result<SocketAddr, ConfigError> {
    let raw = values.get(name).map(String::as_str).unwrap_or("");
    // Accept Kafka's listener form too: PLAINTEXT://host:port.
    let addr = raw.strip_prefix("PLAINTEXT://").unwrap_or(raw);
    addr.parse().map_err(|_| {
        invalid(
            name,
            raw,
            "expected host:port with an IP address, e.g. 127.0.0.1:9092",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(
        file: Option<&str>,
        env: &[(&str, &str)],
        over: &[(&str, &str)],
    ) -> Result<ServerConfig, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spate.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).expect("write");
        }
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let over: Vec<_> = over
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ServerConfig::load(file.map(|_| path.as_path()), env, &over)
    }

    #[test]
    fn defaults_are_kafkas() {
        let c = load(None, &[], &[]).expect("defaults");
        assert!(c.auto_create_topics);
        assert_eq!(c.num_partitions, 1);
        assert_eq!(c.request_bytes_max, 104_857_600);
        assert_eq!(c.kafka_listen.to_string(), "127.0.0.1:9092");
        assert_eq!(c.http_listen, Some("127.0.0.1:9644".parse().expect("addr")));
        assert_eq!(c.data_dir, PathBuf::from("./spate-data"));
        assert_eq!(c.log_defaults.retention_ms, 604_800_000);
        assert_eq!(c.cleaner_backoff, Duration::from_millis(15_000));
        assert!(c.acks_all_fsync);
    }

    #[test]
    fn min_insync_replicas_is_unset_unless_the_operator_sets_it() {
        let c = load(None, &[], &[]).expect("defaults");
        assert_eq!(c.min_insync_replicas, None, "decided per topic at creation");
        assert_eq!(c.log_defaults.min_insync_replicas, 1);
        let c = load(None, &[], &[("min.insync.replicas", "3")]).expect("set");
        assert_eq!(c.min_insync_replicas, Some(3));
        assert_eq!(c.log_defaults.min_insync_replicas, 3);
        assert!(load(None, &[], &[("min.insync.replicas", "0")]).is_err());
    }

    #[test]
    fn precedence_is_flag_over_env_over_file() {
        let file = "\"num.partitions\" = 3\n\"log.retention.ms\" = 1000\n[auto.create.topics]\nenable = false\n";
        let c = load(Some(file), &[("SPATE_NUM_PARTITIONS", "4")], &[]).expect("file+env");
        assert_eq!(c.num_partitions, 4, "env beats file");
        assert_eq!(
            c.log_defaults.retention_ms, 1000,
            "file applies to topic defaults"
        );
        assert!(
            !c.auto_create_topics,
            "nested tables flatten to dotted names"
        );
        let c = load(
            Some(file),
            &[("SPATE_NUM_PARTITIONS", "4")],
            &[("num.partitions", "5")],
        )
        .expect("all");
        assert_eq!(c.num_partitions, 5, "flag beats env");
    }

    #[test]
    fn unknown_and_invalid_settings_are_clear_errors() {
        let e = load(Some("\"num.partitons\" = 3"), &[], &[]).expect_err("typo");
        assert!(e.to_string().contains("num.partitons"), "{e}");
        let e = load(None, &[], &[("num.partitions", "-2")]).expect_err("negative");
        assert!(e.to_string().contains("between"), "{e}");
        let e = load(None, &[], &[("auto.create.topics.enable", "yes")]).expect_err("bool");
        assert!(e.to_string().contains("true or false"), "{e}");
        let e = load(None, &[], &[("kafka.listen", "nowhere")]).expect_err("addr");
        assert!(e.to_string().contains("host:port"), "{e}");
        let e = load(Some("this is = = not toml"), &[], &[]).expect_err("toml");
        assert!(matches!(e, ConfigError::File { .. }), "{e}");
        // Environment variables that are not settings are ignored (SPATE_LOG is the log filter).
        assert!(load(None, &[("SPATE_LOG", "debug")], &[]).is_ok());
    }

    #[test]
    fn kafka_listener_syntax_is_accepted() {
        let c = load(
            None,
            &[],
            &[("kafka.listen", "PLAINTEXT://127.0.0.1:19092")],
        )
        .expect("listener");
        assert_eq!(c.kafka_listen.port(), 19092);
    }

    #[test]
    fn an_empty_http_listen_turns_the_http_listener_off() {
        let c = load(None, &[], &[("http.listen", "")]).expect("config");
        assert_eq!(c.http_listen, None);
        let e = load(None, &[], &[("http.listen", "nowhere")])
            .map(|_| ())
            .expect_err("refused");
        assert!(e.to_string().contains("http.listen"), "{e}");
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;

    fn load(over: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
        let over: Vec<(String, String)> = over
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ServerConfig::load(None, std::iter::empty(), &over)
    }

    #[test]
    fn single_node_by_default() {
        let c = load(&[]).expect("defaults");
        assert!(c.cluster.voters.is_empty());
        assert_eq!(c.cluster.controller_listen, None);
        assert_eq!(c.cluster.session_timeout_ms, 2400);
        assert_eq!(c.cluster.heartbeat_interval_ms, 400);
    }

    #[test]
    fn voters_parse_and_listen_defaults_to_own_entry() {
        let c = load(&[
            ("node.id", "2"),
            (
                "controller.quorum.voters",
                "1@127.0.0.1:9093, 2@127.0.0.2:9093,3@127.0.0.3:9093",
            ),
        ])
        .expect("voters");
        assert_eq!(c.cluster.voters.len(), 3);
        assert_eq!(c.cluster.voters[&2], "127.0.0.2:9093");
        assert_eq!(
            c.cluster.controller_listen,
            Some("127.0.0.2:9093".parse().expect("addr"))
        );
        let c = load(&[
            ("node.id", "1"),
            ("controller.quorum.voters", "1@ctl-1:9093,2@ctl-2:9093"),
            ("controller.listen", "0.0.0.0:9093"),
        ])
        .expect("host names with an explicit listener");
        assert_eq!(c.cluster.voters[&2], "ctl-2:9093");
    }

    #[test]
    fn bad_voter_lists_are_clear_errors() {
        for (voters, expect) in [
            ("1@127.0.0.1:9093,x@h:1", "not a node id"),
            ("1@127.0.0.1:9093,2127.0.0.1:9093", "id@host:port"),
            ("1@127.0.0.1", "host:port"),
            ("1@127.0.0.1:9093,1@127.0.0.1:9094", "listed twice"),
            ("2@127.0.0.1:9093,3@127.0.0.1:9094", "not in the list"),
            ("1@ctl-1:9093,2@ctl-2:9093", "host name"),
        ] {
            let e =
                load(&[("node.id", "1"), ("controller.quorum.voters", voters)]).expect_err(voters);
            assert!(e.to_string().contains(expect), "{voters}: {e}");
        }
        let e = load(&[
            ("broker.heartbeat.interval.ms", "3000"),
            ("broker.session.timeout.ms", "3000"),
        ])
        .expect_err("session not above heartbeat");
        assert!(
            e.to_string().contains("broker.heartbeat.interval.ms"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod group_tests {
    use super::*;

    fn load(over: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
        let over: Vec<(String, String)> = over
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ServerConfig::load(None, std::iter::empty(), &over)
    }

    #[test]
    fn group_settings_have_kafka_defaults_and_are_checked() {
        let c = load(&[]).expect("defaults");
        let g = &c.groups;
        assert_eq!(g.settings.initial_rebalance_delay_ms, 3000);
        assert_eq!(g.settings.min_session_timeout_ms, 6000);
        assert_eq!(g.settings.max_session_timeout_ms, 1_800_000);
        assert_eq!(g.settings.offsets_retention_ms, 10080 * 60_000);
        assert_eq!(g.offsets_topic_partitions, 50);
        let c = load(&[
            ("group.initial.rebalance.delay.ms", "0"),
            ("offsets.retention.minutes", "2"),
        ])
        .expect("overrides");
        assert_eq!(c.groups.settings.initial_rebalance_delay_ms, 0);
        assert_eq!(c.groups.settings.offsets_retention_ms, 120_000);
        let err = load(&[
            ("group.min.session.timeout.ms", "60000"),
            ("group.max.session.timeout.ms", "1000"),
        ])
        .expect_err("min above max");
        assert!(
            err.to_string().contains("group.max.session.timeout.ms"),
            "{err}"
        );
        assert!(load(&[("offsets.topic.num.partitions", "0")]).is_err());
    }

    #[test]
    fn transaction_settings_have_kafka_defaults_and_are_checked() {
        let t = load(&[]).expect("defaults").txns;
        assert_eq!(t.settings.max_timeout_ms, 900_000);
        assert_eq!(t.settings.id_expiration_ms, 604_800_000);
        assert_eq!(t.settings.partition_count, 50);
        assert_eq!(t.state_log_replication_factor, 3);
        assert_eq!(t.state_log_min_isr, 2);
        assert_eq!(t.abort_check, Duration::from_secs(10));
        let t = load(&[
            ("transaction.max.timeout.ms", "1000"),
            ("transaction.state.log.num.partitions", "3"),
        ])
        .expect("overrides")
        .txns;
        assert_eq!(
            (t.settings.max_timeout_ms, t.settings.partition_count),
            (1000, 3)
        );
        assert!(load(&[("transaction.state.log.num.partitions", "0")]).is_err());
        assert!(load(&[("transaction.max.timeout.ms", "-1")]).is_err());
    }
}
