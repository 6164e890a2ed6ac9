//! `spate topic create|list|describe|delete|alter-config|add-partitions`: topics managed over
//! the Kafka protocol the way an admin client manages them (CreateTopics, Metadata,
//! DescribeConfigs, DeleteTopics, IncrementalAlterConfigs, CreatePartitions), so they work
//! against any Kafka-compatible broker.
//!
//! CreateTopics, DeleteTopics and CreatePartitions go to the controller that Metadata names, as
//! Kafka's admin client sends them (brokers from before KIP-590 answer NOT_CONTROLLER otherwise; a moved
//! controller is looked up again); everything else goes to the bootstrap broker.
//!
//! `describe` shows what `kafka-topics.sh --describe` shows: a header line per topic whose
//! configs are those not at their default (any source but DEFAULT_CONFIG), then a row per
//! partition with its leader, leader epoch (Metadata v7+), replicas, ISR and offline replicas
//! (Metadata v5+). Topic ids are printed as Kafka prints them (URL-safe base64 without
//! padding; librdkafka prints standard base64).
//!
//! The fetching functions do I/O; everything that turns responses into rows and text is pure
//! and tested below.

use crate::cli::{self, json, ConnectArgs, Output};
use base64::Engine;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig;
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;
use spate_client::{self as client, ClientError, Cluster};
use std::collections::{BTreeMap, BTreeSet};

mod add_partitions;
mod alter_config;
mod create;
mod delete;
mod describe;
mod list;

use add_partitions::{add_partitions_with_retries, render_partitions_added};
use alter_config::alter_configs;
use create::{create_with_retries, render_created};
use delete::delete_with_retries;
use describe::{describe_with_retries, render_descriptions};
use list::{list_topics, render_list};

/// CreateTopics takes -1 for "the broker's default" partitions and replication factor from
/// this version (KIP-464).
const CREATE_TOPICS_DEFAULTS_VERSION: i16 = 4;
/// CreateTopics answers with the partition count and replication factor from this version.
const CREATE_TOPICS_ECHO_VERSION: i16 = 5;
/// CreateTopics answers with the topic id from this version.
const CREATE_TOPICS_TOPIC_ID_VERSION: i16 = 7;
/// DeleteTopics names topics as (name, id) states from this version.
const DELETE_TOPICS_STATES_VERSION: i16 = 6;
/// Metadata names the controller from this version.
const METADATA_CONTROLLER_VERSION: i16 = 1;
/// Metadata has offline replicas from this version.
const METADATA_OFFLINE_VERSION: i16 = 5;
/// Metadata has leader epochs from this version.
const METADATA_LEADER_EPOCH_VERSION: i16 = 7;
/// Kafka's ConfigResource.Type TOPIC.
const RESOURCE_TOPIC: i8 = 2;
/// Kafka's ConfigSource DEFAULT_CONFIG: the config is at its default.
const CONFIG_SOURCE_DEFAULT: i8 = 5;
/// Kafka's AlterConfigOp.OpType SET and DELETE.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
/// Topics named `__...` are the cluster's own (`__consumer_offsets`, `__transaction_state`).
const INTERNAL_PREFIX: &str = "__";

#[derive(clap::Subcommand)]
pub enum TopicCommand {
    /// Create a topic; prints its topic id.
    Create(CreateArgs),
    /// List topics: NAME, PARTITIONS, REPLICATION FACTOR.
    List(ListArgs),
    /// Describe topics: id, configs that differ from the defaults, and per partition the
    /// leader, leader epoch, replicas, in-sync replicas and offline replicas.
    Describe(NamesArgs),
    /// Delete topics.
    Delete(NamesArgs),
    /// Set or delete a topic's config overrides (the others stay as they are).
    AlterConfig(AlterConfigArgs),
    /// Add partitions to a topic, as `kafka-topics.sh --alter --partitions N`: N is the new
    /// total, larger than the current count.
    AddPartitions(AddPartitionsArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The topic name.
    name: String,
    /// Number of partitions (default: the broker's num.partitions).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    partitions: Option<i32>,
    /// Replicas per partition (default: the broker's default.replication.factor).
    #[arg(long, value_parser = clap::value_parser!(i16).range(1..))]
    replication_factor: Option<i16>,
    /// A topic config, e.g. --config retention.ms=3600000 (repeatable).
    #[arg(long = "config", value_name = "NAME=VALUE", value_parser = parse_config)]
    configs: Vec<(String, String)>,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Also list the cluster's internal topics (`__consumer_offsets`, ...).
    #[arg(long)]
    internal: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(clap::Args)]
pub struct NamesArgs {
    /// Topic names.
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("changes").required(true).multiple(true).args(["set", "delete"])))]
pub struct AlterConfigArgs {
    /// The topic name.
    name: String,
    /// Set a config, e.g. --set retention.ms=3600000 (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_config)]
    set: Vec<(String, String)>,
    /// Remove a config override, so the default applies again (repeatable).
    #[arg(long = "delete", value_name = "NAME")]
    delete: Vec<String>,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(clap::Args)]
pub struct AddPartitionsArgs {
    /// The topic name.
    name: String,
    /// The new partition count: the total, not how many to add (as kafka-topics.sh
    /// --alter --partitions). Existing partitions keep their records and keys may now map to
    /// other partitions.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    partitions: i32,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Runs a `spate topic` command; returns what to print on stdout.
pub fn run(command: TopicCommand) -> anyhow::Result<String> {
    cli::block_on(async {
        match command {
            TopicCommand::Create(args) => {
                each_once(args.configs.iter().map(|(name, _)| name.as_str()))?;
                let mut cluster = args.connect.cluster();
                let created = create_with_retries(
                    &mut cluster,
                    &args.name,
                    args.partitions,
                    args.replication_factor,
                    &args.configs,
                )
                .await?;
                Ok(match args.connect.output {
                    Output::Text => render_created(&created),
                    Output::Json => json(&created)?,
                })
            }
            TopicCommand::List(args) => {
                let mut cluster = args.connect.cluster();
                let topics = list_topics(&mut cluster, args.internal).await?;
                Ok(match args.connect.output {
                    Output::Text => render_list(&topics),
                    Output::Json => json(&Topics { topics })?,
                })
            }
            TopicCommand::Describe(args) => {
                let names = distinct(&args.names);
                let mut cluster = args.connect.cluster();
                let topics = describe_with_retries(&mut cluster, &names).await?;
                Ok(match args.connect.output {
                    Output::Text => render_descriptions(&topics),
                    Output::Json => json(&Topics { topics })?,
                })
            }
            TopicCommand::Delete(args) => {
                let names = distinct(&args.names);
                let mut cluster = args.connect.cluster();
                let deleted = delete_with_retries(&mut cluster, &names).await?;
                Ok(match args.connect.output {
                    Output::Text => deleted
                        .iter()
                        .map(|name| format!("Deleted topic {name}.\n"))
                        .collect(),
                    Output::Json => json(&serde_json::json!({ "deleted": deleted }))?,
                })
            }
            TopicCommand::AlterConfig(args) => {
                let ops = config_ops(&args.set, &args.delete)?;
                let mut cluster = args.connect.cluster();
                alter_configs(&mut cluster, &args.name, ops).await?;
                Ok(match args.connect.output {
                    Output::Text => format!("Altered configs of topic {}.\n", args.name),
                    Output::Json => json(&serde_json::json!({
                        "topic": args.name,
                        "set": args.set.iter().cloned().collect::<BTreeMap<_, _>>(),
                        "deleted": args.delete.iter().map(|name| name.trim()).collect::<Vec<_>>(),
                    }))?,
                })
            }
            TopicCommand::AddPartitions(args) => {
                let mut cluster = args.connect.cluster();
                add_partitions_with_retries(&mut cluster, &args.name, args.partitions).await?;
                Ok(match args.connect.output {
                    Output::Text => render_partitions_added(&args.name, args.partitions),
                    Output::Json => json(&serde_json::json!({
                        "topic": args.name,
                        "partitions": args.partitions,
                    }))?,
                })
            }
        }
    })
}

/// `{"topics": [...]}`, fields in declaration order.
#[derive(Serialize)]
struct Topics<T> {
    topics: Vec<T>,
}

/// `NAME=VALUE` (the value may be empty or contain `=`; the name is trimmed).
fn parse_config(pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected NAME=VALUE, got '{pair}'")),
    }
}

/// An error if a config is named twice (brokers refuse such a request as a whole).
fn each_once<'a>(names: impl IntoIterator<Item = &'a str>) -> anyhow::Result<()> {
    let mut seen = BTreeSet::new();
    for name in names {
        anyhow::ensure!(seen.insert(name), "config {name} is given twice");
    }
    Ok(())
}

/// SET operations, then DELETE operations; each config may be named once.
fn config_ops(set: &[(String, String)], delete: &[String]) -> anyhow::Result<Vec<AlterableConfig>> {
    anyhow::ensure!(
        delete.iter().all(|name| !name.trim().is_empty()),
        "--delete needs a config name"
    );
    each_once(
        set.iter()
            .map(|(name, _)| name.as_str())
            .chain(delete.iter().map(|name| name.trim())),
    )?;
    let sets = set.iter().map(|(name, value)| {
        AlterableConfig::default()
            .with_name(StrBytes::from_string(name.clone()))
            .with_config_operation(OP_SET)
            .with_value(Some(StrBytes::from_string(value.clone())))
    });
    let deletes = delete.iter().map(|name| {
        AlterableConfig::default()
            .with_name(StrBytes::from_string(name.trim().to_owned()))
            .with_config_operation(OP_DELETE)
            .with_value(None)
    });
    Ok(sets.chain(deletes).collect())
}

/// The names in the order given, each once.
fn distinct(names: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .cloned()
        .collect()
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// A topic id as Kafka prints it (URL-safe base64, no padding); none for the nil id (brokers
/// without topic ids, or versions that do not carry them).
fn topic_id(id: uuid::Uuid) -> Option<String> {
    (!id.is_nil()).then(|| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes()))
}

fn not_found(names: &[&str]) -> anyhow::Error {
    match names {
        [name] => anyhow::anyhow!("topic {name} does not exist"),
        names => anyhow::anyhow!("topics {} do not exist", names.join(", ")),
    }
}

/// Where topics are created and deleted: the controller Metadata names, or the bootstrap
/// broker if it names none it lists.
async fn controller(cluster: &mut Cluster) -> anyhow::Result<String> {
    let bootstrap = cluster.bootstrap().await?;
    let (version, metadata) = cluster
        .send(&bootstrap, |version| {
            cli::metadata_request(version, Some(&[]))
        })
        .await?;
    let controller = metadata
        .brokers
        .iter()
        .find(|b| version >= METADATA_CONTROLLER_VERSION && b.node_id == metadata.controller_id)
        .map(|b| client::address(&b.host, b.port));
    Ok(controller.unwrap_or(bootstrap))
}

/// NOT_CONTROLLER: the controller moved since Metadata named it.
fn controller_moved(error: &ClientError) -> bool {
    error.kafka_error() == Some(ResponseError::NotController)
}

#[cfg(test)]
mod tests {
    use super::add_partitions::partitions_added;
    use super::create::{created, CreatedTopic};
    use super::delete::deleted;
    use super::describe::{descriptions, non_default_configs, PartitionRow};
    use super::list::{listed_topics, ListedTopic};
    use super::*;
    use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
    use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
    use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
    use kafka_protocol::messages::describe_configs_response::{
        DescribeConfigsResourceResult, DescribeConfigsResult,
    };
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{
        BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
        DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
        IncrementalAlterConfigsRequest,
    };

    const ID: uuid::Uuid = uuid::Uuid::from_bytes([
        0x4a, 0x4f, 0x2f, 0xe1, 0xae, 0x22, 0x48, 0xb5, 0xb0, 0x36, 0xd7, 0xfc, 0x53, 0x32, 0xae,
        0x28,
    ]);

    fn partition(
        index: i32,
        leader: i32,
        replicas: &[i32],
        isr: &[i32],
    ) -> MetadataResponsePartition {
        MetadataResponsePartition::default()
            .with_partition_index(index)
            .with_leader_id(BrokerId(leader))
            .with_leader_epoch(3)
            .with_replica_nodes(replicas.iter().map(|&b| BrokerId(b)).collect())
            .with_isr_nodes(isr.iter().map(|&b| BrokerId(b)).collect())
    }

    fn config_entry(name: &str, value: &str, source: i8) -> DescribeConfigsResourceResult {
        DescribeConfigsResourceResult::default()
            .with_name(StrBytes::from_string(name.to_owned()))
            .with_value(Some(StrBytes::from_string(value.to_owned())))
            .with_config_source(source)
    }

    fn metadata_topic(
        name: &str,
        partitions: Vec<MetadataResponsePartition>,
    ) -> MetadataResponseTopic {
        MetadataResponseTopic::default()
            .with_name(Some(topic_name(name)))
            .with_topic_id(ID)
            .with_partitions(partitions)
    }

    #[test]
    fn topic_ids_print_as_kafka_prints_them() {
        assert_eq!(topic_id(ID).as_deref(), Some("Sk8v4a4iSLWwNtf8UzKuKA"));
        assert_eq!(topic_id(uuid::Uuid::nil()), None);
    }

    #[test]
    fn config_flags_need_a_name_and_an_equals_sign() {
        assert_eq!(
            parse_config("retention.ms=1000"),
            Ok(("retention.ms".into(), "1000".into()))
        );
        assert_eq!(parse_config(" a =x=y"), Ok(("a".into(), "x=y".into())));
        assert_eq!(parse_config("a="), Ok(("a".into(), String::new())));
        assert_eq!(
            parse_config("retention.ms"),
            Err("expected NAME=VALUE, got 'retention.ms'".into())
        );
        assert!(parse_config("=1").is_err());
        let twice = each_once(["a", "b", "a"]).expect_err("twice");
        assert_eq!(twice.to_string(), "config a is given twice");
        assert!(each_once(["a", "b"]).is_ok());
    }

    #[test]
    fn alter_ops_set_then_delete_each_name_once() {
        let ops = config_ops(
            &[("retention.ms".into(), "5".into())],
            &["cleanup.policy".into()],
        )
        .expect("ops");
        let summary: Vec<_> = ops
            .iter()
            .map(|o| (o.name.as_str(), o.config_operation, o.value.as_deref()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("retention.ms", OP_SET, Some("5")),
                ("cleanup.policy", OP_DELETE, None)
            ]
        );
        let err = config_ops(&[("a".into(), "1".into())], &["a".into()]).expect_err("both");
        assert_eq!(err.to_string(), "config a is given twice");
    }

    #[test]
    fn created_reads_the_id_and_echo_where_the_version_has_them() {
        let result = CreatableTopicResult::default()
            .with_name(topic_name("t"))
            .with_topic_id(ID)
            .with_num_partitions(3)
            .with_replication_factor(1);
        let c = created(&result, 7, None, None).expect("created");
        assert_eq!(
            c,
            CreatedTopic {
                topic: "t".into(),
                topic_id: Some("Sk8v4a4iSLWwNtf8UzKuKA".into()),
                partitions: Some(3),
                replication_factor: Some(1),
            }
        );
        assert_eq!(
            render_created(&c),
            "Created topic t (topic id Sk8v4a4iSLWwNtf8UzKuKA, 3 partitions, replication factor 1).\n"
        );
        let old = created(&result, 4, Some(2), Some(1)).expect("created");
        assert_eq!(
            (old.topic_id, old.partitions, old.replication_factor),
            (None, Some(2), Some(1))
        );
        let bare = created(&result, 4, None, None).expect("created");
        assert_eq!(render_created(&bare), "Created topic t.\n");
    }

    #[test]
    fn create_errors_carry_the_code_and_the_brokers_message() {
        let result = CreatableTopicResult::default()
            .with_name(topic_name("t"))
            .with_error_code(ResponseError::InvalidReplicationFactor.code())
            .with_error_message(Some(StrBytes::from_static_str(
                "Unable to replicate the partition 2 time(s): only 1 broker(s) are registered.",
            )));
        let err = created(&result, 7, None, Some(2)).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "cannot create topic t: INVALID_REPLICATION_FACTOR: Unable to replicate the \
             partition 2 time(s): only 1 broker(s) are registered."
        );
        let exists = CreatableTopicResult::default()
            .with_name(topic_name("t"))
            .with_error_code(ResponseError::TopicAlreadyExists.code());
        let err = created(&exists, 7, None, None).expect_err("exists");
        assert!(
            err.to_string()
                .starts_with("cannot create topic t: TOPIC_ALREADY_EXISTS ("),
            "{err}"
        );
    }

    #[test]
    fn list_hides_internal_topics_unless_asked_and_sorts() {
        let topics = vec![
            metadata_topic("zeta", vec![partition(0, 1, &[1], &[1])]),
            metadata_topic("__consumer_offsets", vec![partition(0, 1, &[1], &[1])])
                .with_is_internal(true),
            metadata_topic("__private", vec![]),
            metadata_topic(
                "alpha",
                vec![
                    partition(1, 2, &[2, 3], &[2]),
                    partition(0, 1, &[1, 2, 3], &[1]),
                ],
            ),
        ];
        let names = |listed: Vec<ListedTopic>| -> Vec<String> {
            listed.into_iter().map(|t| t.topic).collect()
        };
        assert_eq!(names(listed_topics(&topics, false)), vec!["alpha", "zeta"]);
        assert_eq!(
            names(listed_topics(&topics, true)),
            vec!["__consumer_offsets", "__private", "alpha", "zeta"]
        );
        let listed = listed_topics(&topics, false);
        assert_eq!(
            render_list(&listed),
            "NAME   PARTITIONS  REPLICATION FACTOR\n\
             alpha  2           3\n\
             zeta   1           1\n"
        );
        assert!(!listed[0].internal);
        assert!(listed_topics(&topics, true)[1].internal, "named __");
    }

    #[test]
    fn describe_shows_partitions_with_leaders_epochs_and_offline_replicas() {
        let topics = vec![metadata_topic(
            "orders",
            vec![
                partition(1, -1, &[2, 3], &[])
                    .with_offline_replicas(vec![BrokerId(2), BrokerId(3)])
                    .with_error_code(ResponseError::LeaderNotAvailable.code()),
                partition(0, 1, &[1, 2, 3], &[1, 2]).with_offline_replicas(vec![BrokerId(3)]),
            ],
        )];
        let configs = BTreeMap::from([(
            "orders".to_owned(),
            BTreeMap::from([
                ("retention.ms".to_owned(), Some("1000".to_owned())),
                ("sasl.secret".to_owned(), None),
            ]),
        )]);
        let d = descriptions(&["orders".to_owned()], &topics, 12, configs).expect("described");
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].partition_count, d[0].replication_factor), (2, 3));
        assert_eq!(
            d[0].partitions[0],
            PartitionRow {
                partition: 0,
                leader: Some(1),
                leader_epoch: Some(3),
                replicas: vec![1, 2, 3],
                isr: vec![1, 2],
                offline_replicas: vec![3],
                error: None,
            }
        );
        assert_eq!(d[0].partitions[1].leader, None);
        assert_eq!(
            d[0].partitions[1].error.as_deref(),
            Some("LEADER_NOT_AVAILABLE")
        );
        assert_eq!(
            render_descriptions(&d),
            "Topic: orders\tTopicId: Sk8v4a4iSLWwNtf8UzKuKA\tPartitionCount: 2\t\
             ReplicationFactor: 3\tConfigs: retention.ms=1000,sasl.secret=null\n\
             PARTITION  LEADER  LEADER EPOCH  REPLICAS  ISR  OFFLINE\n\
             0          1       3             1,2,3     1,2  3\n\
             1          -       3             2,3       -    2,3\n\
             Partition 1 reports LEADER_NOT_AVAILABLE.\n"
        );
        let json = serde_json::to_value(&d[0]).expect("json");
        assert_eq!(json["partitions"][1]["leader"], serde_json::Value::Null);
        assert_eq!(json["configs"]["retention.ms"], "1000");
        assert_eq!(json["topic_id"], "Sk8v4a4iSLWwNtf8UzKuKA");

        // Before Metadata v7 there are no epochs, before v5 no offline replicas.
        let old = descriptions(&["orders".to_owned()], &topics, 4, BTreeMap::new()).expect("v4");
        assert_eq!(old[0].partitions[0].leader_epoch, None);
        assert!(old[0].partitions[0].offline_replicas.is_empty());
        assert!(old[0].configs.is_empty());
    }

    #[test]
    fn describe_names_every_topic_that_does_not_exist() {
        let topics = vec![
            metadata_topic("a", vec![partition(0, 1, &[1], &[1])]),
            MetadataResponseTopic::default()
                .with_name(Some(topic_name("b")))
                .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
        ];
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let err = descriptions(&names(&["b"]), &topics, 12, BTreeMap::new()).expect_err("b");
        assert_eq!(err.to_string(), "topic b does not exist");
        let err = descriptions(&names(&["a", "b", "c"]), &topics, 12, BTreeMap::new())
            .expect_err("b and c");
        assert_eq!(err.to_string(), "topics b, c do not exist");
        let loading = vec![MetadataResponseTopic::default()
            .with_name(Some(topic_name("a")))
            .with_error_code(ResponseError::LeaderNotAvailable.code())];
        let err = descriptions(&names(&["a"]), &loading, 12, BTreeMap::new()).expect_err("a");
        assert_eq!(
            err.downcast_ref::<ClientError>()
                .and_then(ClientError::kafka_error),
            Some(ResponseError::LeaderNotAvailable),
            "retried by describe_with_retries"
        );
    }

    #[test]
    fn configs_at_their_default_are_left_out() {
        let result = DescribeConfigsResult::default().with_configs(vec![
            config_entry("retention.ms", "1", 1),
            config_entry("segment.bytes", "2", 4),
            config_entry("cleanup.policy", "delete", CONFIG_SOURCE_DEFAULT),
        ]);
        let configs = non_default_configs(&result);
        assert_eq!(
            configs.keys().map(String::as_str).collect::<Vec<_>>(),
            vec!["retention.ms", "segment.bytes"]
        );
    }

    #[test]
    fn delete_reports_missing_and_failed_topics_and_what_was_deleted() {
        let result = |name: &str, code: i16, message: Option<&'static str>| {
            DeletableTopicResult::default()
                .with_name(Some(topic_name(name)))
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_static_str))
        };
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let ok = DeleteTopicsResponse::default()
            .with_responses(vec![result("b", 0, None), result("a", 0, None)]);
        assert_eq!(
            deleted(&names(&["a", "b"]), &ok).expect("deleted"),
            vec!["a", "b"]
        );
        let mixed = DeleteTopicsResponse::default().with_responses(vec![
            result("a", 0, None),
            result("nope", ResponseError::UnknownTopicOrPartition.code(), None),
            result(
                "locked",
                ResponseError::TopicDeletionDisabled.code(),
                Some("Topic deletion is disabled."),
            ),
        ]);
        let err = deleted(&names(&["a", "nope", "locked"]), &mixed).expect_err("partial");
        assert_eq!(
            err.to_string(),
            "topic nope does not exist; cannot delete topic locked: TOPIC_DELETION_DISABLED: \
             Topic deletion is disabled. (deleted: a)"
        );
        let moved = DeleteTopicsResponse::default().with_responses(vec![result(
            "a",
            ResponseError::NotController.code(),
            None,
        )]);
        let err = deleted(&names(&["a"]), &moved).expect_err("moved");
        assert!(
            err.downcast_ref::<ClientError>()
                .is_some_and(controller_moved),
            "retried by delete_with_retries: {err}"
        );
    }

    #[test]
    fn add_partitions_reports_unknown_topics_and_the_brokers_refusal() {
        let response = |code: i16, message: Option<&'static str>| {
            CreatePartitionsResponse::default().with_results(vec![
                CreatePartitionsTopicResult::default()
                    .with_name(topic_name("t"))
                    .with_error_code(code)
                    .with_error_message(message.map(StrBytes::from_static_str)),
            ])
        };
        assert!(partitions_added("t", &response(0, None)).is_ok());
        assert_eq!(
            render_partitions_added("t", 4),
            "Topic t now has 4 partitions.\n"
        );

        let err = partitions_added(
            "t",
            &response(ResponseError::UnknownTopicOrPartition.code(), None),
        )
        .expect_err("unknown");
        assert_eq!(err.to_string(), "topic t does not exist");

        let err = partitions_added(
            "t",
            &response(
                ResponseError::InvalidPartitions.code(),
                Some("Topic already has 3 partition(s)."),
            ),
        )
        .expect_err("not an increase");
        assert_eq!(
            err.to_string(),
            "cannot add partitions to topic t: INVALID_PARTITIONS: Topic already has 3 partition(s)."
        );

        let err = partitions_added("t", &response(ResponseError::NotController.code(), None))
            .expect_err("moved");
        assert!(
            err.downcast_ref::<ClientError>()
                .is_some_and(controller_moved),
            "retried by add_partitions_with_retries: {err}"
        );

        let err = partitions_added("other", &response(0, None)).expect_err("not mentioned");
        assert_eq!(
            err.to_string(),
            "the CreatePartitions response does not mention other"
        );
    }

    // ---- against a scripted broker -------------------------------------------------------

    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
    use kafka_protocol::messages::{
        ApiKey, CreateTopicsResponse, DescribeConfigsResponse, IncrementalAlterConfigsResponse,
        MetadataRequest, MetadataResponse,
    };
    use spate_test_broker::{Received, ScriptedBroker};
    use std::sync::{Arc, Mutex};

    /// Requests as the scripted broker decoded them.
    #[derive(Clone, Debug)]
    enum Seen {
        Create(i16, CreateTopicsRequest),
        Metadata(i16, MetadataRequest),
        DescribeConfigs(DescribeConfigsRequest),
        Delete(i16, DeleteTopicsRequest),
        Alter(IncrementalAlterConfigsRequest),
        AddPartitions(i16, CreatePartitionsRequest),
    }

    fn topic_versions(
        create_max: i16,
        delete_max: i16,
        metadata_max: i16,
    ) -> Vec<(ApiKey, i16, i16)> {
        vec![
            (ApiKey::ApiVersions, 0, 3),
            (ApiKey::Metadata, 0, metadata_max),
            (ApiKey::CreateTopics, 2, create_max),
            (ApiKey::DeleteTopics, 1, delete_max),
            (ApiKey::DescribeConfigs, 1, 4),
            (ApiKey::IncrementalAlterConfigs, 0, 1),
            (ApiKey::CreatePartitions, 0, 3),
        ]
    }

    /// A broker with the topic "orders" (two partitions, retention.ms overridden) that offers
    /// the topic APIs up to the given versions.
    async fn topic_broker(
        create_max: i16,
        delete_max: i16,
        metadata_max: i16,
    ) -> (ScriptedBroker, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let versions = topic_versions(create_max, delete_max, metadata_max);
        let broker = ScriptedBroker::start(versions, move |req: &Received| {
            let mut log = log.lock().expect("lock");
            match req.api_key {
                ApiKey::ApiVersions => req.respond(&req.api_versions()),
                ApiKey::CreateTopics => {
                    let request: CreateTopicsRequest = req.decode();
                    log.push(Seen::Create(req.version, request.clone()));
                    let topics = request
                        .topics
                        .iter()
                        .map(|t| {
                            let result = CreatableTopicResult::default().with_name(t.name.clone());
                            if t.name.0.as_str() == "orders" {
                                result
                                    .with_error_code(ResponseError::TopicAlreadyExists.code())
                                    .with_error_message(Some(StrBytes::from_static_str(
                                        "Topic 'orders' already exists.",
                                    )))
                            } else {
                                result
                                    .with_topic_id(ID)
                                    .with_num_partitions(6)
                                    .with_replication_factor(1)
                            }
                        })
                        .collect();
                    req.respond(&CreateTopicsResponse::default().with_topics(topics))
                }
                ApiKey::Metadata => {
                    let request: MetadataRequest = req.decode();
                    log.push(Seen::Metadata(req.version, request.clone()));
                    let orders = metadata_topic(
                        "orders",
                        vec![partition(0, 1, &[1], &[1]), partition(1, 1, &[1], &[1])],
                    );
                    let topics = match request.topics {
                        None => vec![orders],
                        // v0 has no null: an empty list means every topic.
                        Some(wanted) if wanted.is_empty() && req.version == 0 => vec![orders],
                        Some(wanted) => wanted
                            .iter()
                            .filter_map(|t| t.name.clone())
                            .map(|name| {
                                if name.0.as_str() == "orders" {
                                    orders.clone()
                                } else {
                                    MetadataResponseTopic::default()
                                        .with_name(Some(name))
                                        .with_error_code(
                                            ResponseError::UnknownTopicOrPartition.code(),
                                        )
                                }
                            })
                            .collect(),
                    };
                    req.respond(&MetadataResponse::default().with_topics(topics))
                }
                ApiKey::DescribeConfigs => {
                    let request: DescribeConfigsRequest = req.decode();
                    log.push(Seen::DescribeConfigs(request.clone()));
                    let results = request
                        .resources
                        .iter()
                        .map(|r| {
                            let result = DescribeConfigsResult::default()
                                .with_resource_type(r.resource_type)
                                .with_resource_name(r.resource_name.clone());
                            if r.resource_name.as_str() != "orders" {
                                return result.with_error_code(
                                    ResponseError::UnknownTopicOrPartition.code(),
                                );
                            }
                            result.with_configs(vec![
                                config_entry("retention.ms", "1000", 1),
                                config_entry("cleanup.policy", "delete", CONFIG_SOURCE_DEFAULT),
                            ])
                        })
                        .collect();
                    req.respond(&DescribeConfigsResponse::default().with_results(results))
                }
                ApiKey::DeleteTopics => {
                    let request: DeleteTopicsRequest = req.decode();
                    log.push(Seen::Delete(req.version, request.clone()));
                    let names: Vec<TopicName> = if req.version >= DELETE_TOPICS_STATES_VERSION {
                        request
                            .topics
                            .iter()
                            .filter_map(|t| t.name.clone())
                            .collect()
                    } else {
                        request.topic_names.clone()
                    };
                    let responses = names
                        .into_iter()
                        .map(|name| DeletableTopicResult::default().with_name(Some(name)))
                        .collect();
                    req.respond(&DeleteTopicsResponse::default().with_responses(responses))
                }
                ApiKey::IncrementalAlterConfigs => {
                    let request: IncrementalAlterConfigsRequest = req.decode();
                    log.push(Seen::Alter(request.clone()));
                    let responses = request
                        .resources
                        .iter()
                        .map(|r| {
                            let response = AlterConfigsResourceResponse::default()
                                .with_resource_type(r.resource_type)
                                .with_resource_name(r.resource_name.clone());
                            if r.resource_name.as_str() == "orders" {
                                response
                            } else {
                                response
                                    .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            }
                        })
                        .collect();
                    req.respond(
                        &IncrementalAlterConfigsResponse::default().with_responses(responses),
                    )
                }
                ApiKey::CreatePartitions => {
                    let request: CreatePartitionsRequest = req.decode();
                    log.push(Seen::AddPartitions(req.version, request.clone()));
                    let results = request
                        .topics
                        .iter()
                        .map(|t| {
                            let result =
                                CreatePartitionsTopicResult::default().with_name(t.name.clone());
                            match (t.name.0.as_str(), t.count) {
                                ("orders", count) if count > 2 => result,
                                ("orders", _) => result
                                    .with_error_code(ResponseError::InvalidPartitions.code())
                                    .with_error_message(Some(StrBytes::from_static_str(
                                        "Topic already has 2 partition(s).",
                                    ))),
                                _ => result
                                    .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                            }
                        })
                        .collect();
                    req.respond(&CreatePartitionsResponse::default().with_results(results))
                }
                other => panic!("the topic broker does not answer {other:?}"),
            }
        })
        .await;
        (broker, seen)
    }

    #[tokio::test]
    async fn create_asks_for_broker_defaults_and_sends_configs() {
        let (broker, seen) = topic_broker(7, 6, 12).await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let configs = vec![
            ("retention.ms".to_owned(), "1000".to_owned()),
            ("cleanup.policy".to_owned(), "compact".to_owned()),
        ];
        let c = create_with_retries(&mut cluster, "events", None, None, &configs)
            .await
            .expect("created");
        assert_eq!(c.topic_id.as_deref(), Some("Sk8v4a4iSLWwNtf8UzKuKA"));
        assert_eq!(c.partitions, Some(6));
        let seen = seen.lock().expect("lock").clone();
        let Some(Seen::Create(version, request)) =
            seen.iter().find(|s| matches!(s, Seen::Create(..)))
        else {
            panic!("no CreateTopics: {seen:?}");
        };
        assert_eq!(*version, 7);
        assert!(request.timeout_ms > 0 && request.timeout_ms <= 5_000);
        assert!(!request.validate_only);
        let topic = &request.topics[0];
        assert_eq!((topic.num_partitions, topic.replication_factor), (-1, -1));
        let sent: Vec<_> = topic
            .configs
            .iter()
            .map(|c| (c.name.to_string(), c.value.as_deref().map(str::to_owned)))
            .collect();
        assert_eq!(
            sent,
            vec![
                ("retention.ms".to_owned(), Some("1000".to_owned())),
                ("cleanup.policy".to_owned(), Some("compact".to_owned()))
            ]
        );

        let err = create_with_retries(&mut cluster, "orders", Some(1), Some(1), &[])
            .await
            .expect_err("exists");
        assert_eq!(
            format!("{err:#}"),
            "cannot create topic orders: TOPIC_ALREADY_EXISTS: Topic 'orders' already exists."
        );
    }

    #[tokio::test]
    async fn create_on_a_broker_without_defaults_needs_both_numbers() {
        let (broker, seen) = topic_broker(3, 6, 12).await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let err = create_with_retries(&mut cluster, "events", Some(3), None, &[])
            .await
            .expect_err("needs -r");
        assert!(
            err.to_string()
                .contains("give --partitions and --replication-factor"),
            "{err}"
        );
        let creates = |seen: &Arc<Mutex<Vec<Seen>>>| {
            seen.lock()
                .expect("lock")
                .iter()
                .filter(|s| matches!(s, Seen::Create(..)))
                .count()
        };
        assert_eq!(creates(&seen), 0, "nothing was sent");
        let c = create_with_retries(&mut cluster, "events", Some(3), Some(1), &[])
            .await
            .expect("created");
        // v3 echoes nothing: the numbers asked for are reported, and there is no topic id.
        assert_eq!(
            (c.topic_id, c.partitions, c.replication_factor),
            (None, Some(3), Some(1))
        );
        assert_eq!(creates(&seen), 1);
    }

    #[tokio::test]
    async fn topic_changes_go_to_the_controller_and_follow_it() {
        let (controller, seen) = topic_broker(7, 6, 12).await;
        let controller_port: i32 = controller
            .addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        // The bootstrap broker (node 1) names itself the controller in its 1st and 4th
        // Metadata answers (before create and before add-partitions), answers NOT_CONTROLLER,
        // and names node 2 otherwise.
        let mut metadata_answers = 0;
        let refused = Arc::new(Mutex::new(Vec::new()));
        let refusals = refused.clone();
        let bootstrap =
            ScriptedBroker::start(topic_versions(7, 6, 12), move |req| match req.api_key {
                ApiKey::ApiVersions => req.respond(&req.api_versions()),
                ApiKey::Metadata => {
                    metadata_answers += 1;
                    let broker = |id: i32, port: i32| {
                        MetadataResponseBroker::default()
                            .with_node_id(BrokerId(id))
                            .with_host(StrBytes::from_static_str("127.0.0.1"))
                            .with_port(port)
                    };
                    req.respond(
                        &MetadataResponse::default()
                            .with_brokers(vec![
                                broker(1, req.broker_port),
                                broker(2, controller_port),
                            ])
                            .with_controller_id(BrokerId(if matches!(metadata_answers, 1 | 4) {
                                1
                            } else {
                                2
                            })),
                    )
                }
                ApiKey::CreateTopics => {
                    refusals.lock().expect("lock").push(req.api_key);
                    let request: CreateTopicsRequest = req.decode();
                    let topics = request
                        .topics
                        .into_iter()
                        .map(|t| {
                            CreatableTopicResult::default()
                                .with_name(t.name)
                                .with_error_code(ResponseError::NotController.code())
                        })
                        .collect();
                    req.respond(&CreateTopicsResponse::default().with_topics(topics))
                }
                ApiKey::CreatePartitions => {
                    refusals.lock().expect("lock").push(req.api_key);
                    let request: CreatePartitionsRequest = req.decode();
                    let results = request
                        .topics
                        .into_iter()
                        .map(|t| {
                            CreatePartitionsTopicResult::default()
                                .with_name(t.name)
                                .with_error_code(ResponseError::NotController.code())
                        })
                        .collect();
                    req.respond(&CreatePartitionsResponse::default().with_results(results))
                }
                other => panic!("the bootstrap broker is not asked for {other:?}"),
            })
            .await;
        let mut cluster = cli::cluster(&bootstrap.addr, 5_000);
        let created = create_with_retries(&mut cluster, "events", None, None, &[])
            .await
            .expect("created on the controller");
        assert_eq!(created.partitions, Some(6));
        let names = vec!["a".to_owned()];
        assert_eq!(
            delete_with_retries(&mut cluster, &names)
                .await
                .expect("deleted on the controller"),
            names
        );
        add_partitions_with_retries(&mut cluster, "orders", 3)
            .await
            .expect("grown on the controller");
        let seen = seen.lock().expect("lock").clone();
        assert!(
            matches!(
                seen.as_slice(),
                [Seen::Create(..), Seen::Delete(..), Seen::AddPartitions(..)]
            ),
            "{seen:?}"
        );
        assert_eq!(
            *refused.lock().expect("lock"),
            vec![ApiKey::CreateTopics, ApiKey::CreatePartitions],
            "each moved-controller answer was followed"
        );
    }

    #[tokio::test]
    async fn describe_joins_metadata_and_non_default_configs() {
        let (broker, seen) = topic_broker(7, 6, 12).await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let d = describe_with_retries(&mut cluster, &["orders".to_owned()])
            .await
            .expect("described");
        assert_eq!(d[0].partition_count, 2);
        assert_eq!(
            d[0].configs,
            BTreeMap::from([("retention.ms".to_owned(), Some("1000".to_owned()))])
        );
        for s in seen.lock().expect("lock").iter() {
            match s {
                Seen::Metadata(version, request) => {
                    assert_eq!(*version, 12);
                    assert!(!request.allow_auto_topic_creation, "describe never creates");
                }
                Seen::DescribeConfigs(request) => {
                    assert_eq!(request.resources[0].resource_type, RESOURCE_TOPIC);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let err = describe_with_retries(&mut cluster, &["orders".to_owned(), "gone".to_owned()])
            .await
            .expect_err("gone");
        assert_eq!(format!("{err:#}"), "topic gone does not exist");
    }

    #[tokio::test]
    async fn list_asks_for_all_topics() {
        for (metadata_max, all) in [(12, None), (0, Some(0))] {
            let (broker, seen) = topic_broker(7, 6, metadata_max).await;
            let mut cluster = cli::cluster(&broker.addr, 5_000);
            let topics = list_topics(&mut cluster, false).await.expect("listed");
            assert_eq!(topics.len(), 1);
            let seen = seen.lock().expect("lock").clone();
            let [Seen::Metadata(_, request)] = seen.as_slice() else {
                panic!("no Metadata: {seen:?}");
            };
            // v0 has no null: an empty list means every topic.
            assert_eq!(request.topics.as_ref().map(Vec::len), all);
        }
    }

    #[tokio::test]
    async fn delete_names_topics_as_the_version_wants() {
        for delete_max in [6, 5] {
            let (broker, seen) = topic_broker(7, delete_max, 12).await;
            let mut cluster = cli::cluster(&broker.addr, 5_000);
            let names = vec!["a".to_owned(), "b".to_owned()];
            assert_eq!(
                delete_with_retries(&mut cluster, &names)
                    .await
                    .expect("deleted"),
                names
            );
            let seen = seen.lock().expect("lock").clone();
            let Some(Seen::Delete(version, request)) =
                seen.iter().find(|s| matches!(s, Seen::Delete(..)))
            else {
                panic!("no DeleteTopics: {seen:?}");
            };
            assert_eq!(*version, delete_max);
            if delete_max >= DELETE_TOPICS_STATES_VERSION {
                assert_eq!(request.topics.len(), 2);
                assert!(request.topic_names.is_empty());
            } else {
                assert_eq!(request.topic_names.len(), 2);
                assert!(request.topics.is_empty());
            }
        }
    }

    #[tokio::test]
    async fn add_partitions_asks_for_the_new_total_and_names_refusals() {
        let (broker, seen) = topic_broker(7, 6, 12).await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        add_partitions_with_retries(&mut cluster, "orders", 5)
            .await
            .expect("grown");
        let requests: Vec<(i16, CreatePartitionsRequest)> = seen
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|s| match s {
                Seen::AddPartitions(version, request) => Some((*version, request.clone())),
                _ => None,
            })
            .collect();
        let [(version, request)] = requests.as_slice() else {
            panic!("not one CreatePartitions: {requests:?}");
        };
        assert_eq!(*version, 3);
        assert!(request.timeout_ms > 0 && request.timeout_ms <= 5_000);
        assert!(!request.validate_only);
        let topic = &request.topics[0];
        assert_eq!((topic.name.0.as_str(), topic.count), ("orders", 5));
        assert_eq!(topic.assignments, None, "the broker assigns replicas");

        let err = add_partitions_with_retries(&mut cluster, "orders", 2)
            .await
            .expect_err("not an increase");
        assert_eq!(
            format!("{err:#}"),
            "cannot add partitions to topic orders: INVALID_PARTITIONS: \
             Topic already has 2 partition(s)."
        );
        let err = add_partitions_with_retries(&mut cluster, "gone", 3)
            .await
            .expect_err("gone");
        assert_eq!(format!("{err:#}"), "topic gone does not exist");
    }

    #[tokio::test]
    async fn alter_config_sends_set_and_delete_on_the_topic() {
        let (broker, seen) = topic_broker(7, 6, 12).await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let ops = config_ops(
            &[("retention.ms".into(), "5".into())],
            &["cleanup.policy".into()],
        )
        .expect("ops");
        alter_configs(&mut cluster, "orders", ops.clone())
            .await
            .expect("altered");
        let seen = seen.lock().expect("lock").clone();
        let Some(Seen::Alter(request)) = seen.first() else {
            panic!("no IncrementalAlterConfigs: {seen:?}");
        };
        assert_eq!(request.resources[0].resource_type, RESOURCE_TOPIC);
        assert_eq!(request.resources[0].resource_name.as_str(), "orders");
        assert_eq!(request.resources[0].configs, ops);
        let err = alter_configs(&mut cluster, "gone", ops)
            .await
            .expect_err("gone");
        assert_eq!(err.to_string(), "topic gone does not exist");
    }
}
