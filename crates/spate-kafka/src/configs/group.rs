//! Config resources other than topics: group configs (KIP-848 dynamic group configs) and
//! [`StoredResource`], the group or broker whose overrides the controller stores
//! (`SetGroupConfigs`, `SetBrokerConfigs`): one complete map per resource, committed with
//! compare-and-set like a topic's.

use super::*;

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

pub(super) const fn group_int(
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

pub(super) const fn bound(name: &'static str, value: i32) -> GroupBound {
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

pub(super) fn group_config_def(name: &str) -> Option<&'static GroupConfigDef> {
    GROUP_CONFIGS.iter().find(|d| d.name == name)
}

/// Kafka's `ConfigException` text for a value its type refuses.
pub(super) fn invalid_value(name: &str, value: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ResponseError::InvalidConfig,
        format!("Invalid value {value} for configuration {name}: {reason}"),
    )
}

/// Parses one group config value as Kafka's `ConfigDef` does (surrounding spaces ignored) and
/// renders it as Kafka describes it.
pub(super) fn parse_group_value(def: &GroupConfigDef, raw: &str) -> Result<String, ApiError> {
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
pub(super) fn group_values(
    overrides: &ConfigMap,
) -> Result<BTreeMap<&'static str, String>, ApiError> {
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
pub(super) fn check_value_sizes(overrides: &ConfigMap) -> Result<(), ApiError> {
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

    pub(super) fn command(&self, configs: ConfigMap, expected: ConfigMap) -> MetadataCommand {
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
pub(super) fn unknown_broker(node: NodeId) -> ApiError {
    ApiError::new(
        ResponseError::BrokerIdNotRegistered,
        format!("No broker with id {node} found."),
    )
}
