//! Dynamic broker configs (resource type BROKER): per broker and cluster-wide, resolved over
//! the static settings.

use super::*;

/// What a dynamic broker config does in Spate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DynamicEffect {
    /// The default of this topic config for every topic without its own override, on every
    /// partition of the broker(s) it is set for (see [`effective_log_defaults`]).
    TopicDefault(&'static str),
    /// Read by the broker where it applies (see [`transaction_verification_enabled`]).
    Broker,
    /// Stored and described only: Spate has no machinery this config could steer (a thread
    /// pool, SASL, a connection quota). Kafka stores such configs the same way, e.g. for a
    /// listener that does not use them.
    None,
}

/// One of Kafka's dynamically updatable broker configs (`DynamicBrokerConfig`) that Spate
/// accepts without a topic synonym: these have no effect unless `applied`.
#[derive(Debug)]
pub(crate) struct DynamicConfigDef {
    pub name: &'static str,
    /// The broker reads it ([`DynamicEffect::Broker`]); otherwise stored and described only.
    pub applied: bool,
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

pub(super) const fn dynamic(
    name: &'static str,
    kind: ConfigKind,
    default: &'static str,
    range: Option<(f64, f64)>,
    doc: &'static str,
) -> DynamicConfigDef {
    DynamicConfigDef {
        name,
        applied: false,
        kind,
        default,
        per_broker_only: false,
        range,
        thread_pool: false,
        doc,
    }
}

pub(super) const fn threads(
    name: &'static str,
    default: &'static str,
    doc: &'static str,
) -> DynamicConfigDef {
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

pub(super) const fn per_broker(
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

/// A dynamic config the broker applies itself.
pub(super) const fn applied(def: DynamicConfigDef) -> DynamicConfigDef {
    DynamicConfigDef {
        applied: true,
        ..def
    }
}

pub(super) const INT_MAX: f64 = i32::MAX as f64;

/// Kafka's dynamically updatable broker configs that are not topic defaults, in name order:
/// stored without effect unless `applied` (the `log.*` topic defaults, which do take effect,
/// come from the topic configs).
#[rustfmt::skip]
pub(crate) const BROKER_DYNAMIC_CONFIGS: &[DynamicConfigDef] = &[
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
    applied(dynamic("transaction.partition.verification.enable", ConfigKind::Boolean, "true", None, "Whether a partition leader asks the transaction coordinator, before a producer's first transactional write of a transaction to the partition, that the partition is in the producer's ongoing transaction (KIP-890 part 1); false skips the question and its round trip, and lets such a write in unchecked. Transaction version 2 producers have their partitions added by the leader either way.")),
];

pub(super) fn broker_dynamic_def(name: &str) -> Option<&'static DynamicConfigDef> {
    BROKER_DYNAMIC_CONFIGS.iter().find(|d| d.name == name)
}

/// The topic config a `log.*`-style broker config provides the default for.
pub(super) fn topic_config_of(broker_name: &str) -> Option<&'static str> {
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
    broker_dynamic_def(name).map(|d| {
        if d.applied {
            DynamicEffect::Broker
        } else {
            DynamicEffect::None
        }
    })
}

/// `transaction.partition.verification.enable` on `node`: its own dynamic value, else the
/// cluster-wide one, else Kafka's default (true). Values were validated when set; one that
/// is not a boolean after all keeps the default.
pub(crate) fn transaction_verification_enabled(image: &MetadataImage, node: NodeId) -> bool {
    const NAME: &str = "transaction.partition.verification.enable";
    let stored = &image.resource_configs;
    [stored.broker(Some(node)), stored.broker(None)]
        .into_iter()
        .find_map(|level| level.get(NAME))
        .and_then(|v| match v.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        })
        .unwrap_or(true)
}

/// Renames broker-level `log.*` settings to the topic configs they default, dropping others.
pub(super) fn as_topic_overrides(broker_level: &ConfigMap) -> ConfigMap {
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
pub(super) fn name_set<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    format!("Set({})", names.into_iter().collect::<Vec<_>>().join(", "))
}

/// Checks one value of a dynamic broker config against its type and bounds, as Kafka's
/// `ConfigDef` does.
pub(super) fn check_broker_dynamic_value(
    def: &DynamicConfigDef,
    raw: &str,
) -> Result<(), ApiError> {
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
pub(super) fn current_no_effect_value(
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
            .filter(|n| broker_dynamic_def(n).is_some_and(|d| d.per_broker_only))
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
        let Some(def) = broker_dynamic_def(name) else {
            continue;
        };
        check_broker_dynamic_value(def, value)?;
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
        None => broker_dynamic_def(name).map(|d| d.default.to_owned()),
    }
}

/// The kind of a dynamically updatable broker config.
pub(crate) fn broker_config_kind(name: &str) -> Option<ConfigKind> {
    match topic_config_of(name) {
        Some(topic) => topic_config_kind(topic),
        None => broker_dynamic_def(name).map(|d| d.kind),
    }
}

/// A dynamic value as described: `log.*` ones as the log parses them, others trimmed.
pub(super) fn render_dynamic(name: &str, raw: &str, static_defaults: &LogConfig) -> String {
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
pub(super) fn dynamic_synonyms(
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
pub(super) fn with_dynamic_synonyms(mut entry: ConfigEntry, dynamic: Vec<Synonym>) -> ConfigEntry {
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
    for def in BROKER_DYNAMIC_CONFIGS {
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
                    let def = broker_dynamic_def(name)?;
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
