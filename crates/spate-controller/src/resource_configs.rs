//! Config overrides of resources other than topics: groups (Kafka's dynamic group configs,
//! KIP-848, resource type GROUP) and brokers (Kafka's dynamic broker configs, resource type
//! BROKER: per broker, or cluster-wide under the empty name).
//!
//! The controller stores each resource's override map as the front end computed and validated
//! it, the way it stores topic overrides: it does not know what the names mean (the front end
//! checks names, types and bounds), but it bounds everything that grows from requests, so a
//! committed command can never make the image, and every snapshot, grow without limit.
//!
//! Invariants (kept by [`set_group_configs`] and [`set_broker_configs`]):
//! - No stored map is empty: removing the last override removes the resource's entry.
//! - At most [`GROUPS_WITH_CONFIGS_MAX`] groups have overrides; every map has at most
//!   [`CONFIGS_PER_RESOURCE_MAX`] entries, names of 1 to [`CONFIG_NAME_BYTES_MAX`] bytes and
//!   values of at most [`CONFIG_VALUE_BYTES_MAX`] bytes.
//! - Per-broker overrides are kept only for registered brokers (brokers are never
//!   unregistered, so an entry never outlives its broker).
//!
//! Serialization: every field is skipped while empty and defaults to empty, so images written
//! before these configs existed (snapshots) load unchanged, and an image that never used them
//! serializes byte for byte as before.

use crate::metadata::{MetadataError, MetadataImage, MetadataOutcome};
use serde::{Deserialize, Serialize};
use spate_types::NodeId;
use std::collections::BTreeMap;

/// Most groups that may have config overrides at once. Kafka has no such limit; a group's
/// overrides live in the metadata image (and every snapshot) until deleted, so Spate bounds them.
pub const GROUPS_WITH_CONFIGS_MAX: usize = 10_000;
/// Most overrides one resource may hold. Far above the number of configs any resource type
/// has: the front end accepts only known names.
pub const CONFIGS_PER_RESOURCE_MAX: usize = 256;
/// Longest config name stored.
pub const CONFIG_NAME_BYTES_MAX: usize = 255;
/// Longest config value stored. Kafka stores config values with a 16-bit length.
pub const CONFIG_VALUE_BYTES_MAX: usize = i16::MAX as usize;
/// Longest group id: the longest string the Kafka protocol carries.
pub const GROUP_ID_BYTES_MAX: usize = i16::MAX as usize;

/// One resource's overrides, name to value, as clients sent them.
pub type ConfigMap = BTreeMap<String, String>;

static NO_CONFIGS: ConfigMap = BTreeMap::new();

/// Config overrides of groups and brokers (topics keep theirs in their `TopicImage`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceConfigs {
    /// Overrides by group id; a group without overrides has no entry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, ConfigMap>,
    /// Cluster-wide dynamic broker configs (Kafka's DYNAMIC_DEFAULT_BROKER_CONFIG).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cluster_broker: ConfigMap,
    /// Per-broker dynamic broker configs (Kafka's DYNAMIC_BROKER_CONFIG), by node id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub brokers: BTreeMap<NodeId, ConfigMap>,
}

impl ResourceConfigs {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.cluster_broker.is_empty() && self.brokers.is_empty()
    }

    /// A group's overrides (empty for a group without any, or one that does not exist).
    pub fn group(&self, group: &str) -> &ConfigMap {
        self.groups.get(group).unwrap_or(&NO_CONFIGS)
    }

    /// The dynamic overrides of one broker (`Some(node)`) or the cluster-wide ones (`None`).
    pub fn broker(&self, node: Option<NodeId>) -> &ConfigMap {
        match node {
            Some(node) => self.brokers.get(&node).unwrap_or(&NO_CONFIGS),
            None => &self.cluster_broker,
        }
    }

    /// The dynamic broker configs in force on `node`: the cluster-wide ones, overlaid with the
    /// node's own (Kafka's order: a per-broker value wins over the cluster-wide default).
    pub fn dynamic_broker_configs(&self, node: NodeId) -> ConfigMap {
        let mut merged = self.cluster_broker.clone();
        merged.extend(
            self.broker(Some(node))
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        merged
    }
}

/// Applies `SetGroupConfigs`.
pub(crate) fn set_group_configs(
    image: &mut MetadataImage,
    group: &str,
    configs: &ConfigMap,
    expected: Option<&ConfigMap>,
) -> Result<MetadataOutcome, MetadataError> {
    if group.is_empty() {
        return Err(MetadataError::InvalidRequest(
            "config overrides for the empty group id".to_owned(),
        ));
    }
    if group.len() > GROUP_ID_BYTES_MAX {
        return Err(MetadataError::InvalidRequest(format!(
            "group id of {} bytes; at most {GROUP_ID_BYTES_MAX}",
            group.len()
        )));
    }
    check_map(configs)?;
    let stored = &mut image.resource_configs.groups;
    let current = stored.get(group).unwrap_or(&NO_CONFIGS);
    if expected.is_some_and(|e| e != current) {
        return Err(MetadataError::ConcurrentModification(format!(
            "group '{group}'"
        )));
    }
    if configs.is_empty() {
        stored.remove(group);
    } else {
        if !stored.contains_key(group) && stored.len() >= GROUPS_WITH_CONFIGS_MAX {
            return Err(MetadataError::InvalidRequest(format!(
                "{GROUPS_WITH_CONFIGS_MAX} groups already have config overrides, the most Spate keeps; delete some first"
            )));
        }
        stored.insert(group.to_owned(), configs.clone());
    }
    Ok(MetadataOutcome::GroupConfigsSet)
}

/// Applies `SetBrokerConfigs`.
pub(crate) fn set_broker_configs(
    image: &mut MetadataImage,
    node: Option<NodeId>,
    configs: &ConfigMap,
    expected: Option<&ConfigMap>,
) -> Result<MetadataOutcome, MetadataError> {
    if let Some(node) = node {
        if node.0 < 0 {
            return Err(MetadataError::InvalidRequest(format!(
                "broker configs for the negative node id {node}"
            )));
        }
        // Clearing is always allowed; setting only for a broker the cluster knows (Kafka:
        // BROKER_ID_NOT_REGISTERED).
        if !configs.is_empty() && !image.brokers.contains_key(&node) {
            return Err(MetadataError::UnknownBroker {
                node,
                broker_epoch: 0,
            });
        }
    }
    check_map(configs)?;
    let stored = &mut image.resource_configs;
    if expected.is_some_and(|e| e != stored.broker(node)) {
        return Err(MetadataError::ConcurrentModification(match node {
            Some(node) => format!("broker {node}"),
            None => "the cluster-wide broker defaults".to_owned(),
        }));
    }
    match node {
        Some(node) if configs.is_empty() => {
            stored.brokers.remove(&node);
        }
        Some(node) => {
            stored.brokers.insert(node, configs.clone());
        }
        None => stored.cluster_broker = configs.clone(),
    }
    Ok(MetadataOutcome::BrokerConfigsSet)
}

/// The limits every stored override map keeps.
fn check_map(configs: &ConfigMap) -> Result<(), MetadataError> {
    if configs.len() > CONFIGS_PER_RESOURCE_MAX {
        return Err(MetadataError::InvalidRequest(format!(
            "{} config overrides for one resource; at most {CONFIGS_PER_RESOURCE_MAX}",
            configs.len()
        )));
    }
    for (name, value) in configs {
        if name.is_empty() || name.len() > CONFIG_NAME_BYTES_MAX {
            return Err(MetadataError::InvalidRequest(format!(
                "config name of {} bytes; 1 to {CONFIG_NAME_BYTES_MAX}",
                name.len()
            )));
        }
        if value.len() > CONFIG_VALUE_BYTES_MAX {
            return Err(MetadataError::InvalidRequest(format!(
                "the value of {name} has {} bytes; at most {CONFIG_VALUE_BYTES_MAX}",
                value.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::metadata::{BrokerEndpoint, MetadataCommand};
    use crate::state::apply;

    fn map(pairs: &[(&str, &str)]) -> ConfigMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn set_group(group: &str, configs: ConfigMap, expected: Option<ConfigMap>) -> MetadataCommand {
        MetadataCommand::SetGroupConfigs {
            group: group.into(),
            configs,
            expected,
        }
    }

    fn set_broker(
        node: Option<i32>,
        configs: ConfigMap,
        expected: Option<ConfigMap>,
    ) -> MetadataCommand {
        MetadataCommand::SetBrokerConfigs {
            node: node.map(NodeId),
            configs,
            expected,
        }
    }

    fn with_broker(node: i32) -> MetadataImage {
        let mut image = MetadataImage {
            last_applied_index: 1,
            ..MetadataImage::default()
        };
        let out = apply(
            &mut image,
            &MetadataCommand::RegisterBroker {
                node: NodeId(node),
                endpoint: BrokerEndpoint {
                    host: "h".into(),
                    port: 1,
                    rack: None,
                },
                directory_id: uuid::Uuid::nil(),
            },
        );
        assert!(matches!(out, MetadataOutcome::BrokerRegistered { .. }));
        image
    }

    /// Applies a command expected to be rejected and checks the image did not change.
    fn rejected(image: &mut MetadataImage, cmd: &MetadataCommand) -> MetadataError {
        let before = image.clone();
        match apply(image, cmd) {
            MetadataOutcome::Rejected(e) => {
                assert_eq!(*image, before, "a rejected {cmd} changed the image");
                e
            }
            other => panic!("{cmd} should be rejected, got {other:?}"),
        }
    }

    #[test]
    fn group_overrides_are_replaced_whole_and_removed_when_empty() {
        let mut image = MetadataImage::default();
        let a = map(&[("consumer.session.timeout.ms", "50000")]);
        // A group that does not exist may get overrides (Kafka allows it).
        assert_eq!(
            apply(
                &mut image,
                &set_group("g", a.clone(), Some(ConfigMap::new()))
            ),
            MetadataOutcome::GroupConfigsSet
        );
        assert_eq!(image.resource_configs.group("g"), &a);
        assert!(image.resource_configs.group("other").is_empty());
        let b = map(&[("consumer.heartbeat.interval.ms", "6000")]);
        apply(&mut image, &set_group("g", b.clone(), None));
        assert_eq!(
            image.resource_configs.group("g"),
            &b,
            "replaced, not merged"
        );
        apply(&mut image, &set_group("g", ConfigMap::new(), Some(b)));
        assert!(
            image.resource_configs.groups.is_empty(),
            "no empty entry left"
        );
        assert!(image.resource_configs.is_empty());
    }

    #[test]
    fn group_compare_and_set_refuses_a_stale_expectation() {
        let mut image = MetadataImage::default();
        let first = set_group("g", map(&[("a", "1")]), Some(ConfigMap::new()));
        let second = set_group("g", map(&[("b", "2")]), Some(ConfigMap::new()));
        assert_eq!(apply(&mut image, &first), MetadataOutcome::GroupConfigsSet);
        assert_eq!(
            rejected(&mut image, &second),
            MetadataError::ConcurrentModification("group 'g'".into())
        );
        assert_eq!(
            MetadataError::ConcurrentModification("group 'g'".into()).to_string(),
            "group 'g' was changed concurrently"
        );
    }

    #[test]
    fn group_commands_outside_the_limits_are_refused() {
        let mut image = MetadataImage::default();
        for cmd in [
            set_group("", map(&[("a", "1")]), None),
            set_group(
                &"g".repeat(GROUP_ID_BYTES_MAX + 1),
                map(&[("a", "1")]),
                None,
            ),
            set_group("g", map(&[("", "1")]), None),
            set_group(
                "g",
                map(&[(&"n".repeat(CONFIG_NAME_BYTES_MAX + 1), "1")]),
                None,
            ),
            set_group(
                "g",
                map(&[("a", &"v".repeat(CONFIG_VALUE_BYTES_MAX + 1))]),
                None,
            ),
            set_group(
                "g",
                (0..=CONFIGS_PER_RESOURCE_MAX)
                    .map(|i| (format!("c{i}"), "1".to_owned()))
                    .collect(),
                None,
            ),
        ] {
            let e = rejected(&mut image, &cmd);
            assert!(matches!(e, MetadataError::InvalidRequest(_)), "{cmd}: {e}");
        }
        // The limits themselves are accepted.
        let at_limit = map(&[(
            &"n".repeat(CONFIG_NAME_BYTES_MAX),
            &"v".repeat(CONFIG_VALUE_BYTES_MAX),
        )]);
        assert_eq!(
            apply(&mut image, &set_group("g", at_limit, None)),
            MetadataOutcome::GroupConfigsSet
        );
    }

    #[test]
    fn the_number_of_groups_with_overrides_is_bounded() {
        let mut image = MetadataImage::default();
        let one = map(&[("a", "1")]);
        for i in 0..GROUPS_WITH_CONFIGS_MAX {
            let out = apply(&mut image, &set_group(&format!("g{i}"), one.clone(), None));
            assert_eq!(out, MetadataOutcome::GroupConfigsSet);
        }
        let e = rejected(&mut image, &set_group("one-more", one.clone(), None));
        assert!(
            e.to_string().contains("already have config overrides"),
            "{e}"
        );
        // A group that has overrides may still change them, and removing one makes room.
        let two = map(&[("b", "2")]);
        assert_eq!(
            apply(&mut image, &set_group("g0", two, None)),
            MetadataOutcome::GroupConfigsSet
        );
        apply(&mut image, &set_group("g1", ConfigMap::new(), None));
        assert_eq!(
            apply(&mut image, &set_group("one-more", one, None)),
            MetadataOutcome::GroupConfigsSet
        );
    }

    #[test]
    fn broker_overrides_per_broker_and_cluster_wide() {
        let mut image = with_broker(1);
        let cluster = map(&[("background.threads", "9"), ("log.retention.ms", "1000")]);
        let own = map(&[("log.retention.ms", "2000")]);
        assert_eq!(
            apply(
                &mut image,
                &set_broker(None, cluster.clone(), Some(ConfigMap::new()))
            ),
            MetadataOutcome::BrokerConfigsSet
        );
        assert_eq!(
            apply(
                &mut image,
                &set_broker(Some(1), own.clone(), Some(ConfigMap::new()))
            ),
            MetadataOutcome::BrokerConfigsSet
        );
        assert_eq!(image.resource_configs.broker(None), &cluster);
        assert_eq!(image.resource_configs.broker(Some(NodeId(1))), &own);
        // The broker's own value wins over the cluster-wide one.
        assert_eq!(
            image.resource_configs.dynamic_broker_configs(NodeId(1)),
            map(&[("background.threads", "9"), ("log.retention.ms", "2000")])
        );
        assert_eq!(
            image.resource_configs.dynamic_broker_configs(NodeId(2)),
            cluster
        );
        // Stale expectations are refused for both levels.
        let e = rejected(
            &mut image,
            &set_broker(Some(1), ConfigMap::new(), Some(ConfigMap::new())),
        );
        assert_eq!(e, MetadataError::ConcurrentModification("broker 1".into()));
        let e = rejected(
            &mut image,
            &set_broker(None, ConfigMap::new(), Some(ConfigMap::new())),
        );
        assert!(matches!(e, MetadataError::ConcurrentModification(_)), "{e}");
        // Emptied maps leave no entry.
        apply(
            &mut image,
            &set_broker(Some(1), ConfigMap::new(), Some(own)),
        );
        apply(
            &mut image,
            &set_broker(None, ConfigMap::new(), Some(cluster)),
        );
        assert!(image.resource_configs.is_empty());
    }

    #[test]
    fn per_broker_overrides_need_a_registered_broker() {
        let mut image = with_broker(1);
        let e = rejected(&mut image, &set_broker(Some(7), map(&[("a", "1")]), None));
        assert_eq!(
            e,
            MetadataError::UnknownBroker {
                node: NodeId(7),
                broker_epoch: 0
            }
        );
        let e = rejected(&mut image, &set_broker(Some(-1), ConfigMap::new(), None));
        assert!(matches!(e, MetadataError::InvalidRequest(_)), "{e}");
        // Clearing the overrides of an unknown broker changes nothing and is not an error.
        assert_eq!(
            apply(&mut image, &set_broker(Some(7), ConfigMap::new(), None)),
            MetadataOutcome::BrokerConfigsSet
        );
        let e = rejected(
            &mut image,
            &set_broker(
                None,
                map(&[("a", &"v".repeat(CONFIG_VALUE_BYTES_MAX + 1))]),
                None,
            ),
        );
        assert!(matches!(e, MetadataError::InvalidRequest(_)), "{e}");
    }

    #[test]
    fn snapshots_round_trip_and_images_without_resource_configs_load() {
        let mut image = with_broker(1);
        apply(
            &mut image,
            &set_group("g", map(&[("consumer.session.timeout.ms", "50000")]), None),
        );
        apply(
            &mut image,
            &set_broker(None, map(&[("log.retention.ms", "1000")]), None),
        );
        apply(
            &mut image,
            &set_broker(Some(1), map(&[("background.threads", "9")]), None),
        );
        let json = serde_json::to_vec(&image).unwrap();
        let back: MetadataImage = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, image);

        // An image that never used them serializes without the field, as before it existed...
        let plain = with_broker(1);
        let text = serde_json::to_string(&plain).unwrap();
        assert!(!text.contains("resource_configs"), "{text}");
        // ...and an image written by a build without it (a snapshot from before) loads empty.
        let old = r#"{"cluster_id":"c","brokers":{"1":{"host":"h","port":1,"rack":null}},
            "topics":{},"next_producer_id":0,"controller_id":null,"last_applied_index":3}"#;
        let loaded: MetadataImage = serde_json::from_str(old).unwrap();
        assert!(loaded.resource_configs.is_empty());
        assert_eq!(loaded.brokers.len(), 1);
        // A partly filled one loads the rest as empty.
        let partial: ResourceConfigs =
            serde_json::from_str(r#"{"groups":{"g":{"a":"1"}}}"#).unwrap();
        assert_eq!(partial.group("g"), &map(&[("a", "1")]));
        assert!(partial.cluster_broker.is_empty() && partial.brokers.is_empty());
    }

    #[test]
    fn commands_round_trip_through_the_journal_encoding() {
        for cmd in [
            set_group("g", map(&[("a", "1")]), Some(ConfigMap::new())),
            set_broker(None, map(&[("b", "2")]), None),
            set_broker(Some(3), ConfigMap::new(), Some(map(&[("b", "2")]))),
        ] {
            let json = serde_json::to_vec(&cmd).unwrap();
            let back: MetadataCommand = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, cmd);
        }
        // `expected` may be absent.
        let cmd: MetadataCommand =
            serde_json::from_str(r#"{"SetGroupConfigs":{"group":"g","configs":{}}}"#).unwrap();
        assert_eq!(cmd, set_group("g", ConfigMap::new(), None));
    }

    /// Through the real controller: overrides committed before a snapshot (and the log purged
    /// behind it) are back after a reopen, and so are those only in the log after it.
    #[tokio::test]
    async fn overrides_survive_a_snapshot_and_a_reopen() {
        use crate::{Controller, ControllerConfig};
        let dir = tempfile::tempdir().unwrap();
        let node = NodeId(1);
        let endpoint = BrokerEndpoint {
            host: "127.0.0.1".into(),
            port: 9092,
            rack: None,
        };
        let config = ControllerConfig {
            snapshot_every_entries: 5,
            log_entries_kept_after_snapshot: 0,
            ..ControllerConfig::default()
        };
        let c = Controller::open_with_config(dir.path(), node, endpoint.clone(), config.clone())
            .await
            .unwrap();
        // Registration is asynchronous; per-broker configs need it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !c.image().brokers.contains_key(&node) {
            assert!(
                std::time::Instant::now() < deadline,
                "broker never registered"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let group = map(&[("consumer.session.timeout.ms", "50000")]);
        let cluster = map(&[("log.retention.ms", "1000")]);
        let own = map(&[("background.threads", "9")]);
        for cmd in [
            set_group("g", group.clone(), Some(ConfigMap::new())),
            set_broker(None, cluster.clone(), Some(ConfigMap::new())),
        ] {
            assert!(!matches!(
                c.propose(cmd).await.unwrap(),
                MetadataOutcome::Rejected(_)
            ));
        }
        // Enough entries for a snapshot (every 5) to be taken and the log purged behind it.
        for _ in 0..20 {
            c.propose(MetadataCommand::AllocateProducerIds { node, count: 1 })
                .await
                .unwrap();
        }
        let out = c
            .propose(set_broker(Some(1), own.clone(), None))
            .await
            .unwrap();
        assert_eq!(out, MetadataOutcome::BrokerConfigsSet);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !dir.path().join("snapshot").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "no snapshot within 10s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let before = c.image().resource_configs.clone();
        c.shutdown().await.unwrap();

        let c = Controller::open_with_config(dir.path(), node, endpoint, config)
            .await
            .unwrap();
        let after = c.image().resource_configs.clone();
        assert_eq!(after, before);
        assert_eq!(after.group("g"), &group);
        assert_eq!(after.broker(None), &cluster);
        assert_eq!(after.broker(Some(node)), &own);
        c.shutdown().await.unwrap();
    }
}
