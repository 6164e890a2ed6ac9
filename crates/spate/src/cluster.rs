//! `spate cluster status`: the health of a cluster at a glance, read over the Kafka protocol
//! (what `kafka-metadata-quorum.sh describe --status --replication` and `rpk cluster health`
//! show together), so it works against any Kafka-compatible cluster.
//!
//! - Nodes: DescribeCluster v2 with fenced brokers (KIP-1073): id, address, rack, alive or
//!   fenced, and the active controller (its `controller_id`). Before v2 fenced brokers are not
//!   listed; a broker without DescribeCluster (before Kafka 2.8) gets Metadata's live brokers.
//! - Quorum: DescribeQuorum for `__cluster_metadata`-0, sent to the active controller; a
//!   NOT_LEADER_OR_FOLLOWER answer that names the leader is followed there. Leader, leader epoch
//!   (the Raft term), high watermark, and per voter its log end offset and lag (high watermark
//!   minus log end offset, never below 0; unknown where either is).
//! - Partitions: Metadata for every topic (internal ones too) and, from one DescribeConfigs,
//!   each topic's `min.insync.replicas`: offline (no leader), under min ISR (ISR smaller than
//!   `min.insync.replicas`), under-replicated (ISR smaller than the replicas) and with offline
//!   replicas.
//!
//! Whatever is wrong becomes a problem; the verdict line lists them, and the command exits 2
//! when there is any (1 stays "could not ask"). What could not be read but says nothing bad (a
//! broker without DescribeQuorum, a topic whose `min.insync.replicas` is unknown) is a note.
//! DescribeQuorum goes last and its failure is a problem, not an error: the rest of the
//! status is still worth printing when the quorum cannot be reached.
//!
//! The fetching functions do I/O; everything that turns responses into a [`ClusterStatus`] and
//! that into text is pure and tested below.

use crate::cli::{self, json, ConnectArgs, Output};
use serde::Serialize;
use spate_client as client;
use std::collections::BTreeMap;
use std::process::ExitCode;

mod assess;
mod fetch;
mod render;

use fetch::fetch_status;
use render::render_status;

/// The Raft log DescribeQuorum describes, as Kafka names it.
const METADATA_TOPIC: &str = "__cluster_metadata";
const METADATA_PARTITION: i32 = 0;
/// DescribeCluster lists fenced brokers when asked from this version (KIP-1073).
const DESCRIBE_CLUSTER_FENCED_VERSION: i16 = 2;
/// Metadata names the controller from this version, the cluster id from v2, offline replicas
/// from v5.
const METADATA_CONTROLLER_VERSION: i16 = 1;
const METADATA_CLUSTER_ID_VERSION: i16 = 2;
const METADATA_OFFLINE_VERSION: i16 = 5;
/// Kafka's ConfigResource.Type TOPIC.
const RESOURCE_TOPIC: i8 = 2;
const MIN_ISR_CONFIG: &str = "min.insync.replicas";
/// Leaders a DescribeQuorum may be sent on to in a row before waiting (an election in
/// progress can make two nodes name each other).
const QUORUM_HOPS_MAX: usize = 3;
/// The exit status when the cluster answered and something is wrong; 1 means "could not ask".
const EXIT_UNHEALTHY: u8 = 2;

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Health of the cluster: nodes, controller quorum and partitions, with a verdict; exits 2
    /// when something is wrong.
    Status(StatusArgs),
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Runs a `spate cluster` command: prints its output, and exits 0 when healthy,
/// [`EXIT_UNHEALTHY`] when something is wrong, 1 when the cluster could not be asked.
pub fn run(command: ClusterCommand) -> ExitCode {
    match command {
        ClusterCommand::Status(args) => {
            let mut healthy = true;
            let result = cli::block_on(async {
                let mut cluster = args.connect.cluster();
                let status = fetch_status(&mut cluster).await?;
                healthy = status.healthy;
                match args.connect.output {
                    Output::Text => Ok(render_status(&status)),
                    Output::Json => json(&status),
                }
            });
            let answered = result.is_ok();
            let code = crate::print(result);
            if answered && !healthy {
                ExitCode::from(EXIT_UNHEALTHY)
            } else {
                code
            }
        }
    }
}

// ---- the status ---------------------------------------------------------------------------

/// What `spate cluster status` reports (`--output json` prints it as it is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub healthy: bool,
    /// "healthy", or "unhealthy: " and the problems.
    pub verdict: String,
    pub problems: Vec<String>,
    /// What could not be read, without being a sign of trouble.
    pub notes: Vec<String>,
    pub cluster_id: Option<String>,
    /// The active controller as DescribeCluster (or Metadata) names it.
    pub controller_id: Option<i32>,
    pub nodes: Vec<NodeRow>,
    /// None where DescribeQuorum gave no answer (see the notes or problems).
    pub quorum: Option<Quorum>,
    pub partitions: PartitionHealth,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Alive,
    Fenced,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
    pub state: NodeState,
    pub active_controller: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Observer,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Quorum {
    pub leader_id: Option<i32>,
    /// The Raft term.
    pub leader_epoch: i32,
    /// None while the leader does not know it yet (Kafka's -1 after an election).
    pub high_watermark: Option<i64>,
    pub voters: Vec<QuorumReplica>,
    /// Replicas of the metadata log that do not vote.
    pub observers: Vec<QuorumReplica>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuorumReplica {
    pub id: i32,
    pub role: Role,
    /// None where the leader does not know it.
    pub log_end_offset: Option<i64>,
    /// High watermark minus log end offset, at least 0; None where either is unknown.
    pub lag: Option<i64>,
    /// Wall-clock milliseconds on the leader; None where unknown (Spate's followers, v0).
    pub last_fetch_timestamp_ms: Option<i64>,
    pub last_caught_up_timestamp_ms: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PartitionHealth {
    pub topics: usize,
    pub partitions: usize,
    /// No leader.
    pub offline: PartitionList,
    /// ISR smaller than the topic's `min.insync.replicas`.
    pub under_min_isr: PartitionList,
    /// ISR smaller than the replicas.
    pub under_replicated: PartitionList,
    /// Some replica on a broker that is not alive.
    pub with_offline_replicas: PartitionList,
    /// Topics Metadata answered with an error, e.g. TOPIC_AUTHORIZATION_FAILED.
    pub topic_errors: Vec<TopicError>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PartitionList {
    pub count: usize,
    pub partitions: Vec<PartitionRow>,
}

impl PartitionList {
    fn push(&mut self, row: &PartitionRow) {
        self.count += 1;
        self.partitions.push(row.clone());
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionRow {
    pub topic: String,
    pub partition: i32,
    pub leader: Option<i32>,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// Empty also where unknown (Metadata before v5).
    pub offline_replicas: Vec<i32>,
    /// The topic's `min.insync.replicas`, where known.
    pub min_isr: Option<i32>,
}

impl PartitionRow {
    fn is_offline(&self) -> bool {
        self.leader.is_none()
    }
    fn is_under_replicated(&self) -> bool {
        self.isr.len() < self.replicas.len()
    }
    fn is_under_min_isr(&self) -> bool {
        self.min_isr
            .is_some_and(|min| i32::try_from(self.isr.len()).is_ok_and(|isr| isr < min))
    }
    fn has_offline_replicas(&self) -> bool {
        !self.offline_replicas.is_empty()
    }
    /// What is wrong with it, worst first.
    fn issues(&self) -> Vec<&'static str> {
        [
            (self.is_offline(), "offline"),
            (self.is_under_min_isr(), "under min ISR"),
            (self.is_under_replicated(), "under-replicated"),
            (self.has_offline_replicas(), "offline replicas"),
        ]
        .into_iter()
        .filter_map(|(wrong, name)| wrong.then_some(name))
        .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopicError {
    pub topic: String,
    pub error: String,
}

/// The brokers as DescribeCluster or Metadata list them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Nodes {
    cluster_id: Option<String>,
    controller_id: Option<i32>,
    rows: Vec<NodeRow>,
    /// False where the answer could not list fenced brokers.
    fenced_listed: bool,
}

impl Nodes {
    /// Each node's `host:port`, by id.
    fn addresses(&self) -> BTreeMap<i32, String> {
        self.rows
            .iter()
            .map(|n| (n.id, client::address(&n.host, n.port)))
            .collect()
    }
}

/// Why there is no quorum section.
#[derive(Clone, Debug, PartialEq, Eq)]
enum QuorumUnknown {
    /// The broker does not offer DescribeQuorum: not a sign of trouble (a note).
    Unsupported(String),
    /// Asking failed (a problem).
    Failed(String),
}

fn id(n: i32) -> Option<i32> {
    (n >= 0).then_some(n)
}

fn known(value: i64) -> Option<i64> {
    (value >= 0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::assess::{
        assemble, min_isr_by_topic, nodes_from_describe_cluster, nodes_from_metadata,
        partition_health, quorum_reply, QuorumReply,
    };
    use super::fetch::not_leader;
    use super::*;
    use kafka_protocol::error::ResponseError;
    use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
    use kafka_protocol::messages::describe_configs_response::{
        DescribeConfigsResourceResult, DescribeConfigsResult,
    };
    use kafka_protocol::messages::describe_quorum_response::{
        self as quorum, Listener, Node, ReplicaState,
    };
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{
        BrokerId, DescribeClusterRequest, DescribeClusterResponse, DescribeConfigsRequest,
        DescribeConfigsResponse, DescribeQuorumRequest, DescribeQuorumResponse, MetadataResponse,
        TopicName,
    };
    use kafka_protocol::protocol::StrBytes;

    fn topic(name: &str, partitions: Vec<MetadataResponsePartition>) -> MetadataResponseTopic {
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(name.to_owned()))))
            .with_partitions(partitions)
    }

    fn partition(
        index: i32,
        leader: i32,
        replicas: &[i32],
        isr: &[i32],
        offline: &[i32],
    ) -> MetadataResponsePartition {
        let ids = |ids: &[i32]| ids.iter().map(|&b| BrokerId(b)).collect();
        MetadataResponsePartition::default()
            .with_partition_index(index)
            .with_leader_id(BrokerId(leader))
            .with_replica_nodes(ids(replicas))
            .with_isr_nodes(ids(isr))
            .with_offline_replicas(ids(offline))
    }

    fn cluster_broker(id: i32, port: i32, fenced: bool) -> DescribeClusterBroker {
        DescribeClusterBroker::default()
            .with_broker_id(BrokerId(id))
            .with_host(StrBytes::from_static_str("127.0.0.1"))
            .with_port(port)
            .with_is_fenced(fenced)
    }

    fn describe_cluster(
        controller: i32,
        brokers: Vec<DescribeClusterBroker>,
    ) -> DescribeClusterResponse {
        DescribeClusterResponse::default()
            .with_cluster_id(StrBytes::from_static_str("c1"))
            .with_controller_id(BrokerId(controller))
            .with_brokers(brokers)
    }

    fn replica(id: i32, log_end_offset: i64) -> ReplicaState {
        ReplicaState::default()
            .with_replica_id(BrokerId(id))
            .with_log_end_offset(log_end_offset)
    }

    fn quorum_response(
        error: i16,
        leader: i32,
        high_watermark: i64,
        voters: Vec<ReplicaState>,
    ) -> DescribeQuorumResponse {
        DescribeQuorumResponse::default()
            .with_error_message(None)
            .with_topics(vec![quorum::TopicData::default()
                .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
                .with_partitions(vec![quorum::PartitionData::default()
                    .with_partition_index(0)
                    .with_error_code(error)
                    .with_error_message(None)
                    .with_leader_id(BrokerId(leader))
                    .with_leader_epoch(7)
                    .with_high_watermark(high_watermark)
                    .with_current_voters(voters)])])
    }

    fn config_result(name: &str, min_isr: Option<&str>, error: i16) -> DescribeConfigsResult {
        DescribeConfigsResult::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(StrBytes::from_string(name.to_owned()))
            .with_error_code(error)
            .with_configs(
                min_isr
                    .map(|v| {
                        DescribeConfigsResourceResult::default()
                            .with_name(StrBytes::from_static_str(MIN_ISR_CONFIG))
                            .with_value(Some(StrBytes::from_string(v.to_owned())))
                    })
                    .into_iter()
                    .collect(),
            )
    }

    fn described(reply: QuorumReply) -> Quorum {
        match reply {
            QuorumReply::Described(q) => q,
            other => panic!("not described: {other:?}"),
        }
    }

    fn healthy_parts() -> (Nodes, PartitionHealth, Quorum) {
        let nodes = nodes_from_describe_cluster(
            &describe_cluster(
                1,
                vec![
                    cluster_broker(2, 9093, false),
                    cluster_broker(1, 9092, false).with_rack(Some(StrBytes::from_static_str("a"))),
                ],
            ),
            2,
        );
        let topics = vec![
            topic("orders", vec![partition(0, 1, &[1, 2], &[1, 2], &[])]),
            topic(
                "__consumer_offsets",
                vec![partition(0, 2, &[2, 1], &[2, 1], &[])],
            )
            .with_is_internal(true),
        ];
        let min_isr = BTreeMap::from([
            ("orders".to_owned(), 2),
            ("__consumer_offsets".to_owned(), 1),
        ]);
        let partitions = partition_health(&topics, 12, &min_isr);
        let quorum = described(
            quorum_reply(
                &quorum_response(0, 1, 41, vec![replica(2, 41), replica(1, 42)]),
                "b:1",
            )
            .expect("quorum"),
        );
        (nodes, partitions, quorum)
    }

    #[test]
    fn a_healthy_cluster_says_so() {
        let (nodes, partitions, quorum) = healthy_parts();
        let status = assemble(nodes, partitions, Ok(quorum), Vec::new());
        assert!(status.healthy);
        assert_eq!(status.verdict, "healthy");
        assert_eq!(
            render_status(&status),
            "Cluster c1: 2 nodes, controller 1\n\
             NODE  ADDRESS         RACK  STATE  CONTROLLER\n\
             1     127.0.0.1:9092  a     alive  active\n\
             2     127.0.0.1:9093  -     alive  -\n\
             \n\
             Quorum: leader 1, leader epoch 7, high watermark 41\n\
             NODE  ROLE      LOG END OFFSET  LAG\n\
             1     leader    42              0\n\
             2     follower  41              0\n\
             \n\
             Partitions: 2 in 2 topics; 0 offline, 0 under min ISR, 0 under-replicated, 0 with \
             offline replicas\n\
             \n\
             Verdict: healthy\n"
        );
        let json = serde_json::to_value(&status).expect("json");
        assert_eq!(json["healthy"], true);
        assert_eq!(json["nodes"][0]["state"], "alive");
        assert_eq!(json["nodes"][0]["active_controller"], true);
        assert_eq!(json["quorum"]["voters"][0]["role"], "leader");
        assert_eq!(json["quorum"]["voters"][1]["lag"], 0);
        assert_eq!(json["partitions"]["under_replicated"]["count"], 0);
    }

    #[test]
    fn every_kind_of_trouble_is_a_problem_in_the_verdict() {
        let nodes = nodes_from_describe_cluster(
            &describe_cluster(
                -1,
                vec![
                    cluster_broker(1, 9092, false),
                    cluster_broker(2, 9093, false),
                    cluster_broker(3, 9094, true),
                ],
            ),
            2,
        );
        let topics = vec![
            topic(
                "orders",
                vec![
                    partition(1, -1, &[3], &[3], &[3]),
                    partition(0, 1, &[1, 2, 3], &[1, 2], &[3]),
                    partition(2, 2, &[2, 1], &[2, 1], &[]),
                ],
            ),
            topic("events", vec![partition(0, 1, &[1, 2], &[1], &[])]),
            MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("secret"))))
                .with_error_code(ResponseError::TopicAuthorizationFailed.code()),
        ];
        let min_isr = BTreeMap::from([("orders".to_owned(), 2)]);
        let partitions = partition_health(&topics, 12, &min_isr);
        assert_eq!((partitions.topics, partitions.partitions), (2, 4));
        let ids = |l: &PartitionList| -> Vec<(String, i32)> {
            l.partitions
                .iter()
                .map(|p| (p.topic.clone(), p.partition))
                .collect()
        };
        assert_eq!(ids(&partitions.offline), vec![("orders".into(), 1)]);
        assert_eq!(
            ids(&partitions.under_min_isr),
            vec![("orders".into(), 1)],
            "events has no known min.insync.replicas; orders-0 has 2 in sync"
        );
        assert_eq!(
            ids(&partitions.under_replicated),
            vec![("events".into(), 0), ("orders".into(), 0)]
        );
        assert_eq!(partitions.with_offline_replicas.count, 2);
        let quorum = described(
            quorum_reply(
                &quorum_response(
                    0,
                    1,
                    41,
                    vec![replica(1, 42), replica(2, 30), replica(3, -1)],
                ),
                "b:1",
            )
            .expect("quorum"),
        );
        let status = assemble(
            nodes,
            partitions,
            Ok(quorum),
            vec!["min.insync.replicas is unknown for 1 topic: events".into()],
        );
        assert!(!status.healthy);
        assert_eq!(
            status.problems,
            vec![
                "no active controller",
                "node 3 is fenced",
                "the quorum leader does not know the log end offset of voter 3",
                "1 offline partition",
                "1 partition under min ISR",
                "2 under-replicated partitions",
                "2 partitions with offline replicas",
                "topic secret: TOPIC_AUTHORIZATION_FAILED",
            ]
        );
        assert!(status
            .verdict
            .starts_with("unhealthy: no active controller; node 3 is fenced;"));
        let text = render_status(&status);
        assert!(
            text.contains("Cluster c1: 3 nodes, controller none\n"),
            "{text}"
        );
        assert!(
            text.contains("3     127.0.0.1:9094  -     fenced  -\n"),
            "{text}"
        );
        assert!(
            text.contains("2     follower  30              11\n"),
            "{text}"
        );
        assert!(
            text.contains("3     follower  -               -\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "TOPIC   PARTITION  LEADER  REPLICAS  ISR  OFFLINE  MIN ISR  ISSUES\n\
                 events  0          1       1,2       1    -        -        under-replicated\n\
                 orders  0          1       1,2,3     1,2  3        2        under-replicated, \
                 offline replicas\n\
                 orders  1          -       3         3    3        2        offline, under min \
                 ISR, offline replicas\n\
                 Topic secret reports TOPIC_AUTHORIZATION_FAILED.\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "Note: min.insync.replicas is unknown for 1 topic: events\n\
                 Verdict: unhealthy: no active controller; node 3 is fenced; the quorum leader \
                 does not know the log end offset of voter 3; 1 offline partition; 1 partition \
                 under min ISR; 2 under-replicated partitions; 2 partitions with offline \
                 replicas; topic secret: TOPIC_AUTHORIZATION_FAILED\n"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&status).expect("json");
        assert_eq!(
            json["partitions"]["offline"]["partitions"][0]["leader"],
            serde_json::Value::Null
        );
        assert_eq!(json["nodes"][2]["state"], "fenced");
    }

    #[test]
    fn a_quorum_that_cannot_be_read_is_a_problem_unless_unsupported() {
        let (nodes, partitions, _) = healthy_parts();
        let old = assemble(
            nodes.clone(),
            partitions.clone(),
            Err(QuorumUnknown::Unsupported("no DescribeQuorum".into())),
            Vec::new(),
        );
        assert!(old.healthy, "{:?}", old.problems);
        assert_eq!(old.notes, vec!["no quorum status: no DescribeQuorum"]);
        assert!(render_status(&old).contains("Quorum: unknown\n"));
        let failed = assemble(
            nodes,
            partitions,
            Err(QuorumUnknown::Failed("timed out".into())),
            Vec::new(),
        );
        assert_eq!(
            failed.problems,
            vec!["quorum status unavailable: timed out"]
        );
        let leaderless = Quorum {
            leader_id: None,
            leader_epoch: 8,
            high_watermark: None,
            voters: Vec::new(),
            observers: Vec::new(),
        };
        let (nodes, partitions, _) = healthy_parts();
        let status = assemble(nodes, partitions, Ok(leaderless), Vec::new());
        assert_eq!(status.problems, vec!["the controller quorum has no leader"]);
        assert!(render_status(&status)
            .contains("Quorum: leader none, leader epoch 8, high watermark -\n"));
    }

    #[test]
    fn quorum_lag_is_high_watermark_minus_log_end_never_negative() {
        let q = described(
            quorum_reply(
                &quorum_response(
                    0,
                    2,
                    100,
                    vec![replica(3, 90), replica(2, 105), replica(1, -1)],
                ),
                "b:1",
            )
            .expect("quorum"),
        );
        let rows: Vec<_> = q
            .voters
            .iter()
            .map(|r| (r.id, r.role, r.log_end_offset, r.lag))
            .collect();
        assert_eq!(
            rows,
            vec![
                (1, Role::Follower, None, None),
                (2, Role::Leader, Some(105), Some(0)),
                (3, Role::Follower, Some(90), Some(10)),
            ]
        );
        let unknown_hw = described(
            quorum_reply(&quorum_response(0, 2, -1, vec![replica(2, 5)]), "b:1").expect("quorum"),
        );
        assert_eq!(
            (unknown_hw.high_watermark, unknown_hw.voters[0].lag),
            (None, None)
        );
    }

    #[test]
    fn not_leader_names_the_leader_and_where_it_listens() {
        let response = quorum_response(ResponseError::NotLeaderOrFollower.code(), 2, -1, vec![])
            .with_nodes(vec![Node::default()
                .with_node_id(BrokerId(2))
                .with_listeners(vec![Listener::default()
                    .with_name(StrBytes::from_static_str("PLAINTEXT"))
                    .with_host(StrBytes::from_static_str("10.0.0.2"))
                    .with_port(9092)])]);
        let QuorumReply::NotLeader {
            leader,
            addresses,
            error,
        } = quorum_reply(&response, "b:1").expect("reply")
        else {
            panic!("expected NotLeader");
        };
        assert_eq!(leader, Some(2));
        assert_eq!(addresses, BTreeMap::from([(2, "10.0.0.2:9092".to_owned())]));
        assert!(not_leader(&error), "{error}");

        let unknown = quorum_response(
            ResponseError::UnknownTopicOrPartition.code(),
            -1,
            -1,
            vec![],
        );
        let err = quorum_reply(&unknown, "b:1").expect_err("error");
        assert!(
            err.to_string()
                .starts_with("DescribeQuorum on b:1: UNKNOWN_TOPIC_OR_PARTITION"),
            "{err}"
        );
        let top = DescribeQuorumResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(None);
        let err = quorum_reply(&top, "b:1").expect_err("error");
        assert!(
            err.to_string().contains("CLUSTER_AUTHORIZATION_FAILED"),
            "{err}"
        );
        let empty = DescribeQuorumResponse::default().with_error_message(None);
        let err = quorum_reply(&empty, "b:1").expect_err("error");
        assert!(
            err.to_string()
                .contains("does not mention __cluster_metadata-0"),
            "{err}"
        );
    }

    #[test]
    fn min_isr_is_read_per_topic_and_missing_ones_are_named() {
        let response = DescribeConfigsResponse::default().with_results(vec![
            config_result("a", Some("2"), 0),
            config_result("b", Some("x"), 0),
            config_result("c", None, ResponseError::UnknownTopicOrPartition.code()),
        ]);
        let names = vec![
            "a".to_owned(),
            "b".to_owned(),
            "c".to_owned(),
            "d".to_owned(),
        ];
        let (min_isr, unknown) = min_isr_by_topic(&names, &response);
        assert_eq!(min_isr, BTreeMap::from([("a".to_owned(), 2)]));
        assert_eq!(unknown, vec!["b", "c", "d"]);
    }

    #[test]
    fn metadata_stands_in_for_describe_cluster() {
        let response = MetadataResponse::default()
            .with_cluster_id(Some(StrBytes::from_static_str("c1")))
            .with_controller_id(BrokerId(2))
            .with_brokers(vec![
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(2))
                    .with_host(StrBytes::from_static_str("h2"))
                    .with_port(2),
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(1))
                    .with_host(StrBytes::from_static_str("h1"))
                    .with_port(1),
            ]);
        let nodes = nodes_from_metadata(&response, 12);
        assert_eq!(nodes.controller_id, Some(2));
        assert_eq!(nodes.cluster_id.as_deref(), Some("c1"));
        assert!(!nodes.fenced_listed);
        assert_eq!(
            nodes
                .rows
                .iter()
                .map(|n| (n.id, n.active_controller))
                .collect::<Vec<_>>(),
            vec![(1, false), (2, true)]
        );
        assert_eq!(nodes.addresses()[&1], "h1:1");
        let v0 = nodes_from_metadata(&response, 0);
        assert_eq!((v0.controller_id, v0.cluster_id), (None, None));
        // Before Metadata v5 offline replicas are unknown, not absent.
        let topics = vec![topic("t", vec![partition(0, 1, &[1, 2], &[1, 2], &[2])])];
        assert_eq!(
            partition_health(&topics, 4, &BTreeMap::new())
                .with_offline_replicas
                .count,
            0
        );
        assert_eq!(
            partition_health(&topics, 5, &BTreeMap::new())
                .with_offline_replicas
                .count,
            1
        );
    }

    // ---- against scripted brokers --------------------------------------------------------

    use kafka_protocol::messages::{ApiKey, MetadataRequest};
    use spate_test_broker::{Received, ScriptedBroker};
    use std::sync::{Arc, Mutex};

    /// Requests as the scripted brokers decoded them.
    #[derive(Clone, Debug)]
    enum Seen {
        DescribeCluster(i16, DescribeClusterRequest),
        Metadata(MetadataRequest),
        DescribeConfigs(DescribeConfigsRequest),
        /// Which broker (node id) was asked.
        DescribeQuorum(i32, DescribeQuorumRequest),
    }

    fn port(addr: &str) -> i32 {
        addr.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    /// Node 2, the quorum leader: it answers only DescribeQuorum.
    async fn quorum_leader(seen: Arc<Mutex<Vec<Seen>>>) -> ScriptedBroker {
        ScriptedBroker::start(
            vec![(ApiKey::ApiVersions, 0, 3), (ApiKey::DescribeQuorum, 0, 2)],
            move |req: &Received| match req.api_key {
                ApiKey::ApiVersions => req.respond(&req.api_versions()),
                ApiKey::DescribeQuorum => {
                    seen.lock()
                        .expect("lock")
                        .push(Seen::DescribeQuorum(2, req.decode()));
                    req.respond(&quorum_response(
                        0,
                        2,
                        41,
                        vec![replica(1, 41), replica(2, 42), replica(3, 41)],
                    ))
                }
                other => panic!("the quorum leader is not asked for {other:?}"),
            },
        )
        .await
    }

    /// Node 1, the bootstrap broker: DescribeCluster names it the controller (as a Kafka broker
    /// names any broker), but DescribeQuorum answers NOT_LEADER_OR_FOLLOWER naming node 2.
    async fn bootstrap(
        versions: Vec<(ApiKey, i16, i16)>,
        leader_port: i32,
        seen: Arc<Mutex<Vec<Seen>>>,
    ) -> ScriptedBroker {
        ScriptedBroker::start(versions, move |req: &Received| {
            let mut seen = seen.lock().expect("lock");
            match req.api_key {
                ApiKey::ApiVersions => req.respond(&req.api_versions()),
                ApiKey::DescribeCluster => {
                    seen.push(Seen::DescribeCluster(req.version, req.decode()));
                    req.respond(&describe_cluster(
                        1,
                        vec![
                            cluster_broker(1, req.broker_port, false),
                            cluster_broker(2, leader_port, false),
                            cluster_broker(3, 1, true),
                        ],
                    ))
                }
                ApiKey::Metadata => {
                    seen.push(Seen::Metadata(req.decode()));
                    let broker = |id: i32, port: i32| {
                        MetadataResponseBroker::default()
                            .with_node_id(BrokerId(id))
                            .with_host(StrBytes::from_static_str("127.0.0.1"))
                            .with_port(port)
                    };
                    req.respond(
                        &MetadataResponse::default()
                            .with_controller_id(BrokerId(1))
                            .with_brokers(vec![broker(1, req.broker_port), broker(2, leader_port)])
                            .with_topics(vec![
                                topic("orders", vec![partition(0, 1, &[1, 2, 3], &[1, 2], &[3])]),
                                topic("__consumer_offsets", vec![partition(0, 2, &[2], &[2], &[])])
                                    .with_is_internal(true),
                            ]),
                    )
                }
                ApiKey::DescribeConfigs => {
                    let request: DescribeConfigsRequest = req.decode();
                    seen.push(Seen::DescribeConfigs(request.clone()));
                    let results = request
                        .resources
                        .iter()
                        .map(|r| config_result(r.resource_name.as_str(), Some("2"), 0))
                        .collect();
                    req.respond(&DescribeConfigsResponse::default().with_results(results))
                }
                ApiKey::DescribeQuorum => {
                    seen.push(Seen::DescribeQuorum(1, req.decode()));
                    req.respond(&quorum_response(
                        ResponseError::NotLeaderOrFollower.code(),
                        2,
                        -1,
                        vec![],
                    ))
                }
                other => panic!("the bootstrap broker is not asked for {other:?}"),
            }
        })
        .await
    }

    fn modern() -> Vec<(ApiKey, i16, i16)> {
        vec![
            (ApiKey::ApiVersions, 0, 3),
            (ApiKey::Metadata, 0, 12),
            (ApiKey::DescribeConfigs, 1, 4),
            (ApiKey::DescribeCluster, 0, 2),
            (ApiKey::DescribeQuorum, 0, 2),
        ]
    }

    #[tokio::test]
    async fn status_asks_each_api_once_and_follows_the_quorum_leader() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let leader = quorum_leader(seen.clone()).await;
        let broker = bootstrap(modern(), port(&leader.addr), seen.clone()).await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let status = fetch_status(&mut cluster).await.expect("status");

        let quorum = status.quorum.as_ref().expect("quorum");
        assert_eq!(
            (quorum.leader_id, quorum.high_watermark),
            (Some(2), Some(41))
        );
        assert_eq!(quorum.voters.len(), 3);
        assert_eq!(status.controller_id, Some(1));
        assert_eq!(
            status.problems,
            vec![
                "node 3 is fenced",
                "1 partition under min ISR",
                "1 under-replicated partition",
                "1 partition with offline replicas",
            ],
            "__consumer_offsets has min ISR 2 with one replica in sync"
        );
        assert_eq!(
            status.partitions.under_min_isr.partitions[0].topic,
            "__consumer_offsets"
        );
        assert!(status.notes.is_empty(), "{:?}", status.notes);

        let seen = seen.lock().expect("lock").clone();
        let kinds: Vec<&str> = seen
            .iter()
            .map(|s| match s {
                Seen::DescribeCluster(..) => "cluster",
                Seen::Metadata(..) => "metadata",
                Seen::DescribeConfigs(..) => "configs",
                Seen::DescribeQuorum(1, _) => "quorum@1",
                Seen::DescribeQuorum(..) => "quorum@2",
            })
            .collect();
        assert_eq!(
            kinds,
            vec!["cluster", "metadata", "configs", "quorum@1", "quorum@2"]
        );
        for s in &seen {
            match s {
                Seen::DescribeCluster(version, request) => {
                    assert_eq!(*version, 2);
                    assert!(request.include_fenced_brokers);
                }
                Seen::Metadata(request) => {
                    assert!(request.topics.is_none(), "every topic");
                    assert!(!request.allow_auto_topic_creation);
                }
                Seen::DescribeConfigs(request) => {
                    let names: Vec<&str> = request
                        .resources
                        .iter()
                        .map(|r| r.resource_name.as_str())
                        .collect();
                    assert_eq!(names, vec!["orders", "__consumer_offsets"]);
                    for r in &request.resources {
                        assert_eq!(r.resource_type, RESOURCE_TOPIC);
                        assert_eq!(
                            r.configuration_keys.as_deref(),
                            Some(&[StrBytes::from_static_str(MIN_ISR_CONFIG)][..])
                        );
                    }
                }
                Seen::DescribeQuorum(_, request) => {
                    assert_eq!(request.topics.len(), 1);
                    assert_eq!(request.topics[0].topic_name.0.as_str(), METADATA_TOPIC);
                    assert_eq!(request.topics[0].partitions[0].partition_index, 0);
                }
            }
        }
    }

    #[tokio::test]
    async fn an_unreachable_quorum_leader_is_a_problem_by_the_deadline() {
        // Node 2 is named the leader but nothing listens on its port.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let closed_port = i32::from(closed.local_addr().expect("addr").port());
        drop(closed);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let broker = bootstrap(modern(), closed_port, seen.clone()).await;
        let mut cluster = cli::cluster(&broker.addr, 600);
        let status = fetch_status(&mut cluster).await.expect("status");
        assert_eq!(status.quorum, None);
        assert!(
            status
                .problems
                .iter()
                .any(|p| p.starts_with("quorum status unavailable: ")),
            "{:?}",
            status.problems
        );
        let asked_bootstrap = seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| matches!(s, Seen::DescribeQuorum(1, _)))
            .count();
        assert!(
            asked_bootstrap >= 2,
            "the bootstrap broker is asked again after backoff"
        );
    }

    #[tokio::test]
    async fn a_broker_without_describe_cluster_or_quorum_still_gets_a_status() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let old = vec![
            (ApiKey::ApiVersions, 0, 3),
            (ApiKey::Metadata, 0, 9),
            (ApiKey::DescribeConfigs, 1, 4),
        ];
        let broker = bootstrap(old, 1, seen.clone()).await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let status = fetch_status(&mut cluster).await.expect("status");
        assert_eq!(status.quorum, None);
        assert_eq!(
            status.notes,
            vec![
                "fenced brokers are not listed (DescribeCluster before v2)",
                "no quorum status: the broker does not offer DescribeQuorum (not a KRaft cluster?)",
            ]
        );
        assert_eq!(
            status
                .nodes
                .iter()
                .map(|n| (n.id, n.active_controller))
                .collect::<Vec<_>>(),
            vec![(1, true), (2, false)],
            "Metadata's live brokers"
        );
        assert!(
            !status.problems.iter().any(|p| p.contains("quorum")),
            "{:?}",
            status.problems
        );
    }
}
