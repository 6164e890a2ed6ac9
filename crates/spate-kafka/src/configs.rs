//! Topic and broker configs as Kafka's config APIs present them, shared by CreateTopics (v5+
//! echoes the new topic's configs), DescribeConfigs, AlterConfigs and IncrementalAlterConfigs.
//!
//! A topic stores only its overrides; every other value comes from the broker's `log.*`
//! defaults. Each described config says where its value comes from (Kafka's `ConfigSource`)
//! and, strongest first, every level that defines it (its synonyms), as Kafka does: the topic
//! override (`DYNAMIC_TOPIC_CONFIG`), the broker setting when it differs from Kafka's default
//! (`STATIC_BROKER_CONFIG`), and Kafka's default (`DEFAULT_CONFIG`).
//!
//! Alterations compute the topic's complete new override map, validate it against the log's
//! own rules ([`LogConfig::with_overrides`]) and commit it as one controller command, so a
//! topic never holds a config its logs would refuse.
//!
//! Groups (KIP-848 dynamic group configs) and brokers (dynamic broker configs, per broker or
//! cluster-wide) keep their overrides in the controller too ([`alter_stored_configs`]): group
//! configs are validated as Kafka 4.0's `GroupConfig` does and steer nothing (Spate's groups
//! use the classic protocol); dynamic broker configs are Kafka's dynamically updatable ones, of
//! which the `log.*` topic defaults take effect ([`effective_log_defaults`]) and the others are
//! stored and described only.

use crate::broker::{Broker, BrokerConfig};
use crate::errors;
use crate::topics::ApiError;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use spate_controller::{ConfigMap, MetadataCommand, MetadataError, MetadataImage, MetadataOutcome};
use spate_log::{ConfigKind, LogConfig, TOPIC_CONFIGS};
use spate_types::{validate_topic_name, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// Kafka's `ConfigResource.Type` ids.
pub(crate) const RESOURCE_TOPIC: i8 = 2;
pub(crate) const RESOURCE_BROKER: i8 = 4;

/// Kafka refuses config values longer than this (they are stored with a 16-bit length).
pub(crate) const CONFIG_VALUE_BYTES_MAX: usize = i16::MAX as usize;

/// Where a described config value comes from (Kafka's `DescribeConfigsResponse.ConfigSource`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConfigSource {
    /// A topic override.
    DynamicTopic,
    /// Set in the broker's configuration to something other than Kafka's default.
    StaticBroker,
    /// Kafka's default.
    Default,
    /// A dynamic broker config of this broker (set with the broker id as resource name).
    DynamicBroker,
    /// A cluster-wide dynamic broker config (set with the empty resource name).
    DynamicDefaultBroker,
    /// A group override (KIP-848 dynamic group configs).
    Group,
}

impl ConfigSource {
    pub fn id(self) -> i8 {
        match self {
            ConfigSource::DynamicTopic => 1,
            ConfigSource::DynamicBroker => 2,
            ConfigSource::DynamicDefaultBroker => 3,
            ConfigSource::StaticBroker => 4,
            ConfigSource::Default => 5,
            ConfigSource::Group => 8,
        }
    }
}

/// Kafka's `ConfigType` id for a config kind (DescribeConfigs v3+).
pub(crate) fn config_type(kind: ConfigKind) -> i8 {
    match kind {
        ConfigKind::Boolean => 1,
        ConfigKind::String => 2,
        ConfigKind::Int => 3,
        ConfigKind::Long => 5,
        ConfigKind::Double => 6,
        ConfigKind::List => 7,
    }
}

/// One level that defines a config, for DescribeConfigs' synonyms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Synonym {
    pub name: &'static str,
    pub value: String,
    pub source: ConfigSource,
}

/// A config as described to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConfigEntry {
    pub name: &'static str,
    pub value: String,
    pub source: ConfigSource,
    pub read_only: bool,
    pub kind: ConfigKind,
    pub doc: &'static str,
    /// Strongest first; the first one gives `value` and `source`.
    pub synonyms: Vec<Synonym>,
}

/// The broker setting that provides a topic config's default, named as Kafka names it.
pub(crate) fn broker_synonym(topic_config: &str) -> Option<&'static str> {
    Some(match topic_config {
        "cleanup.policy" => "log.cleanup.policy",
        "compression.type" => "compression.type",
        "delete.retention.ms" => "log.cleaner.delete.retention.ms",
        "file.delete.delay.ms" => "log.segment.delete.delay.ms",
        "flush.messages" => "log.flush.interval.messages",
        "flush.ms" => "log.flush.interval.ms",
        "index.interval.bytes" => "log.index.interval.bytes",
        "max.compaction.lag.ms" => "log.cleaner.max.compaction.lag.ms",
        "max.message.bytes" => "message.max.bytes",
        "message.timestamp.difference.max.ms" => "log.message.timestamp.difference.max.ms",
        "message.timestamp.type" => "log.message.timestamp.type",
        "min.cleanable.dirty.ratio" => "log.cleaner.min.cleanable.ratio",
        "min.compaction.lag.ms" => "log.cleaner.min.compaction.lag.ms",
        "min.insync.replicas" => "min.insync.replicas",
        "retention.bytes" => "log.retention.bytes",
        "retention.ms" => "log.retention.ms",
        "segment.bytes" => "log.segment.bytes",
        "segment.index.bytes" => "log.index.size.max.bytes",
        "segment.ms" => "log.roll.ms",
        "unclean.leader.election.enable" => "unclean.leader.election.enable",
        _ => return None,
    })
}

/// The kind of a topic config, `None` for a name Spate does not know.
pub(crate) fn topic_config_kind(name: &str) -> Option<ConfigKind> {
    TOPIC_CONFIGS
        .iter()
        .find(|d| d.name == name)
        .map(|d| d.kind)
}

/// The broker-level synonyms of a value that defaults to `kafka_default` and is `value` on
/// this broker: the broker setting when it differs from Kafka's default, then the default.
fn broker_level(name: &'static str, value: String, kafka_default: String) -> Vec<Synonym> {
    let mut synonyms = Vec::with_capacity(2);
    if value != kafka_default {
        synonyms.push(Synonym {
            name,
            value,
            source: ConfigSource::StaticBroker,
        });
    }
    synonyms.push(Synonym {
        name,
        value: kafka_default,
        source: ConfigSource::Default,
    });
    synonyms
}

/// Every topic config of a topic whose overrides are `overrides`, in name order, on a broker
/// whose topic defaults are `defaults`.
pub(crate) fn topic_entries(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Vec<ConfigEntry> {
    let kafka_defaults = LogConfig::default();
    let mut entries = Vec::with_capacity(TOPIC_CONFIGS.len());
    for def in TOPIC_CONFIGS {
        let mut synonyms = Vec::with_capacity(3);
        if let Some(raw) = overrides.get(def.name) {
            // Rendered as the log parses it; a stored value always parses (it was validated
            // before it was committed), the raw text is only a fallback.
            let single = BTreeMap::from([(def.name.to_owned(), raw.clone())]);
            let value = defaults
                .with_overrides(&single)
                .ok()
                .and_then(|c| c.value_of(def.name))
                .unwrap_or_else(|| raw.clone());
            synonyms.push(Synonym {
                name: def.name,
                value,
                source: ConfigSource::DynamicTopic,
            });
        }
        let broker_value = defaults.value_of(def.name);
        let kafka_default = kafka_defaults.value_of(def.name);
        match (broker_synonym(def.name), broker_value, kafka_default) {
            (Some(broker_name), Some(value), Some(kafka_default)) => {
                synonyms.extend(broker_level(broker_name, value, kafka_default));
            }
            (None, Some(value), _) => {
                synonyms.push(Synonym {
                    name: def.name,
                    value,
                    source: ConfigSource::Default,
                });
            }
            // A listed config always renders (spate-log tests that); skip rather than invent.
            (_, None, _) | (Some(_), Some(_), None) => {}
        }
        let Some(first) = synonyms.first() else {
            continue;
        };
        entries.push(ConfigEntry {
            name: def.name,
            value: first.value.clone(),
            source: first.source,
            read_only: false,
            kind: def.kind,
            doc: def.doc,
            synonyms,
        });
    }
    entries
}

/// This broker's settings that the Kafka front end can render, in name order. All are
/// read-only: dynamic broker configs are not supported yet.
pub(crate) fn broker_entries(config: &BrokerConfig) -> Vec<ConfigEntry> {
    let kafka_defaults = LogConfig::default();
    let mut entries = Vec::new();
    for def in TOPIC_CONFIGS {
        let (Some(name), Some(value), Some(kafka_default)) = (
            broker_synonym(def.name),
            config.log_defaults.value_of(def.name),
            kafka_defaults.value_of(def.name),
        ) else {
            continue;
        };
        entries.push(read_only_entry(
            name,
            def.kind,
            def.doc,
            value,
            kafka_default,
        ));
    }
    let own: [(&'static str, ConfigKind, &'static str, String, &str); 5] = [
        (
            "auto.create.topics.enable",
            ConfigKind::Boolean,
            "Create a topic when a client asks for the metadata of a topic that does not exist.",
            config.auto_create_topics.to_string(),
            "true",
        ),
        (
            "default.replication.factor",
            ConfigKind::Int,
            "Replication factor of topics created without one.",
            config.default_replication_factor.to_string(),
            "1",
        ),
        (
            "delete.topic.enable",
            ConfigKind::Boolean,
            "Whether DeleteTopics may delete topics.",
            config.delete_topic_enable.to_string(),
            "true",
        ),
        (
            "num.partitions",
            ConfigKind::Int,
            "Number of partitions of topics created without a partition count.",
            config.num_partitions.to_string(),
            "1",
        ),
        (
            "socket.request.max.bytes",
            ConfigKind::Int,
            "Largest request a client may send.",
            config.request_bytes_max.to_string(),
            "104857600",
        ),
    ];
    for (name, kind, doc, value, kafka_default) in own {
        entries.push(read_only_entry(
            name,
            kind,
            doc,
            value,
            kafka_default.to_owned(),
        ));
    }
    entries.sort_by(|a, b| a.name.cmp(b.name));
    entries
}

fn read_only_entry(
    name: &'static str,
    kind: ConfigKind,
    doc: &'static str,
    value: String,
    kafka_default: String,
) -> ConfigEntry {
    let synonyms = broker_level(name, value, kafka_default);
    let (value, source) = synonyms
        .first()
        .map(|s| (s.value.clone(), s.source))
        .unwrap_or_else(|| (String::new(), ConfigSource::Default));
    ConfigEntry {
        name,
        value,
        source,
        read_only: true,
        kind,
        doc,
        synonyms,
    }
}

/// Kafka's message for topic configs sent without a value.
fn null_values_error<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<ApiError> {
    let names: Vec<&str> = names.into_iter().collect();
    (!names.is_empty()).then(|| {
        ApiError::new(
            ResponseError::InvalidConfig,
            format!(
                "Null value not supported for topic configs: {}",
                names.join(",")
            ),
        )
    })
}

/// The override map a CreateTopics or AlterConfigs request spells out. As in Kafka, a name
/// given twice takes its last value, and a config without a value is refused.
pub(crate) fn override_map<'a>(
    configs: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut overrides = BTreeMap::new();
    let mut nulls = Vec::new();
    for (name, value) in configs {
        match value {
            Some(value) => {
                overrides.insert(name.to_owned(), value.to_owned());
            }
            None => nulls.push(name),
        }
    }
    match null_values_error(nulls) {
        Some(e) => Err(e),
        None => Ok(overrides),
    }
}

/// Checks a topic's complete override map as its logs would apply it.
pub(crate) fn validate_overrides(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    if let Some((name, _)) = overrides
        .iter()
        .find(|(_, v)| v.len() > CONFIG_VALUE_BYTES_MAX)
    {
        return Err(ApiError::new(
            ResponseError::InvalidConfig,
            format!(
                "The value of {name} cannot be stored because it exceeds the maximum value size of {CONFIG_VALUE_BYTES_MAX} bytes."
            ),
        ));
    }
    defaults
        .with_overrides(overrides)
        .map(|_| ())
        .map_err(|e| ApiError::new(errors::config_error(&e), e.to_string()))
}

/// The current overrides of the topic an AlterConfigs-style resource names, or Kafka's error
/// for that resource name.
pub(crate) fn topic_overrides<'a>(
    image: &'a MetadataImage,
    name: &str,
) -> Result<&'a BTreeMap<String, String>, ApiError> {
    if name.is_empty() {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            "Default topic resources are not allowed.",
        ));
    }
    validate_topic_name(name)
        .map_err(|reason| ApiError::new(ResponseError::InvalidTopicException, reason))?;
    image
        .topics
        .get(name)
        .map(|topic| &topic.configs)
        .ok_or_else(|| {
            ApiError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("The topic '{name}' does not exist."),
            )
        })
}

/// Replaces a topic's overrides with the map `change` computes from the current ones, after
/// validating it; with `validate_only`, or when nothing changes, nothing is proposed.
///
/// Concurrent alterations of one topic are serialised by compare-and-set: the proposal carries
/// the map it was computed from, and when another alteration committed first, `change` runs
/// again on the new map, so neither silently undoes the other.
pub(crate) async fn alter_topic_configs(
    broker: &Broker,
    name: &str,
    validate_only: bool,
    change: impl Fn(&BTreeMap<String, String>, &LogConfig) -> Result<BTreeMap<String, String>, ApiError>,
) -> Result<(), ApiError> {
    const ATTEMPTS_MAX: usize = 16;
    for _ in 0..ATTEMPTS_MAX {
        let image = broker.image();
        let current = topic_overrides(&image, name)?;
        let new = change(current, &broker.config.log_defaults)?;
        validate_overrides(&broker.config.log_defaults, &new)?;
        if validate_only || new == *current {
            return Ok(());
        }
        let outcome = broker
            .controller
            .propose(MetadataCommand::SetTopicConfigs {
                name: name.to_owned(),
                configs: new,
                expected: Some(current.clone()),
            })
            .await
            .map_err(|e| ApiError::new(errors::controller_error(&e), e.to_string()))?;
        match outcome {
            MetadataOutcome::TopicConfigsSet => {
                broker.wait_reconciled().await;
                tracing::info!(topic = name, "altered topic configs");
                return Ok(());
            }
            MetadataOutcome::Rejected(MetadataError::ConcurrentModification(_)) => continue,
            MetadataOutcome::Rejected(e) => {
                return Err(ApiError::new(errors::metadata_error(&e), e.to_string()))
            }
            other => {
                return Err(ApiError::new(
                    ResponseError::UnknownServerError,
                    format!("unexpected controller outcome {other:?}"),
                ))
            }
        }
    }
    Err(ApiError::new(
        ResponseError::RequestTimedOut,
        format!("the configs of topic '{name}' kept changing concurrently; retry"),
    ))
}

/// Alters each resource of an AlterConfigs-style request in order with `alter(index)`; a
/// resource named twice is refused, every time it appears, as Kafka does.
pub(crate) async fn alter_resources<Fut>(
    keys: Vec<(i8, String)>,
    mut alter: impl FnMut(usize) -> Fut,
) -> Vec<Result<(), ApiError>>
where
    Fut: std::future::Future<Output = Result<(), ApiError>>,
{
    let duplicated = duplicates(keys.iter().cloned());
    let mut outcomes = Vec::with_capacity(keys.len());
    for (index, key) in keys.iter().enumerate() {
        outcomes.push(if duplicated.contains(key) {
            Err(ApiError::new(
                ResponseError::InvalidRequest,
                "Each resource must appear at most once.",
            ))
        } else {
            alter(index).await
        });
    }
    outcomes
}

/// The error code and message a resource's response carries; refusals are logged at debug.
pub(crate) fn outcome_fields(
    api: &str,
    resource: &str,
    outcome: Result<(), ApiError>,
) -> (i16, Option<StrBytes>) {
    match outcome {
        Ok(()) => (0, None),
        Err(e) => {
            tracing::debug!(%resource, code = ?e.code, message = %e.message, "{api} refused");
            (e.code.code(), Some(StrBytes::from_string(e.message)))
        }
    }
}

/// The keys that occur more than once.
pub(crate) fn duplicates<K: Ord + Clone>(keys: impl IntoIterator<Item = K>) -> BTreeSet<K> {
    let mut seen = BTreeSet::new();
    let mut twice = BTreeSet::new();
    for key in keys {
        if !seen.insert(key.clone()) {
            twice.insert(key);
        }
    }
    twice
}

/// The error for a resource of a type AlterConfigs-style APIs cannot change, or `None` for a
/// topic, a group or a broker (dynamic broker configs).
pub(crate) fn unalterable_resource(resource_type: i8) -> Option<ApiError> {
    match resource_type {
        RESOURCE_TOPIC | RESOURCE_GROUP | RESOURCE_BROKER => None,
        other => Some(ApiError::new(
            ResponseError::InvalidRequest,
            format!("Unsupported resource type: {other}"),
        )),
    }
}

// ---- Config resources other than topics: groups and brokers ------------------------------
//
// Their overrides are stored by the controller (`SetGroupConfigs`, `SetBrokerConfigs`), one
// complete map per resource, committed with compare-and-set like a topic's.

/// Kafka's `ConfigResource.Type` id of a group (KIP-848 dynamic group configs).
pub(crate) const RESOURCE_GROUP: i8 = 32;

// What the front end refuses is refused by the controller too, never the other way round.
const _: () = assert!(CONFIG_VALUE_BYTES_MAX <= spate_controller::CONFIG_VALUE_BYTES_MAX);

/// A broker setting that bounds a group config (Kafka's `group.*.min.*` / `group.*.max.*`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupBound {
    pub name: &'static str,
    pub value: i32,
}

/// One of Kafka 4.0's group configs (`GroupConfig`).
#[derive(Debug)]
pub(crate) struct GroupConfigDef {
    pub name: &'static str,
    pub kind: ConfigKind,
    /// Kafka's default: its broker setting's default, which Spate does not let operators change.
    pub default: &'static str,
    /// The broker setting that provides the default (Kafka's `group.` + name), if Kafka has one.
    pub broker_name: Option<&'static str>,
    /// Smallest value of the type (Kafka's `atLeast`), for INT configs.
    pub at_least: i32,
    /// Bounds from broker settings, for INT configs.
    pub min: Option<GroupBound>,
    pub max: Option<GroupBound>,
    /// The values a STRING config may take.
    pub one_of: &'static [&'static str],
    pub doc: &'static str,
}

const fn group_int(
    name: &'static str,
    broker_name: &'static str,
    default: &'static str,
    at_least: i32,
    min: GroupBound,
    max: GroupBound,
    doc: &'static str,
) -> GroupConfigDef {
    GroupConfigDef {
        name,
        kind: ConfigKind::Int,
        default,
        broker_name: Some(broker_name),
        at_least,
        min: Some(min),
        max: Some(max),
        one_of: &[],
        doc,
    }
}

const fn bound(name: &'static str, value: i32) -> GroupBound {
    GroupBound { name, value }
}

/// Kafka 4.0's group configs, in name order, with Kafka's defaults and the bounds its default
/// broker settings put on them. Spate's groups use the classic protocol, and Kafka ignores
/// these configs for classic groups too: they are stored, validated and described, and steer
/// nothing (each doc says so).
#[rustfmt::skip]
pub(crate) const GROUP_CONFIGS: &[GroupConfigDef] = &[
    group_int("consumer.heartbeat.interval.ms", "group.consumer.heartbeat.interval.ms", "5000", 1,
        bound("group.consumer.min.heartbeat.interval.ms", 5000),
        bound("group.consumer.max.heartbeat.interval.ms", 15000),
        "The heartbeat interval given to the members of a consumer group (the consumer group protocol, KIP-848). Spate's groups use the classic protocol, which ignores this config, as Kafka does for classic groups."),
    group_int("consumer.session.timeout.ms", "group.consumer.session.timeout.ms", "45000", 1,
        bound("group.consumer.min.session.timeout.ms", 45000),
        bound("group.consumer.max.session.timeout.ms", 60000),
        "The timeout to detect client failures when using the consumer group protocol (KIP-848). Spate's groups use the classic protocol, which ignores this config, as Kafka does for classic groups (their members send session.timeout.ms themselves)."),
    GroupConfigDef {
        name: "share.auto.offset.reset",
        kind: ConfigKind::String,
        default: "latest",
        broker_name: None,
        at_least: 0,
        min: None,
        max: None,
        one_of: &["latest", "earliest"],
        doc: "The strategy to initialize the share-partition start offset (share groups, KIP-932). Spate has no share groups; the value is stored and ignored.",
    },
    group_int("share.heartbeat.interval.ms", "group.share.heartbeat.interval.ms", "5000", 1,
        bound("group.share.min.heartbeat.interval.ms", 5000),
        bound("group.share.max.heartbeat.interval.ms", 15000),
        "The heartbeat interval given to the members of a share group (KIP-932). Spate has no share groups; the value is stored and ignored."),
    group_int("share.record.lock.duration.ms", "group.share.record.lock.duration.ms", "30000", 1000,
        bound("group.share.min.record.lock.duration.ms", 15000),
        bound("group.share.max.record.lock.duration.ms", 60000),
        "The record acquisition lock duration in milliseconds for share groups (KIP-932). Spate has no share groups; the value is stored and ignored."),
    group_int("share.session.timeout.ms", "group.share.session.timeout.ms", "45000", 1,
        bound("group.share.min.session.timeout.ms", 45000),
        bound("group.share.max.session.timeout.ms", 60000),
        "The timeout to detect client failures when using the share group protocol (KIP-932). Spate has no share groups; the value is stored and ignored."),
];

fn group_config_def(name: &str) -> Option<&'static GroupConfigDef> {
    GROUP_CONFIGS.iter().find(|d| d.name == name)
}

/// Kafka's `ConfigException` text for a value its type refuses.
fn invalid_value(name: &str, value: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ResponseError::InvalidConfig,
        format!("Invalid value {value} for configuration {name}: {reason}"),
    )
}

/// Parses one group config value as Kafka's `ConfigDef` does (surrounding spaces ignored) and
/// renders it as Kafka describes it.
fn parse_group_value(def: &GroupConfigDef, raw: &str) -> Result<String, ApiError> {
    let value = raw.trim();
    match def.kind {
        ConfigKind::Int => {
            let n: i32 = value
                .parse()
                .map_err(|_| invalid_value(def.name, value, "Not a number of type INT"))?;
            if n < def.at_least {
                return Err(invalid_value(
                    def.name,
                    value,
                    format!("Value must be at least {}", def.at_least),
                ));
            }
            Ok(n.to_string())
        }
        _ => {
            if !def.one_of.is_empty() && !def.one_of.contains(&value) {
                return Err(invalid_value(
                    def.name,
                    value,
                    format!("String must be one of: {}", def.one_of.join(", ")),
                ));
            }
            Ok(value.to_owned())
        }
    }
}

/// Every group config's value for a group with `overrides`, parsed (defaults for the others).
fn group_values(overrides: &ConfigMap) -> Result<BTreeMap<&'static str, String>, ApiError> {
    GROUP_CONFIGS
        .iter()
        .map(|def| {
            let value = match overrides.get(def.name) {
                Some(raw) => parse_group_value(def, raw)?,
                None => def.default.to_owned(),
            };
            Ok((def.name, value))
        })
        .collect()
}

/// Checks a group's complete override map as Kafka 4.0's `GroupConfig.validate` does: known
/// names, values of the right type, within the broker's bounds, and each session timeout above
/// its heartbeat interval. INVALID_CONFIG with Kafka's message otherwise.
pub(crate) fn validate_group_overrides(overrides: &ConfigMap) -> Result<(), ApiError> {
    check_value_sizes(overrides)?;
    if let Some(name) = overrides.keys().find(|n| group_config_def(n).is_none()) {
        return Err(ApiError::new(
            ResponseError::InvalidConfig,
            format!("Unknown group config name: {name}"),
        ));
    }
    let values = group_values(overrides)?;
    let int = |name: &str| -> i32 {
        values
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    };
    let refuse = |message: String| Err(ApiError::new(ResponseError::InvalidConfig, message));
    // Kafka's order: bounds first (heartbeat before session, consumer before share), then the
    // relation between each session timeout and its heartbeat interval.
    for name in [
        "consumer.heartbeat.interval.ms",
        "consumer.session.timeout.ms",
        "share.heartbeat.interval.ms",
        "share.session.timeout.ms",
        "share.record.lock.duration.ms",
    ] {
        let Some(def) = group_config_def(name) else {
            continue;
        };
        let value = int(name);
        if let Some(min) = def.min.filter(|b| value < b.value) {
            return refuse(format!(
                "{name} must be greater than or equal to {}",
                min.name
            ));
        }
        if let Some(max) = def.max.filter(|b| value > b.value) {
            return refuse(format!("{name} must be less than or equal to {}", max.name));
        }
    }
    for (session, heartbeat) in [
        (
            "consumer.session.timeout.ms",
            "consumer.heartbeat.interval.ms",
        ),
        ("share.session.timeout.ms", "share.heartbeat.interval.ms"),
    ] {
        if int(session) <= int(heartbeat) {
            return refuse(format!("{session} must be greater than {heartbeat}"));
        }
    }
    Ok(())
}

/// Every group config of a group whose overrides are `overrides`, in name order: the override
/// (GROUP_CONFIG) over the broker setting that provides the default (DEFAULT_CONFIG: Spate
/// does not let operators change these), as Kafka describes them.
pub(crate) fn group_entries(overrides: &ConfigMap) -> Vec<ConfigEntry> {
    GROUP_CONFIGS
        .iter()
        .map(|def| {
            let mut synonyms = Vec::with_capacity(2);
            if let Some(raw) = overrides.get(def.name) {
                // Stored values were validated; the raw text is only a fallback.
                let value = parse_group_value(def, raw).unwrap_or_else(|_| raw.clone());
                synonyms.push(Synonym {
                    name: def.name,
                    value,
                    source: ConfigSource::Group,
                });
            }
            synonyms.push(Synonym {
                name: def.broker_name.unwrap_or(def.name),
                value: def.default.to_owned(),
                source: ConfigSource::Default,
            });
            let (value, source) = (synonyms[0].value.clone(), synonyms[0].source);
            ConfigEntry {
                name: def.name,
                value,
                source,
                read_only: false,
                kind: def.kind,
                doc: def.doc,
                synonyms,
            }
        })
        .collect()
}

/// The group a GROUP resource names, or Kafka's error for a resource name that names none.
pub(crate) fn group_resource(name: &str) -> Result<&str, ApiError> {
    if name.is_empty() {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            "Default group resources are not allowed.",
        ));
    }
    if name.len() > spate_controller::GROUP_ID_BYTES_MAX {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!(
                "Group id of {} bytes; at most {}",
                name.len(),
                spate_controller::GROUP_ID_BYTES_MAX
            ),
        ));
    }
    Ok(name)
}

/// Kafka's message for group configs sent without a value (AlterConfigs).
pub(crate) fn group_override_map<'a>(
    configs: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<ConfigMap, ApiError> {
    let mut overrides = ConfigMap::new();
    let mut nulls = Vec::new();
    for (name, value) in configs {
        match value {
            Some(value) => {
                overrides.insert(name.to_owned(), value.to_owned());
            }
            None => nulls.push(name),
        }
    }
    if nulls.is_empty() {
        Ok(overrides)
    } else {
        Err(ApiError::new(
            ResponseError::InvalidConfig,
            format!(
                "Null value not supported for group configs: {}",
                nulls.join(",")
            ),
        ))
    }
}

/// Refuses values Kafka could not store.
fn check_value_sizes(overrides: &ConfigMap) -> Result<(), ApiError> {
    match overrides
        .iter()
        .find(|(_, v)| v.len() > CONFIG_VALUE_BYTES_MAX)
    {
        Some((name, _)) => Err(ApiError::new(
            ResponseError::InvalidConfig,
            format!(
                "The value of {name} cannot be stored because it exceeds the maximum value size of {CONFIG_VALUE_BYTES_MAX} bytes."
            ),
        )),
        None => Ok(()),
    }
}

/// A config resource whose overrides the controller keeps outside the topics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StoredResource {
    Group(String),
    /// `None`: the cluster-wide dynamic broker defaults (resource name "").
    Broker(Option<NodeId>),
}

impl StoredResource {
    fn current<'a>(&self, image: &'a MetadataImage) -> &'a ConfigMap {
        match self {
            StoredResource::Group(group) => image.resource_configs.group(group),
            StoredResource::Broker(node) => image.resource_configs.broker(*node),
        }
    }

    fn command(&self, configs: ConfigMap, expected: ConfigMap) -> MetadataCommand {
        match self {
            StoredResource::Group(group) => MetadataCommand::SetGroupConfigs {
                group: group.clone(),
                configs,
                expected: Some(expected),
            },
            StoredResource::Broker(node) => MetadataCommand::SetBrokerConfigs {
                node: *node,
                configs,
                expected: Some(expected),
            },
        }
    }
}

impl std::fmt::Display for StoredResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredResource::Group(group) => write!(f, "group '{group}'"),
            StoredResource::Broker(Some(node)) => write!(f, "broker {node}"),
            StoredResource::Broker(None) => f.write_str("the cluster-wide broker defaults"),
        }
    }
}

/// Replaces a group's or broker's overrides with the map `change` computes from the current
/// ones, after `validate` accepted it; with `validate_only`, or when nothing changes, nothing is
/// proposed. Concurrent alterations are serialised by compare-and-set, as for topics
/// ([`alter_topic_configs`]).
pub(crate) async fn alter_stored_configs(
    broker: &Broker,
    resource: &StoredResource,
    validate_only: bool,
    change: impl Fn(&ConfigMap, &MetadataImage) -> Result<ConfigMap, ApiError>,
    validate: impl Fn(&ConfigMap, &MetadataImage) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    const ATTEMPTS_MAX: usize = 16;
    for _ in 0..ATTEMPTS_MAX {
        let image = broker.image();
        let current = resource.current(&image);
        let new = change(current, &image)?;
        validate(&new, &image)?;
        if validate_only || new == *current {
            return Ok(());
        }
        if let StoredResource::Group(_) = resource {
            let groups = &image.resource_configs.groups;
            if current.is_empty() && groups.len() >= spate_controller::GROUPS_WITH_CONFIGS_MAX {
                return Err(ApiError::new(
                    ResponseError::InvalidConfig,
                    format!(
                        "{} groups already have config overrides, the most Spate keeps; delete the overrides of another group first",
                        spate_controller::GROUPS_WITH_CONFIGS_MAX
                    ),
                ));
            }
        }
        let outcome = broker
            .controller
            .propose(resource.command(new, current.clone()))
            .await
            .map_err(|e| ApiError::new(errors::controller_error(&e), e.to_string()))?;
        match outcome {
            MetadataOutcome::GroupConfigsSet | MetadataOutcome::BrokerConfigsSet => {
                broker.wait_reconciled().await;
                tracing::info!(%resource, "altered configs");
                return Ok(());
            }
            MetadataOutcome::Rejected(MetadataError::ConcurrentModification(_)) => continue,
            MetadataOutcome::Rejected(MetadataError::UnknownBroker { node, .. }) => {
                return Err(unknown_broker(node))
            }
            MetadataOutcome::Rejected(e) => {
                return Err(ApiError::new(errors::metadata_error(&e), e.to_string()))
            }
            other => {
                return Err(ApiError::new(
                    ResponseError::UnknownServerError,
                    format!("unexpected controller outcome {other:?}"),
                ))
            }
        }
    }
    Err(ApiError::new(
        ResponseError::RequestTimedOut,
        format!("the configs of {resource} kept changing concurrently; retry"),
    ))
}

/// Kafka's answer for per-broker configs of a broker the cluster does not know.
fn unknown_broker(node: NodeId) -> ApiError {
    ApiError::new(
        ResponseError::BrokerIdNotRegistered,
        format!("No broker with id {node} found."),
    )
}

// ---- Dynamic broker configs (resource type BROKER) -------------------------------------------

/// What a dynamic broker config does in Spate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DynamicEffect {
    /// The default of this topic config for every topic without its own override, on every
    /// partition of the broker(s) it is set for (see [`effective_log_defaults`]).
    TopicDefault(&'static str),
    /// Stored and described only: Spate has no machinery this config could steer (a thread
    /// pool, SASL, a connection quota). Kafka stores such configs the same way, e.g. for a
    /// listener that does not use them.
    None,
}

/// One of Kafka's dynamically updatable broker configs (`DynamicBrokerConfig`) that Spate
/// accepts without a topic synonym: these have no effect.
#[derive(Debug)]
pub(crate) struct DynamicConfigDef {
    pub name: &'static str,
    pub kind: ConfigKind,
    /// Kafka's default.
    pub default: &'static str,
    /// Kafka refuses these at the cluster-wide level: listener and SASL settings.
    pub per_broker_only: bool,
    /// Inclusive bounds of numeric values.
    pub range: Option<(f64, f64)>,
    /// A thread pool: Kafka lets a change at most halve or double the current size.
    pub thread_pool: bool,
    pub doc: &'static str,
}

const fn dynamic(
    name: &'static str,
    kind: ConfigKind,
    default: &'static str,
    range: Option<(f64, f64)>,
    doc: &'static str,
) -> DynamicConfigDef {
    DynamicConfigDef {
        name,
        kind,
        default,
        per_broker_only: false,
        range,
        thread_pool: false,
        doc,
    }
}

const fn threads(name: &'static str, default: &'static str, doc: &'static str) -> DynamicConfigDef {
    DynamicConfigDef {
        thread_pool: true,
        ..dynamic(
            name,
            ConfigKind::Int,
            default,
            Some((1.0, i32::MAX as f64)),
            doc,
        )
    }
}

const fn per_broker(
    name: &'static str,
    kind: ConfigKind,
    default: &'static str,
    range: Option<(f64, f64)>,
    doc: &'static str,
) -> DynamicConfigDef {
    DynamicConfigDef {
        per_broker_only: true,
        ..dynamic(name, kind, default, range, doc)
    }
}

const INT_MAX: f64 = i32::MAX as f64;

/// Kafka's dynamically updatable broker configs that Spate stores without effect, in name
/// order (the `log.*` topic defaults, which do take effect, come from the topic configs).
#[rustfmt::skip]
pub(crate) const NO_EFFECT_DYNAMIC_CONFIGS: &[DynamicConfigDef] = &[
    threads("background.threads", "10", "Threads for background processing (Kafka's scheduler). Stored and described only: Spate runs its background work on the Tokio runtime."),
    dynamic("log.cleaner.dedupe.buffer.size", ConfigKind::Long, "134217728", Some((0.0, i64::MAX as f64)), "Memory for log deduplication across cleaner threads. Stored and described only: Spate's cleaner sizes its own buffers."),
    dynamic("log.cleaner.io.buffer.load.factor", ConfigKind::Double, "0.9", Some((0.0, 1.0)), "Load factor of the cleaner's dedupe buffer. Stored and described only."),
    dynamic("log.cleaner.io.buffer.size", ConfigKind::Int, "524288", Some((0.0, INT_MAX)), "I/O buffer memory of the cleaner threads. Stored and described only."),
    dynamic("log.cleaner.io.max.bytes.per.second", ConfigKind::Double, "1.7976931348623157E308", None, "I/O throttle of the log cleaner. Stored and described only: Spate's cleaner is not throttled."),
    dynamic("log.cleaner.threads", ConfigKind::Int, "1", Some((0.0, INT_MAX)), "Number of log cleaner threads. Stored and described only: Spate's cleaner is one task per node."),
    dynamic("max.connection.creation.rate", ConfigKind::Int, "2147483647", Some((0.0, INT_MAX)), "Most new connections per second on the broker. Stored and described only: Spate bounds connections otherwise."),
    dynamic("max.connections", ConfigKind::Int, "2147483647", Some((0.0, INT_MAX)), "Most connections on the broker. Stored and described only: Spate bounds connections otherwise."),
    dynamic("max.connections.per.ip", ConfigKind::Int, "2147483647", Some((0.0, INT_MAX)), "Most connections from one address. Stored and described only."),
    dynamic("max.connections.per.ip.overrides", ConfigKind::String, "", None, "Per-address connection limits. Stored and described only."),
    dynamic("metric.reporters", ConfigKind::List, "", None, "Metrics reporter classes (Java). Stored and described only: Spate exports Prometheus metrics."),
    threads("num.io.threads", "8", "Request handler threads. Stored and described only: Spate handles requests on the Tokio runtime."),
    threads("num.network.threads", "3", "Network threads. Stored and described only: Spate handles connections on the Tokio runtime."),
    threads("num.recovery.threads.per.data.dir", "2", "Log recovery threads per data directory. Stored and described only."),
    threads("num.replica.fetchers", "1", "Follower fetcher threads per source broker. Stored and described only: Spate runs one fetcher task per leader."),
    dynamic("producer.id.expiration.ms", ConfigKind::Int, "86400000", Some((1.0, INT_MAX)), "How long an idle producer id is remembered. Stored and described only."),
    per_broker("sasl.enabled.mechanisms", ConfigKind::List, "GSSAPI", None, "SASL mechanisms the broker enables. Stored and described only: Spate has no SASL listener."),
    per_broker("sasl.kerberos.kinit.cmd", ConfigKind::String, "/usr/bin/kinit", None, "Kerberos kinit command. Stored and described only: Spate has no SASL listener."),
    per_broker("sasl.kerberos.min.time.before.relogin", ConfigKind::Long, "60000", None, "Login thread sleep time between refresh attempts. Stored and described only: Spate has no SASL listener."),
    per_broker("sasl.kerberos.principal.to.local.rules", ConfigKind::List, "DEFAULT", None, "Rules mapping principals to short names. Stored and described only: Spate has no SASL listener."),
    per_broker("sasl.kerberos.service.name", ConfigKind::String, "", None, "Kerberos principal name Kafka runs as. Stored and described only: Spate has no SASL listener."),
    per_broker("sasl.kerberos.ticket.renew.jitter", ConfigKind::Double, "0.05", None, "Random jitter added to the renewal time. Stored and described only: Spate has no SASL listener."),
    per_broker("sasl.kerberos.ticket.renew.window.factor", ConfigKind::Double, "0.8", None, "Fraction of the ticket lifetime after which it is renewed. Stored and described only: Spate has no SASL listener."),
    per_broker("sasl.login.refresh.buffer.seconds", ConfigKind::Int, "300", Some((0.0, 3600.0)), "Buffer time before credential expiry. Stored and described only: Spate has no SASL listener."),
    per_broker("sasl.login.refresh.min.period.seconds", ConfigKind::Int, "60", Some((0.0, 900.0)), "Least time between credential refreshes. Stored and described only: Spate has no SASL listener."),
    per_broker("sasl.login.refresh.window.factor", ConfigKind::Double, "0.8", Some((0.5, 1.0)), "Fraction of the credential lifetime after which it is refreshed. Stored and described only: Spate has no SASL listener."),
    per_broker("sasl.login.refresh.window.jitter", ConfigKind::Double, "0.05", Some((0.0, 0.25)), "Random jitter added to the refresh time. Stored and described only: Spate has no SASL listener."),
    per_broker("sasl.mechanism.inter.broker.protocol", ConfigKind::String, "GSSAPI", None, "SASL mechanism between brokers. Stored and described only: Spate has no SASL listener."),
    dynamic("transaction.partition.verification.enable", ConfigKind::Boolean, "true", None, "Verify that a partition was added to the transaction before writing. Stored and described only."),
];

fn no_effect_def(name: &str) -> Option<&'static DynamicConfigDef> {
    NO_EFFECT_DYNAMIC_CONFIGS.iter().find(|d| d.name == name)
}

/// The topic config a `log.*`-style broker config provides the default for.
fn topic_config_of(broker_name: &str) -> Option<&'static str> {
    TOPIC_CONFIGS
        .iter()
        .map(|d| d.name)
        .find(|t| broker_synonym(t) == Some(broker_name))
}

/// What setting `name` dynamically does, or `None` when Kafka (or Spate) cannot update it
/// dynamically.
pub(crate) fn dynamic_effect(name: &str) -> Option<DynamicEffect> {
    if let Some(topic) = topic_config_of(name) {
        return Some(DynamicEffect::TopicDefault(topic));
    }
    no_effect_def(name).map(|_| DynamicEffect::None)
}

/// Renames broker-level `log.*` settings to the topic configs they default, dropping others.
fn as_topic_overrides(broker_level: &ConfigMap) -> ConfigMap {
    broker_level
        .iter()
        .filter_map(|(name, value)| Some((topic_config_of(name)?.to_owned(), value.clone())))
        .collect()
}

/// The topic defaults in force on `node`: the static `log.*` settings, then the cluster-wide
/// dynamic ones, then the node's own dynamic ones (Kafka's order); a topic's own overrides
/// apply on top of the result (`LogConfig::with_overrides`). Pure.
///
/// Every stored value was validated when it was set; one the log still refuses (a later
/// Spate with stricter rules) is skipped, with a warning, rather than losing the others.
pub fn effective_log_defaults(
    static_defaults: &LogConfig,
    image: &MetadataImage,
    node: NodeId,
) -> LogConfig {
    let stored = &image.resource_configs;
    let mut config = static_defaults.clone();
    for level in [stored.broker(None), stored.broker(Some(node))] {
        for (topic, value) in as_topic_overrides(level) {
            let one = ConfigMap::from([(topic.clone(), value)]);
            match config.with_overrides(&one) {
                Ok(c) => config = c,
                Err(e) => {
                    tracing::warn!(config = %topic, error = %e, "ignoring a dynamic broker config")
                }
            }
        }
    }
    config
}

/// Which broker a BROKER resource of an alteration names: `None` for the cluster-wide
/// defaults (""), else a registered broker; Kafka's errors otherwise.
pub(crate) fn broker_alter_resource(
    name: &str,
    image: &MetadataImage,
) -> Result<Option<NodeId>, ApiError> {
    if name.is_empty() {
        return Ok(None);
    }
    let id: i32 = name.parse().map_err(|_| {
        ApiError::new(
            ResponseError::InvalidRequest,
            format!("Unable to parse broker name {name}"),
        )
    })?;
    if id < 0 {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            "Invalid negative broker ID.",
        ));
    }
    let node = NodeId(id);
    if !image.brokers.contains_key(&node) {
        return Err(unknown_broker(node));
    }
    Ok(Some(node))
}

/// Kafka's `Set(a, b)` rendering of config names in its messages.
fn name_set<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    format!("Set({})", names.into_iter().collect::<Vec<_>>().join(", "))
}

/// Checks one value of a config without effect against its type and bounds, as Kafka's
/// `ConfigDef` does.
fn check_no_effect_value(def: &DynamicConfigDef, raw: &str) -> Result<(), ApiError> {
    let value = raw.trim();
    let number = match def.kind {
        ConfigKind::Int => value.parse::<i32>().ok().map(f64::from),
        ConfigKind::Long => value.parse::<i64>().ok().map(|n| n as f64),
        ConfigKind::Double => value.parse::<f64>().ok().filter(|n| n.is_finite()),
        ConfigKind::Boolean => {
            return match value.to_ascii_lowercase().as_str() {
                "true" | "false" => Ok(()),
                _ => Err(invalid_value(
                    def.name,
                    value,
                    "Expected value to be either true or false",
                )),
            }
        }
        ConfigKind::String | ConfigKind::List => return Ok(()),
    };
    let type_name = match def.kind {
        ConfigKind::Int => "INT",
        ConfigKind::Long => "LONG",
        _ => "DOUBLE",
    };
    let Some(number) = number else {
        return Err(invalid_value(
            def.name,
            value,
            format!("Not a number of type {type_name}"),
        ));
    };
    match def.range {
        Some((min, _)) if number < min => Err(invalid_value(
            def.name,
            value,
            format!("Value must be at least {min}"),
        )),
        Some((_, max)) if number > max => Err(invalid_value(
            def.name,
            value,
            format!("Value must be no more than {max}"),
        )),
        _ => Ok(()),
    }
}

/// The value of a config without effect on `node` (`None`: cluster-wide) before a change.
fn current_no_effect_value(
    image: &MetadataImage,
    node: Option<NodeId>,
    def: &DynamicConfigDef,
) -> String {
    let stored = &image.resource_configs;
    let dynamic = match node {
        Some(node) => stored.dynamic_broker_configs(node),
        None => stored.broker(None).clone(),
    };
    dynamic
        .get(def.name)
        .cloned()
        .unwrap_or_else(|| def.default.to_owned())
}

/// Checks the complete new dynamic override map of a broker (`Some`) or of the cluster-wide
/// defaults (`None`) as Kafka's `DynamicBrokerConfig.validateConfigs` does: only dynamically
/// updatable names, listener and SASL settings only per broker, values of the right type
/// (`log.*` ones as the log parses the topic config they default), thread pools at most halved
/// or doubled at once. INVALID_CONFIG with Kafka's message otherwise.
pub(crate) fn validate_broker_overrides(
    node: Option<NodeId>,
    new: &ConfigMap,
    image: &MetadataImage,
    static_defaults: &LogConfig,
) -> Result<(), ApiError> {
    check_value_sizes(new)?;
    let refuse = |message: String| Err(ApiError::new(ResponseError::InvalidConfig, message));
    let not_dynamic: Vec<&str> = new
        .keys()
        .map(String::as_str)
        .filter(|n| dynamic_effect(n).is_none())
        .collect();
    if !not_dynamic.is_empty() {
        return refuse(format!(
            "Cannot update these configs dynamically: {}",
            name_set(not_dynamic)
        ));
    }
    if node.is_none() {
        let per_broker: Vec<&str> = new
            .keys()
            .map(String::as_str)
            .filter(|n| no_effect_def(n).is_some_and(|d| d.per_broker_only))
            .collect();
        if !per_broker.is_empty() {
            return refuse(format!(
                "Cannot update these configs at default cluster level, broker id must be specified: {}",
                name_set(per_broker)
            ));
        }
    }
    static_defaults
        .with_overrides(&as_topic_overrides(new))
        .map_err(|e| ApiError::new(errors::config_error(&e), e.to_string()))?;
    for (name, value) in new {
        let Some(def) = no_effect_def(name) else {
            continue;
        };
        check_no_effect_value(def, value)?;
        if def.thread_pool {
            let old: i64 = current_no_effect_value(image, node, def)
                .trim()
                .parse()
                .unwrap_or(1);
            let Ok(n) = value.trim().parse::<i64>() else {
                continue;
            };
            let failed = format!("Dynamic thread count update validation failed for {name}={n}");
            if n != old && n < old / 2 {
                return refuse(format!(
                    "{failed}, value should be at least half the current value {old}"
                ));
            }
            if n != old && n > old.saturating_mul(2) {
                return refuse(format!(
                    "{failed}, value should not be greater than double the current value {old}"
                ));
            }
        }
    }
    Ok(())
}

/// The value an APPEND or SUBTRACT on a list-typed broker config starts from when the resource
/// has no override: the level below (the cluster-wide value under a broker's), else the static
/// setting.
pub(crate) fn broker_list_base(
    name: &str,
    node: Option<NodeId>,
    image: &MetadataImage,
    static_defaults: &LogConfig,
) -> Option<String> {
    if node.is_some() {
        if let Some(v) = image.resource_configs.broker(None).get(name) {
            return Some(v.clone());
        }
    }
    match topic_config_of(name) {
        Some(topic) => static_defaults.value_of(topic),
        None => no_effect_def(name).map(|d| d.default.to_owned()),
    }
}

/// The kind of a dynamically updatable broker config.
pub(crate) fn broker_config_kind(name: &str) -> Option<ConfigKind> {
    match topic_config_of(name) {
        Some(topic) => topic_config_kind(topic),
        None => no_effect_def(name).map(|d| d.kind),
    }
}

/// A dynamic value as described: `log.*` ones as the log parses them, others trimmed.
fn render_dynamic(name: &str, raw: &str, static_defaults: &LogConfig) -> String {
    match topic_config_of(name) {
        Some(topic) => static_defaults
            .with_overrides(&ConfigMap::from([(topic.to_owned(), raw.to_owned())]))
            .ok()
            .and_then(|c| c.value_of(topic))
            .unwrap_or_else(|| raw.to_owned()),
        None => raw.trim().to_owned(),
    }
}

/// The dynamic synonyms of broker config `name` on `node`, strongest first: the node's own
/// value (DYNAMIC_BROKER_CONFIG), then the cluster-wide one (DYNAMIC_DEFAULT_BROKER_CONFIG).
fn dynamic_synonyms(
    name: &'static str,
    image: &MetadataImage,
    node: NodeId,
    static_defaults: &LogConfig,
) -> Vec<Synonym> {
    let stored = &image.resource_configs;
    [
        (stored.broker(Some(node)), ConfigSource::DynamicBroker),
        (stored.broker(None), ConfigSource::DynamicDefaultBroker),
    ]
    .into_iter()
    .filter_map(|(level, source)| {
        level.get(name).map(|raw| Synonym {
            name,
            value: render_dynamic(name, raw, static_defaults),
            source,
        })
    })
    .collect()
}

/// Puts `dynamic` synonyms in front of an entry's broker-level ones (after a topic override,
/// which stays strongest) and takes value and source from the strongest.
fn with_dynamic_synonyms(mut entry: ConfigEntry, dynamic: Vec<Synonym>) -> ConfigEntry {
    if dynamic.is_empty() {
        return entry;
    }
    let at = usize::from(
        entry
            .synonyms
            .first()
            .is_some_and(|s| s.source == ConfigSource::DynamicTopic),
    );
    entry.synonyms.splice(at..at, dynamic);
    if let Some(first) = entry.synonyms.first() {
        entry.value = first.value.clone();
        entry.source = first.source;
    }
    entry
}

/// Every topic config of a topic with `overrides`, as [`topic_entries`] describes them, with
/// the dynamic broker configs in force on `node` between the override and the static setting.
pub(crate) fn topic_entries_on(
    static_defaults: &LogConfig,
    image: &MetadataImage,
    node: NodeId,
    overrides: &ConfigMap,
) -> Vec<ConfigEntry> {
    topic_entries(static_defaults, overrides)
        .into_iter()
        .map(|entry| {
            let dynamic = broker_synonym(entry.name)
                .map(|b| dynamic_synonyms(b, image, node, static_defaults))
                .unwrap_or_default();
            with_dynamic_synonyms(entry, dynamic)
        })
        .collect()
}

/// This broker's configs, dynamic values over static ones: [`broker_entries`] plus the
/// dynamically updatable configs without effect, each read-only unless it is dynamically
/// updatable, in name order.
pub(crate) fn broker_entries_on(config: &BrokerConfig, image: &MetadataImage) -> Vec<ConfigEntry> {
    let node = config.node_id;
    let mut entries: Vec<ConfigEntry> = broker_entries(config)
        .into_iter()
        .map(|mut entry| {
            entry.read_only = dynamic_effect(entry.name).is_none();
            let dynamic = dynamic_synonyms(entry.name, image, node, &config.log_defaults);
            with_dynamic_synonyms(entry, dynamic)
        })
        .collect();
    for def in NO_EFFECT_DYNAMIC_CONFIGS {
        if entries.iter().any(|e| e.name == def.name) {
            continue;
        }
        let mut entry = read_only_entry(
            def.name,
            def.kind,
            def.doc,
            def.default.to_owned(),
            def.default.to_owned(),
        );
        entry.read_only = false;
        let dynamic = dynamic_synonyms(def.name, image, node, &config.log_defaults);
        entries.push(with_dynamic_synonyms(entry, dynamic));
    }
    entries.sort_by(|a, b| a.name.cmp(b.name));
    entries
}

/// The cluster-wide dynamic broker configs (resource name ""), as Kafka describes them: only
/// those set, each DYNAMIC_DEFAULT_BROKER_CONFIG.
pub(crate) fn cluster_broker_entries(
    image: &MetadataImage,
    static_defaults: &LogConfig,
) -> Vec<ConfigEntry> {
    image
        .resource_configs
        .broker(None)
        .iter()
        .filter_map(|(name, raw)| {
            let (name, kind, doc) = match topic_config_of(name) {
                Some(topic) => {
                    let def = TOPIC_CONFIGS.iter().find(|d| d.name == topic)?;
                    (broker_synonym(topic)?, def.kind, def.doc)
                }
                None => {
                    let def = no_effect_def(name)?;
                    (def.name, def.kind, def.doc)
                }
            };
            let value = render_dynamic(name, raw, static_defaults);
            Some(ConfigEntry {
                name,
                value: value.clone(),
                source: ConfigSource::DynamicDefaultBroker,
                read_only: false,
                kind,
                doc,
                synonyms: vec![Synonym {
                    name,
                    value,
                    source: ConfigSource::DynamicDefaultBroker,
                }],
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use spate_types::NodeId;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn entry<'a>(entries: &'a [ConfigEntry], name: &str) -> &'a ConfigEntry {
        entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} not described"))
    }

    pub(crate) fn broker_config() -> BrokerConfig {
        BrokerConfig {
            node_id: NodeId(1),
            cluster_id: "c".into(),
            advertised_host: "localhost".into(),
            advertised_port: 9092,
            rack: None,
            auto_create_topics: true,
            num_partitions: 1,
            default_replication_factor: 1,
            min_insync_replicas: None,
            request_bytes_max: 104_857_600,
            queued_request_bytes_max: 1 << 20,
            log_defaults: LogConfig::default(),
            delete_topic_enable: true,
            groups: Default::default(),
        }
    }

    #[test]
    fn every_topic_config_has_a_broker_synonym_and_a_kind() {
        for def in TOPIC_CONFIGS {
            assert!(
                broker_synonym(def.name).is_some(),
                "{} has no broker synonym",
                def.name
            );
            assert_eq!(topic_config_kind(def.name), Some(def.kind));
        }
        assert_eq!(topic_config_kind("no.such.config"), None);
    }

    #[test]
    fn topic_without_overrides_shows_kafka_defaults() {
        let entries = topic_entries(&LogConfig::default(), &BTreeMap::new());
        assert_eq!(entries.len(), TOPIC_CONFIGS.len());
        let names: Vec<_> = entries.iter().map(|e| e.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "entries are in name order");
        for e in &entries {
            assert_eq!(e.source, ConfigSource::Default, "{}", e.name);
            assert!(!e.read_only);
            assert_eq!(e.synonyms.len(), 1, "{}", e.name);
        }
        let retention = entry(&entries, "retention.ms");
        assert_eq!(retention.value, "604800000");
        assert_eq!(retention.synonyms[0].name, "log.retention.ms");
    }

    #[test]
    fn topic_override_is_dynamic_topic_config_with_synonyms_strongest_first() {
        let entries = topic_entries(&LogConfig::default(), &map(&[("retention.ms", "1000")]));
        let e = entry(&entries, "retention.ms");
        assert_eq!(
            (e.value.as_str(), e.source),
            ("1000", ConfigSource::DynamicTopic)
        );
        let sources: Vec<_> = e.synonyms.iter().map(|s| (s.name, s.source)).collect();
        assert_eq!(
            sources,
            vec![
                ("retention.ms", ConfigSource::DynamicTopic),
                ("log.retention.ms", ConfigSource::Default)
            ]
        );
        // Values are rendered as the log parses them.
        let entries = topic_entries(
            &LogConfig::default(),
            &map(&[("cleanup.policy", "delete,compact")]),
        );
        assert_eq!(entry(&entries, "cleanup.policy").value, "compact,delete");
    }

    #[test]
    fn broker_default_differing_from_kafka_is_static_broker_config() {
        let defaults = LogConfig::default()
            .with_overrides(&map(&[("segment.bytes", "1048576")]))
            .unwrap();
        let entries = topic_entries(&defaults, &BTreeMap::new());
        let e = entry(&entries, "segment.bytes");
        assert_eq!(
            (e.value.as_str(), e.source),
            ("1048576", ConfigSource::StaticBroker)
        );
        assert_eq!(e.synonyms[0].name, "log.segment.bytes");
        assert_eq!(e.synonyms[1].source, ConfigSource::Default);
        // A topic override still wins over the broker setting.
        let entries = topic_entries(&defaults, &map(&[("segment.bytes", "2048")]));
        let e = entry(&entries, "segment.bytes");
        assert_eq!(
            (e.value.as_str(), e.source, e.synonyms.len()),
            ("2048", ConfigSource::DynamicTopic, 3)
        );
    }

    #[test]
    fn broker_entries_are_read_only_sorted_and_sourced() {
        let mut config = broker_config();
        config.delete_topic_enable = false;
        let entries = broker_entries(&config);
        let names: Vec<_> = entries.iter().map(|e| e.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted, "sorted, no name twice");
        assert!(entries.iter().all(|e| e.read_only));
        let deletion = entry(&entries, "delete.topic.enable");
        assert_eq!(
            (deletion.value.as_str(), deletion.source),
            ("false", ConfigSource::StaticBroker)
        );
        let partitions = entry(&entries, "num.partitions");
        assert_eq!(
            (partitions.value.as_str(), partitions.source),
            ("1", ConfigSource::Default)
        );
        assert_eq!(entry(&entries, "message.max.bytes").value, "1048588");
        assert_eq!(entry(&entries, "log.retention.ms").kind, ConfigKind::Long);
    }

    #[test]
    fn validation_refuses_unknown_invalid_and_oversized_values() {
        let defaults = LogConfig::default();
        assert!(validate_overrides(&defaults, &map(&[("retention.ms", "5")])).is_ok());
        let unknown = validate_overrides(&defaults, &map(&[("no.such", "1")])).unwrap_err();
        assert_eq!(unknown.code, ResponseError::InvalidConfig);
        let invalid = validate_overrides(&defaults, &map(&[("segment.bytes", "x")])).unwrap_err();
        assert_eq!(invalid.code, ResponseError::InvalidConfig);
        let huge = "1".repeat(CONFIG_VALUE_BYTES_MAX + 1);
        let oversized =
            validate_overrides(&defaults, &map(&[("retention.ms", &huge)])).unwrap_err();
        assert_eq!(oversized.code, ResponseError::InvalidConfig);
        assert!(
            oversized.message.contains("maximum value size"),
            "{}",
            oversized.message
        );
    }

    #[test]
    fn topic_resource_names_are_checked_like_kafka() {
        let image = MetadataImage::default();
        assert_eq!(
            topic_overrides(&image, "").unwrap_err().code,
            ResponseError::InvalidRequest
        );
        assert_eq!(
            topic_overrides(&image, "bad/name").unwrap_err().code,
            ResponseError::InvalidTopicException
        );
        assert_eq!(
            topic_overrides(&image, "missing").unwrap_err().code,
            ResponseError::UnknownTopicOrPartition
        );
    }

    #[test]
    fn only_topic_group_and_broker_resources_are_alterable() {
        assert!(unalterable_resource(RESOURCE_TOPIC).is_none());
        assert!(unalterable_resource(RESOURCE_GROUP).is_none());
        assert!(unalterable_resource(RESOURCE_BROKER).is_none());
        assert_eq!(
            unalterable_resource(8).unwrap().code,
            ResponseError::InvalidRequest
        );
    }

    #[test]
    fn override_map_refuses_nulls_and_takes_the_last_value() {
        let sent = [
            ("retention.ms", Some("1")),
            ("segment.ms", Some("2")),
            ("retention.ms", Some("3")),
        ];
        assert_eq!(
            override_map(sent.into_iter()).unwrap(),
            map(&[("retention.ms", "3"), ("segment.ms", "2")])
        );
        assert!(override_map(std::iter::empty()).unwrap().is_empty());
        let sent = [
            ("retention.ms", None),
            ("segment.ms", Some("5")),
            ("cleanup.policy", None),
        ];
        let e = override_map(sent.into_iter()).unwrap_err();
        assert_eq!(e.code, ResponseError::InvalidConfig);
        assert_eq!(
            e.message,
            "Null value not supported for topic configs: retention.ms,cleanup.policy"
        );
    }

    #[test]
    fn duplicates_are_found_once() {
        assert_eq!(
            duplicates(["a", "b", "a", "a", "c", "b"]),
            BTreeSet::from(["a", "b"])
        );
        assert!(duplicates(Vec::<u8>::new()).is_empty());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod resource_config_tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> ConfigMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn entry<'a>(entries: &'a [ConfigEntry], name: &str) -> &'a ConfigEntry {
        entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} not described"))
    }

    fn refused(overrides: &[(&str, &str)]) -> String {
        let e = validate_group_overrides(&map(overrides)).unwrap_err();
        assert_eq!(e.code, ResponseError::InvalidConfig, "{}", e.message);
        e.message
    }

    #[test]
    fn group_configs_are_kafkas_in_name_order_and_say_they_steer_nothing() {
        let names: Vec<_> = GROUP_CONFIGS.iter().map(|d| d.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert_eq!(
            names,
            [
                "consumer.heartbeat.interval.ms",
                "consumer.session.timeout.ms",
                "share.auto.offset.reset",
                "share.heartbeat.interval.ms",
                "share.record.lock.duration.ms",
                "share.session.timeout.ms",
            ]
        );
        for def in GROUP_CONFIGS {
            assert!(
                def.doc.contains("classic protocol") || def.doc.contains("no share groups"),
                "{}",
                def.name
            );
            // Every default passes its own validation.
            parse_group_value(def, def.default).unwrap();
        }
        validate_group_overrides(&ConfigMap::new()).unwrap();
    }

    #[test]
    fn a_group_without_overrides_shows_kafkas_defaults() {
        let entries = group_entries(&ConfigMap::new());
        assert_eq!(entries.len(), GROUP_CONFIGS.len());
        for (name, value) in [
            ("consumer.session.timeout.ms", "45000"),
            ("consumer.heartbeat.interval.ms", "5000"),
            ("share.session.timeout.ms", "45000"),
            ("share.heartbeat.interval.ms", "5000"),
            ("share.record.lock.duration.ms", "30000"),
            ("share.auto.offset.reset", "latest"),
        ] {
            let e = entry(&entries, name);
            assert_eq!((e.value.as_str(), e.source), (value, ConfigSource::Default));
            assert!(!e.read_only);
            assert_eq!(e.synonyms.len(), 1);
        }
        let session = entry(&entries, "consumer.session.timeout.ms");
        assert_eq!(
            session.synonyms[0].name,
            "group.consumer.session.timeout.ms"
        );
        assert_eq!(session.kind, ConfigKind::Int);
        // No broker setting provides this one's default: the synonym is the config itself.
        let reset = entry(&entries, "share.auto.offset.reset");
        assert_eq!(reset.synonyms[0].name, "share.auto.offset.reset");
    }

    #[test]
    fn a_group_override_is_group_config_over_the_broker_default() {
        let entries = group_entries(&map(&[("consumer.session.timeout.ms", " 50000 ")]));
        let e = entry(&entries, "consumer.session.timeout.ms");
        assert_eq!((e.value.as_str(), e.source), ("50000", ConfigSource::Group));
        let synonyms: Vec<_> = e
            .synonyms
            .iter()
            .map(|s| (s.name, s.value.as_str(), s.source.id()))
            .collect();
        assert_eq!(
            synonyms,
            [
                ("consumer.session.timeout.ms", "50000", 8),
                ("group.consumer.session.timeout.ms", "45000", 5)
            ]
        );
        assert_eq!(
            entry(&entries, "consumer.heartbeat.interval.ms").source,
            ConfigSource::Default
        );
    }

    #[test]
    fn group_values_are_checked_as_kafka_checks_them() {
        for ok in [
            &[("consumer.session.timeout.ms", "50000")][..],
            &[("consumer.session.timeout.ms", "45000")],
            &[("consumer.session.timeout.ms", "60000")],
            &[("consumer.heartbeat.interval.ms", "15000")],
            &[("share.record.lock.duration.ms", "15000")],
            &[("share.auto.offset.reset", "earliest")],
            &[
                ("share.session.timeout.ms", "59999"),
                ("share.heartbeat.interval.ms", "6000"),
            ],
        ] {
            validate_group_overrides(&map(ok)).unwrap_or_else(|e| panic!("{ok:?}: {}", e.message));
        }
        assert_eq!(
            refused(&[("consumer.session.timeout.ms", "44999")]),
            "consumer.session.timeout.ms must be greater than or equal to group.consumer.min.session.timeout.ms"
        );
        assert_eq!(
            refused(&[("consumer.session.timeout.ms", "60001")]),
            "consumer.session.timeout.ms must be less than or equal to group.consumer.max.session.timeout.ms"
        );
        assert_eq!(
            refused(&[("consumer.heartbeat.interval.ms", "4999")]),
            "consumer.heartbeat.interval.ms must be greater than or equal to group.consumer.min.heartbeat.interval.ms"
        );
        assert_eq!(
            refused(&[("share.record.lock.duration.ms", "60001")]),
            "share.record.lock.duration.ms must be less than or equal to group.share.max.record.lock.duration.ms"
        );
        assert_eq!(
            refused(&[("consumer.session.timeout.ms", "abc")]),
            "Invalid value abc for configuration consumer.session.timeout.ms: Not a number of type INT"
        );
        assert_eq!(
            refused(&[("consumer.session.timeout.ms", "0")]),
            "Invalid value 0 for configuration consumer.session.timeout.ms: Value must be at least 1"
        );
        assert_eq!(
            refused(&[("share.record.lock.duration.ms", "999")]),
            "Invalid value 999 for configuration share.record.lock.duration.ms: Value must be at least 1000"
        );
        assert_eq!(
            refused(&[("share.auto.offset.reset", "none")]),
            "Invalid value none for configuration share.auto.offset.reset: String must be one of: latest, earliest"
        );
        assert_eq!(
            refused(&[("session.timeout.ms", "50000")]),
            "Unknown group config name: session.timeout.ms"
        );
        let huge = "1".repeat(CONFIG_VALUE_BYTES_MAX + 1);
        assert!(refused(&[("consumer.session.timeout.ms", &huge)]).contains("maximum value size"));
    }

    #[test]
    fn group_resource_names_and_null_values_are_refused_like_kafka() {
        assert_eq!(
            group_resource("").unwrap_err().code,
            ResponseError::InvalidRequest
        );
        assert_eq!(group_resource("g").unwrap(), "g");
        let long = "g".repeat(spate_controller::GROUP_ID_BYTES_MAX + 1);
        assert_eq!(
            group_resource(&long).unwrap_err().code,
            ResponseError::InvalidRequest
        );
        let sent = [
            ("consumer.session.timeout.ms", None),
            ("share.auto.offset.reset", Some("earliest")),
        ];
        let e = group_override_map(sent.into_iter()).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ResponseError::InvalidConfig,
                "Null value not supported for group configs: consumer.session.timeout.ms"
            )
        );
    }

    #[test]
    fn stored_resources_build_compare_and_set_commands() {
        let new = map(&[("a", "1")]);
        let cmd = StoredResource::Group("g".into()).command(new.clone(), ConfigMap::new());
        assert_eq!(
            cmd,
            MetadataCommand::SetGroupConfigs {
                group: "g".into(),
                configs: new.clone(),
                expected: Some(ConfigMap::new())
            }
        );
        let cmd = StoredResource::Broker(None).command(new.clone(), new.clone());
        assert_eq!(
            cmd,
            MetadataCommand::SetBrokerConfigs {
                node: None,
                configs: new.clone(),
                expected: Some(new)
            }
        );
        assert_eq!(
            StoredResource::Broker(Some(NodeId(2))).to_string(),
            "broker 2"
        );
    }

    fn image_with_brokers(nodes: &[i32]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for n in nodes {
            image.brokers.insert(
                NodeId(*n),
                spate_controller::BrokerEndpoint {
                    host: "h".into(),
                    port: 1,
                    rack: None,
                },
            );
        }
        image
    }

    fn broker_refused(
        node: Option<i32>,
        overrides: &[(&str, &str)],
        image: &MetadataImage,
    ) -> String {
        let e = validate_broker_overrides(
            node.map(NodeId),
            &map(overrides),
            image,
            &LogConfig::default(),
        )
        .unwrap_err();
        assert_eq!(e.code, ResponseError::InvalidConfig, "{}", e.message);
        e.message
    }

    #[test]
    fn only_kafkas_dynamic_broker_configs_are_accepted() {
        assert_eq!(
            dynamic_effect("log.retention.ms"),
            Some(DynamicEffect::TopicDefault("retention.ms"))
        );
        assert_eq!(
            dynamic_effect("message.max.bytes"),
            Some(DynamicEffect::TopicDefault("max.message.bytes"))
        );
        assert_eq!(
            dynamic_effect("background.threads"),
            Some(DynamicEffect::None)
        );
        for fixed in [
            "node.id",
            "log.dirs",
            "num.partitions",
            "auto.create.topics.enable",
            "no.such",
        ] {
            assert_eq!(dynamic_effect(fixed), None, "{fixed}");
        }
        let names: Vec<_> = NO_EFFECT_DYNAMIC_CONFIGS.iter().map(|d| d.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted, "sorted, no name twice");
        for def in NO_EFFECT_DYNAMIC_CONFIGS {
            assert!(topic_config_of(def.name).is_none(), "{}", def.name);
            check_no_effect_value(def, def.default)
                .unwrap_or_else(|e| panic!("{}: {}", def.name, e.message));
        }
    }

    #[test]
    fn broker_overrides_are_validated_as_kafka_validates_them() {
        let image = image_with_brokers(&[1]);
        let ok = |node: Option<i32>, pairs: &[(&str, &str)]| {
            validate_broker_overrides(node.map(NodeId), &map(pairs), &image, &LogConfig::default())
                .unwrap_or_else(|e| panic!("{pairs:?}: {}", e.message))
        };
        ok(
            Some(1),
            &[("sasl.kerberos.min.time.before.relogin", "58000")],
        );
        ok(
            Some(1),
            &[
                ("background.threads", "9"),
                ("log.cleanup.policy", "delete,compact"),
            ],
        );
        ok(
            None,
            &[("background.threads", "20"), ("log.retention.ms", "1000")],
        );
        assert_eq!(
            broker_refused(Some(1), &[("node.id", "2"), ("log.dirs", "/x")], &image),
            "Cannot update these configs dynamically: Set(log.dirs, node.id)"
        );
        assert_eq!(
            broker_refused(None, &[("sasl.kerberos.min.time.before.relogin", "58000")], &image),
            "Cannot update these configs at default cluster level, broker id must be specified: Set(sasl.kerberos.min.time.before.relogin)"
        );
        assert_eq!(
            broker_refused(Some(1), &[("background.threads", "4")], &image),
            "Dynamic thread count update validation failed for background.threads=4, value should be at least half the current value 10"
        );
        assert_eq!(
            broker_refused(Some(1), &[("num.io.threads", "17")], &image),
            "Dynamic thread count update validation failed for num.io.threads=17, value should not be greater than double the current value 8"
        );
        assert_eq!(
            broker_refused(Some(1), &[("background.threads", "many")], &image),
            "Invalid value many for configuration background.threads: Not a number of type INT"
        );
        assert_eq!(
            broker_refused(Some(1), &[("transaction.partition.verification.enable", "maybe")], &image),
            "Invalid value maybe for configuration transaction.partition.verification.enable: Expected value to be either true or false"
        );
        assert!(
            broker_refused(Some(1), &[("log.retention.ms", "soon")], &image)
                .contains("retention.ms")
        );
        assert!(
            broker_refused(Some(1), &[("log.cleanup.policy", "forever")], &image)
                .contains("cleanup.policy")
        );
        // The half/double rule is relative to the value in force on that broker.
        let mut image = image;
        image.resource_configs.cluster_broker = map(&[("background.threads", "4")]);
        validate_broker_overrides(
            Some(NodeId(1)),
            &map(&[("background.threads", "2")]),
            &image,
            &LogConfig::default(),
        )
        .unwrap();
    }

    #[test]
    fn broker_resources_of_alterations_name_a_registered_broker_or_the_cluster() {
        let image = image_with_brokers(&[1, 2]);
        assert_eq!(broker_alter_resource("", &image).unwrap(), None);
        assert_eq!(broker_alter_resource("2", &image).unwrap(), Some(NodeId(2)));
        for bad in ["x", "-1"] {
            assert_eq!(
                broker_alter_resource(bad, &image).unwrap_err().code,
                ResponseError::InvalidRequest,
                "{bad}"
            );
        }
        let e = broker_alter_resource("7", &image).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ResponseError::BrokerIdNotRegistered,
                "No broker with id 7 found."
            )
        );
    }

    #[test]
    fn effective_topic_defaults_resolve_static_then_cluster_then_broker_then_topic() {
        let static_defaults = LogConfig::default()
            .with_overrides(&map(&[
                ("retention.ms", "1000"),
                ("segment.bytes", "1048576"),
            ]))
            .unwrap();
        let mut image = image_with_brokers(&[1, 2]);
        // Static only.
        let c = effective_log_defaults(&static_defaults, &image, NodeId(1));
        assert_eq!((c.retention_ms, c.segment_bytes), (1000, 1_048_576));
        // Cluster-wide dynamic values reach every broker.
        image.resource_configs.cluster_broker = map(&[
            ("log.retention.ms", "2000"),
            ("background.threads", "9"),
            ("log.cleanup.policy", "delete,compact"),
        ]);
        for node in [1, 2] {
            let c = effective_log_defaults(&static_defaults, &image, NodeId(node));
            assert_eq!(c.retention_ms, 2000, "node {node}");
            assert_eq!(
                c.value_of("cleanup.policy").as_deref(),
                Some("compact,delete")
            );
            assert_eq!(c.segment_bytes, 1_048_576, "untouched static value");
        }
        // A broker's own value wins there only.
        image.resource_configs.brokers.insert(
            NodeId(1),
            map(&[
                ("log.retention.ms", "3000"),
                ("message.max.bytes", "2000000"),
            ]),
        );
        let one = effective_log_defaults(&static_defaults, &image, NodeId(1));
        let two = effective_log_defaults(&static_defaults, &image, NodeId(2));
        assert_eq!((one.retention_ms, two.retention_ms), (3000, 2000));
        assert_eq!(
            one.value_of("max.message.bytes").as_deref(),
            Some("2000000")
        );
        assert_ne!(
            two.value_of("max.message.bytes").as_deref(),
            Some("2000000")
        );
        // A topic's own override wins over all of them.
        let topic = one
            .with_overrides(&map(&[("retention.ms", "4000")]))
            .unwrap();
        assert_eq!(topic.retention_ms, 4000);
        // A stored value the log refuses is skipped; the others still apply.
        image.resource_configs.cluster_broker =
            map(&[("log.retention.ms", "x"), ("log.segment.bytes", "2097152")]);
        let c = effective_log_defaults(&static_defaults, &image, NodeId(2));
        assert_eq!((c.retention_ms, c.segment_bytes), (1000, 2_097_152));
    }

    #[test]
    fn describe_shows_dynamic_values_over_static_ones() {
        let mut config = tests::broker_config();
        config.node_id = NodeId(1);
        let mut image = image_with_brokers(&[1]);
        image.resource_configs.cluster_broker =
            map(&[("log.retention.ms", "2000"), ("background.threads", "12")]);
        image
            .resource_configs
            .brokers
            .insert(NodeId(1), map(&[("background.threads", "9")]));

        let entries = broker_entries_on(&config, &image);
        let names: Vec<_> = entries.iter().map(|e| e.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted, "sorted, no name twice");
        let threads = entry(&entries, "background.threads");
        assert_eq!(
            (threads.value.as_str(), threads.source, threads.read_only),
            ("9", ConfigSource::DynamicBroker, false)
        );
        let sources: Vec<i8> = threads.synonyms.iter().map(|s| s.source.id()).collect();
        assert_eq!(sources, [2, 3, 5]);
        let retention = entry(&entries, "log.retention.ms");
        assert_eq!(
            (
                retention.value.as_str(),
                retention.source,
                retention.read_only
            ),
            ("2000", ConfigSource::DynamicDefaultBroker, false)
        );
        assert!(entry(&entries, "num.partitions").read_only, "not dynamic");
        let relogin = entry(&entries, "sasl.kerberos.min.time.before.relogin");
        assert_eq!(
            (relogin.value.as_str(), relogin.source),
            ("60000", ConfigSource::Default)
        );

        // A topic: its override, then the dynamic levels, then the static ones.
        let entries = topic_entries_on(
            &config.log_defaults,
            &image,
            NodeId(1),
            &map(&[("retention.ms", "5")]),
        );
        let e = entry(&entries, "retention.ms");
        let synonyms: Vec<_> = e
            .synonyms
            .iter()
            .map(|s| (s.name, s.value.as_str(), s.source.id()))
            .collect();
        assert_eq!(
            synonyms,
            [
                ("retention.ms", "5", 1),
                ("log.retention.ms", "2000", 3),
                ("log.retention.ms", "604800000", 5)
            ]
        );
        let entries = topic_entries_on(&config.log_defaults, &image, NodeId(1), &ConfigMap::new());
        let e = entry(&entries, "retention.ms");
        assert_eq!(
            (e.value.as_str(), e.source),
            ("2000", ConfigSource::DynamicDefaultBroker)
        );

        // The cluster-wide resource shows only what is set there.
        let entries = cluster_broker_entries(&image, &config.log_defaults);
        let shown: Vec<_> = entries
            .iter()
            .map(|e| (e.name, e.value.as_str(), e.source.id()))
            .collect();
        assert_eq!(
            shown,
            [
                ("background.threads", "12", 3),
                ("log.retention.ms", "2000", 3)
            ]
        );
    }

    #[test]
    fn list_operations_on_broker_configs_start_from_the_level_below() {
        let mut image = image_with_brokers(&[1]);
        let defaults = LogConfig::default();
        assert_eq!(
            broker_list_base("log.cleanup.policy", Some(NodeId(1)), &image, &defaults).as_deref(),
            Some("delete")
        );
        image.resource_configs.cluster_broker = map(&[("log.cleanup.policy", "compact")]);
        assert_eq!(
            broker_list_base("log.cleanup.policy", Some(NodeId(1)), &image, &defaults).as_deref(),
            Some("compact")
        );
        assert_eq!(
            broker_list_base("log.cleanup.policy", None, &image, &defaults).as_deref(),
            Some("delete")
        );
        assert_eq!(
            broker_config_kind("log.cleanup.policy"),
            Some(ConfigKind::List)
        );
        assert_eq!(
            broker_config_kind("background.threads"),
            Some(ConfigKind::Int)
        );
        assert_eq!(broker_config_kind("node.id"), None);
    }
}
