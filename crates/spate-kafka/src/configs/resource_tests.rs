//! Tests of the group and dynamic broker config resources.

#![allow(clippy::unwrap_used)]

use super::tests::{entry, map};
use super::*;

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

fn broker_refused(node: Option<i32>, overrides: &[(&str, &str)], image: &MetadataImage) -> String {
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
    assert_eq!(
        dynamic_effect("transaction.partition.verification.enable"),
        Some(DynamicEffect::Broker)
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
    let names: Vec<_> = BROKER_DYNAMIC_CONFIGS.iter().map(|d| d.name).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(names, sorted, "sorted, no name twice");
    for def in BROKER_DYNAMIC_CONFIGS {
        assert!(topic_config_of(def.name).is_none(), "{}", def.name);
        check_broker_dynamic_value(def, def.default)
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
        broker_refused(Some(1), &[("log.retention.ms", "soon")], &image).contains("retention.ms")
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
fn transaction_verification_is_on_unless_the_broker_or_cluster_value_says_false() {
    const NAME: &str = "transaction.partition.verification.enable";
    let mut image = image_with_brokers(&[1, 2]);
    assert!(
        transaction_verification_enabled(&image, NodeId(1)),
        "Kafka's default"
    );
    // Cluster-wide off reaches every broker; a value's case and spaces do not matter.
    image.resource_configs.cluster_broker = map(&[(NAME, " FALSE ")]);
    assert!(!transaction_verification_enabled(&image, NodeId(1)));
    assert!(!transaction_verification_enabled(&image, NodeId(2)));
    // A broker's own value wins there only.
    image
        .resource_configs
        .brokers
        .insert(NodeId(1), map(&[(NAME, "true")]));
    assert!(transaction_verification_enabled(&image, NodeId(1)));
    assert!(!transaction_verification_enabled(&image, NodeId(2)));
    // A stored value that is not a boolean (validated when set, so only from a later Spate)
    // keeps the default rather than switching the defence off.
    image.resource_configs.cluster_broker = map(&[(NAME, "maybe")]);
    assert!(transaction_verification_enabled(&image, NodeId(2)));
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
