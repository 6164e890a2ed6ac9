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
    // Kafka's default is null, which a ConfigEntry here cannot carry: an unset rack is left
    // out rather than described as "". Clients read racks from here (librdkafka's 0101
    // counts the racks of a partition's replicas before fetching from a follower).
    if let Some(rack) = &config.rack {
        entries.push(read_only_entry(
            "broker.rack",
            ConfigKind::String,
            "Rack of this broker, for rack-aware replica placement and follower fetching.",
            rack.clone(),
            String::new(),
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
        let defaults = broker.log_defaults_in(&image);
        let new = change(current, &defaults)?;
        validate_overrides(&defaults, &new)?;
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

// Config resources other than topics: groups and dynamic broker configs.
mod dynamic;
mod group;
#[cfg(test)]
mod resource_tests;

pub use dynamic::effective_log_defaults;
pub(crate) use dynamic::*;
pub(crate) use group::*;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use spate_types::NodeId;

    pub(crate) fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub(crate) fn entry<'a>(entries: &'a [ConfigEntry], name: &str) -> &'a ConfigEntry {
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
            peer_request_timeout_ms: 30_000,
            log_defaults: LogConfig::default(),
            delete_topic_enable: true,
            fenced_broker_retention_ms: 900_000,
            groups: Default::default(),
            txns: Default::default(),
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
        assert!(
            entries.iter().all(|e| e.name != "broker.rack"),
            "no rack set, none described"
        );
    }

    #[test]
    fn a_set_broker_rack_is_described_as_a_static_setting() {
        let mut config = broker_config();
        config.rack = Some("RACK2".into());
        let entries = broker_entries(&config);
        let rack = entry(&entries, "broker.rack");
        assert_eq!(
            (rack.value.as_str(), rack.source, rack.read_only),
            ("RACK2", ConfigSource::StaticBroker, true)
        );
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
