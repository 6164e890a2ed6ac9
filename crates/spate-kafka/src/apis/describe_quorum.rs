//! DescribeQuorum (KIP-595, KIP-836, KIP-853): the controller quorum, reported as Kafka's KRaft
//! reports its metadata log `__cluster_metadata` partition 0, so `kafka-metadata-quorum.sh`
//! and `spate cluster status` read it alike.
//!
//! Every node answers with the active controller's Raft view
//! ([`Controller::leader_quorum_status`]): its own when it is the active controller, otherwise
//! the one it asks the active controller for over the controller transport, as Kafka brokers
//! forward DescribeQuorum to the active controller. So any node reports the same leader, leader
//! epoch (the Raft term), high watermark and voter log end offsets. Only when the active
//! controller is unknown (an election) or cannot be asked in time does a node answer from its
//! own view, with NOT_LEADER_OR_FOLLOWER on the partition as Kafka 3.4+ answers on a node that
//! is not the leader, but with the leader id and epoch it knows filled in (Kafka leaves them
//! unset) and the reason in the message, so a client can go to the leader itself.
//!
//! Offsets: Raft log indexes count entries from 0 like Kafka offsets do, so index `i` is offset
//! `i`, and the exclusive Kafka marks are one past the Raft ones: log end offset = last log
//! index + 1, high watermark = committed index + 1. A lag (high watermark minus log end offset)
//! is the same either way.
//!
//! Timestamps: the leader reports "now" for itself, as Kafka does (the answering node's clock
//! when the view was forwarded); openraft does not tell when a follower last fetched, so
//! followers get -1 ("unknown" in Kafka's schema).
//!
//! [`Controller::leader_quorum_status`]: spate_controller::Controller::leader_quorum_status

use super::{Reply, RequestContext};
use crate::broker::Broker;
use kafka_protocol::messages::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use kafka_protocol::messages::{
    BrokerId, DescribeQuorumRequest, DescribeQuorumResponse, TopicName,
};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use spate_controller::{BrokerEndpoint, ControllerError, QuorumStatus};
use spate_types::NodeId;
use std::collections::BTreeMap;
use std::sync::Arc;

/// v1 adds the fetch / caught-up timestamps, v2 directory ids, error messages and `nodes`.
pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

/// The metadata log, named as Kafka names it (clients ask for it by this name).
pub(crate) const METADATA_TOPIC: &str = "__cluster_metadata";
pub(crate) const METADATA_PARTITION: i32 = 0;
/// `nodes` (v2) appears from this version on; it must stay empty below.
const NODES_VERSION: i16 = 2;
/// Kafka's name for a plaintext listener; the Kafka listener is the only one clients reach.
const LISTENER_NAME: &str = "PLAINTEXT";
/// Kafka's "unknown" for offsets, timestamps and the leader id.
const UNKNOWN: i64 = -1;
const NO_LEADER: i32 = -1;

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: DescribeQuorumRequest,
) -> Reply<DescribeQuorumResponse> {
    let version = ctx.version();
    let node = broker.controller.node();
    if !asks_for_metadata_log(&request) {
        // Nothing to ask the active controller for.
        let status = broker.controller.quorum_status();
        let answer = View::Leader {
            node,
            status: &status,
        };
        return Reply::Now(describe_quorum(
            version,
            &request,
            answer,
            &broker.image().brokers,
            broker.now_ms(),
        ));
    }
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let leader = broker.controller.leader_quorum_status().await;
        let local;
        let view = match &leader {
            Ok(status) => match status.leader {
                Some(leader) => View::Leader {
                    node: leader,
                    status,
                },
                // `leader_quorum_status` names the node that answered; never reached.
                None => View::NotLeader {
                    node,
                    status,
                    why: None,
                },
            },
            Err(e) => {
                local = broker.controller.quorum_status();
                tracing::debug!(error = %e, "DescribeQuorum: the active controller's view is not available");
                View::NotLeader {
                    node,
                    status: &local,
                    why: Some(e),
                }
            }
        };
        describe_quorum(
            version,
            &request,
            view,
            &broker.image().brokers,
            broker.now_ms(),
        )
    }))
}

/// Whose Raft view a DescribeQuorum answer reports.
#[derive(Clone, Copy, Debug)]
pub(crate) enum View<'a> {
    /// The active controller `node`'s own view.
    Leader {
        node: NodeId,
        status: &'a QuorumStatus,
    },
    /// Only the view of `node`, which is not the active controller, or could not tell which node
    /// is; `why` is what went wrong when it asked the active controller.
    NotLeader {
        node: NodeId,
        status: &'a QuorumStatus,
        why: Option<&'a ControllerError>,
    },
}

/// The answer to `request` at `version` from `view`. `brokers` give the listeners of the
/// `nodes` list (v2); `now_ms` is the wall clock.
pub(crate) fn describe_quorum(
    version: i16,
    request: &DescribeQuorumRequest,
    view: View<'_>,
    brokers: &BTreeMap<NodeId, BrokerEndpoint>,
    now_ms: i64,
) -> DescribeQuorumResponse {
    let response = DescribeQuorumResponse::default().with_error_message(None);
    // Kafka's KafkaRaftClient answers a request that is not exactly one topic with exactly
    // `__cluster_metadata`-0 with UNKNOWN_TOPIC_OR_PARTITION on every partition asked for and no
    // top-level error (every Kafka version so far; INVALID_REQUEST at the top level was what
    // Kafka before 3.4 answered on a node that is not the leader, not for a wrong topic). Its
    // admin client reads the partition error, so this is also what a client reports best.
    if !asks_for_metadata_log(request) {
        return response.with_topics(unknown_partitions(request, version));
    }
    // A node that is not the active controller points at the one it knows, never at itself.
    let (node, status, not_leader) = match view {
        View::Leader { node, status } if status.leader == Some(node) => (node, status, None),
        View::Leader { node, status } => (node, status, Some(None)),
        View::NotLeader { node, status, why } => (node, status, Some(why)),
    };
    let leader = match not_leader {
        None => status.leader,
        Some(why) => why
            .and_then(ControllerError::leader_hint)
            .or(status.leader)
            .filter(|l| *l != node),
    };
    let partition = PartitionData::default()
        .with_partition_index(METADATA_PARTITION)
        .with_error_message(None)
        .with_leader_id(BrokerId(leader.map_or(NO_LEADER, |l| l.0)))
        .with_leader_epoch(i32::try_from(status.term).unwrap_or(i32::MAX));
    let partition = if let Some(why) = not_leader {
        let message = not_leader_message(node, leader, why);
        partition
            .with_error_code(ResponseError::NotLeaderOrFollower.code())
            .with_error_message(Some(StrBytes::from_string(message)))
            .with_high_watermark(UNKNOWN)
    } else {
        let replica = |id: NodeId, log_end_offset: i64| {
            let is_self = id == node;
            ReplicaState::default()
                .with_replica_id(BrokerId(id.0))
                .with_log_end_offset(log_end_offset)
                .with_last_fetch_timestamp(if is_self { now_ms } else { UNKNOWN })
                .with_last_caught_up_timestamp(if is_self { now_ms } else { UNKNOWN })
        };
        let log_end_offset = |id: NodeId| {
            if id == node {
                offset_after(status.last_log_index)
            } else {
                status
                    .voter_matched
                    .get(&id)
                    .copied()
                    .flatten()
                    .map_or(UNKNOWN, offset_after)
            }
        };
        let mut voters = status.voters.clone();
        voters.sort_unstable();
        voters.dedup();
        // Replicated to but not voting: learners, which Kafka calls observers.
        let observers = status
            .voter_matched
            .keys()
            .filter(|id| !voters.contains(id))
            .map(|&id| replica(id, log_end_offset(id)))
            .collect();
        partition
            .with_high_watermark(offset_after(status.committed_index))
            .with_current_voters(
                voters
                    .iter()
                    .map(|&id| replica(id, log_end_offset(id)))
                    .collect(),
            )
            .with_observers(observers)
    };
    let response = response.with_topics(vec![TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
        .with_partitions(vec![partition])]);
    if version >= NODES_VERSION {
        response.with_nodes(nodes(status, leader, brokers))
    } else {
        response
    }
}

/// Why `node` answers from its own view, and where to go instead.
fn not_leader_message(
    node: NodeId,
    leader: Option<NodeId>,
    why: Option<&ControllerError>,
) -> String {
    let routing = match leader {
        Some(leader) => format!("node {node} is not the active controller; node {leader} is"),
        None => format!("node {node} is not the active controller, and knows of none"),
    };
    match why {
        None | Some(ControllerError::NotLeader { .. }) => routing,
        Some(e) => format!("{routing} ({e})"),
    }
}

/// Kafka's test: exactly one topic, `__cluster_metadata`, with exactly one partition, 0.
fn asks_for_metadata_log(request: &DescribeQuorumRequest) -> bool {
    match request.topics.as_slice() {
        [topic] => {
            topic.topic_name.0.as_str() == METADATA_TOPIC
                && matches!(topic.partitions.as_slice(), [p] if p.partition_index == METADATA_PARTITION)
        }
        _ => false,
    }
}

/// UNKNOWN_TOPIC_OR_PARTITION for each partition asked for, in the order asked.
fn unknown_partitions(request: &DescribeQuorumRequest, version: i16) -> Vec<TopicData> {
    let message = (version >= NODES_VERSION).then(|| {
        StrBytes::from_string(format!(
            "the only quorum here is {METADATA_TOPIC}-{METADATA_PARTITION}, asked for alone"
        ))
    });
    request
        .topics
        .iter()
        .map(|topic| {
            TopicData::default()
                .with_topic_name(topic.topic_name.clone())
                .with_partitions(
                    topic
                        .partitions
                        .iter()
                        .map(|p| {
                            PartitionData::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                                .with_error_message(message.clone())
                                .with_leader_id(BrokerId(NO_LEADER))
                                .with_leader_epoch(-1)
                                .with_high_watermark(UNKNOWN)
                        })
                        .collect(),
                )
        })
        .collect()
}

/// The Kafka listener of each voter (and observer) the metadata image knows, by node id; a
/// client that was told NOT_LEADER_OR_FOLLOWER finds the `leader`'s address here.
fn nodes(
    status: &QuorumStatus,
    leader: Option<NodeId>,
    brokers: &BTreeMap<NodeId, BrokerEndpoint>,
) -> Vec<Node> {
    let mut ids: Vec<NodeId> = status
        .voters
        .iter()
        .chain(status.voter_matched.keys())
        .chain(leader.iter())
        .copied()
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter_map(|id| {
            let endpoint = brokers.get(&id)?;
            Some(Node::default().with_node_id(BrokerId(id.0)).with_listeners(
                vec![Listener::default()
                        .with_name(StrBytes::from_static_str(LISTENER_NAME))
                        .with_host(StrBytes::from_string(endpoint.host.clone()))
                        .with_port(endpoint.port)],
            ))
        })
        .collect()
}

/// The Kafka offset one past Raft log index `index`.
fn offset_after(index: u64) -> i64 {
    i64::try_from(index).map_or(i64::MAX, |i| i.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::describe_quorum_request;
    use kafka_protocol::protocol::{Decodable, Encodable};

    const NOW_MS: i64 = 1_700_000_000_000;

    fn request(topics: &[(&str, &[i32])]) -> DescribeQuorumRequest {
        DescribeQuorumRequest::default().with_topics(
            topics
                .iter()
                .map(|(name, partitions)| {
                    describe_quorum_request::TopicData::default()
                        .with_topic_name(TopicName(StrBytes::from_string((*name).to_owned())))
                        .with_partitions(
                            partitions
                                .iter()
                                .map(|&p| {
                                    describe_quorum_request::PartitionData::default()
                                        .with_partition_index(p)
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }

    fn metadata_log() -> DescribeQuorumRequest {
        request(&[(METADATA_TOPIC, &[0])])
    }

    /// Node `node`'s answer from its own view, as when the active controller could not be
    /// asked for it (or `node` is the active controller).
    fn own_view(node: NodeId, status: &QuorumStatus) -> View<'_> {
        if status.leader == Some(node) {
            View::Leader { node, status }
        } else {
            View::NotLeader {
                node,
                status,
                why: None,
            }
        }
    }

    /// Node 1 leads term 7 of voters 1, 2, 3: it holds up to index 41 and committed 40;
    /// node 2 matched 41, node 3 nothing yet; learner 4 matched 12.
    fn leader_status() -> QuorumStatus {
        QuorumStatus {
            leader: Some(NodeId(1)),
            term: 7,
            last_log_index: 41,
            committed_index: 40,
            voters: vec![NodeId(3), NodeId(1), NodeId(2)],
            voter_matched: BTreeMap::from([
                (NodeId(1), Some(41)),
                (NodeId(2), Some(41)),
                (NodeId(3), None),
                (NodeId(4), Some(12)),
            ]),
        }
    }

    fn brokers() -> BTreeMap<NodeId, BrokerEndpoint> {
        (1..=3)
            .map(|id| {
                (
                    NodeId(id),
                    BrokerEndpoint {
                        host: "127.0.0.1".to_owned(),
                        port: 9090 + id as u16,
                        rack: None,
                    },
                )
            })
            .collect()
    }

    fn only_partition(response: &DescribeQuorumResponse) -> &PartitionData {
        let [topic] = response.topics.as_slice() else {
            panic!("one topic: {response:?}");
        };
        assert_eq!(topic.topic_name.0.as_str(), METADATA_TOPIC);
        let [partition] = topic.partitions.as_slice() else {
            panic!("one partition: {topic:?}");
        };
        partition
    }

    /// Encodes and decodes at `version`, as a client would read it.
    fn round_trip(response: &DescribeQuorumResponse, version: i16) -> DescribeQuorumResponse {
        let mut buf = BytesMut::new();
        response.encode(&mut buf, version).expect("encodes");
        let mut bytes = buf.freeze();
        let decoded = DescribeQuorumResponse::decode(&mut bytes, version).expect("decodes");
        assert!(bytes.is_empty(), "v{version} left bytes over");
        decoded
    }

    #[test]
    fn the_leader_reports_term_high_watermark_and_each_voters_log_end() {
        let response = describe_quorum(
            2,
            &metadata_log(),
            own_view(NodeId(1), &leader_status()),
            &brokers(),
            NOW_MS,
        );
        assert_eq!((response.error_code, &response.error_message), (0, &None));
        let p = only_partition(&response);
        assert_eq!((p.partition_index, p.error_code), (0, 0));
        assert_eq!(p.error_message, None);
        assert_eq!((p.leader_id, p.leader_epoch), (BrokerId(1), 7));
        assert_eq!(p.high_watermark, 41, "committed index 40 + 1");
        let voters: Vec<_> = p
            .current_voters
            .iter()
            .map(|v| {
                (
                    v.replica_id.0,
                    v.log_end_offset,
                    v.last_fetch_timestamp,
                    v.last_caught_up_timestamp,
                )
            })
            .collect();
        assert_eq!(
            voters,
            vec![(1, 42, NOW_MS, NOW_MS), (2, 42, -1, -1), (3, -1, -1, -1),],
            "sorted by id; the leader's own log end is its last index + 1; unknown is -1"
        );
        let observers: Vec<_> = p
            .observers
            .iter()
            .map(|o| (o.replica_id.0, o.log_end_offset))
            .collect();
        assert_eq!(observers, vec![(4, 13)]);
        let nodes: Vec<_> = response
            .nodes
            .iter()
            .map(|n| {
                let [l] = n.listeners.as_slice() else {
                    panic!("one listener: {n:?}");
                };
                (n.node_id.0, l.name.to_string(), l.host.to_string(), l.port)
            })
            .collect();
        assert_eq!(
            nodes,
            vec![
                (1, "PLAINTEXT".into(), "127.0.0.1".into(), 9091),
                (2, "PLAINTEXT".into(), "127.0.0.1".into(), 9092),
                (3, "PLAINTEXT".into(), "127.0.0.1".into(), 9093),
            ],
            "node 4 is not in the image, so it has no listener to report"
        );
        assert_eq!(round_trip(&response, 2), response);
    }

    #[test]
    fn every_version_encodes_what_it_has() {
        for version in VERSIONS.min..=VERSIONS.max {
            let response = describe_quorum(
                version,
                &metadata_log(),
                own_view(NodeId(1), &leader_status()),
                &brokers(),
                NOW_MS,
            );
            assert_eq!(
                response.nodes.is_empty(),
                version < NODES_VERSION,
                "v{version}"
            );
            let decoded = round_trip(&response, version);
            let p = only_partition(&decoded);
            assert_eq!(
                (p.leader_id, p.leader_epoch, p.high_watermark),
                (BrokerId(1), 7, 41)
            );
            assert_eq!(p.current_voters.len(), 3);
            // v0 has no timestamps: they read back as the schema's -1.
            let leader_fetch = p.current_voters[0].last_fetch_timestamp;
            assert_eq!(leader_fetch, if version >= 1 { NOW_MS } else { -1 });
        }
    }

    #[test]
    fn a_follower_names_the_leader_and_its_epoch() {
        let status = QuorumStatus {
            voter_matched: BTreeMap::new(),
            ..leader_status()
        };
        let response = describe_quorum(
            2,
            &metadata_log(),
            own_view(NodeId(2), &status),
            &brokers(),
            NOW_MS,
        );
        assert_eq!(response.error_code, 0, "the error is on the partition");
        let p = only_partition(&response);
        assert_eq!(p.error_code, ResponseError::NotLeaderOrFollower.code());
        assert_eq!(
            p.error_message.as_deref(),
            Some("node 2 is not the active controller; node 1 is")
        );
        assert_eq!((p.leader_id, p.leader_epoch), (BrokerId(1), 7));
        assert_eq!(p.high_watermark, -1);
        assert!(p.current_voters.is_empty() && p.observers.is_empty());
        assert!(
            response.nodes.iter().any(|n| n.node_id == BrokerId(1)),
            "the leader's listener is there to go to"
        );
        assert_eq!(round_trip(&response, 2), response);
        let v0 = describe_quorum(
            0,
            &metadata_log(),
            own_view(NodeId(2), &status),
            &brokers(),
            NOW_MS,
        );
        assert!(v0.nodes.is_empty(), "v0 has no nodes");
        assert_eq!(only_partition(&round_trip(&v0, 0)).leader_id, BrokerId(1));
    }

    #[test]
    fn without_a_leader_the_leader_id_is_minus_one() {
        let status = QuorumStatus {
            leader: None,
            term: 8,
            voter_matched: BTreeMap::new(),
            ..leader_status()
        };
        let response = describe_quorum(
            1,
            &metadata_log(),
            own_view(NodeId(1), &status),
            &brokers(),
            NOW_MS,
        );
        let p = only_partition(&response);
        assert_eq!(p.error_code, ResponseError::NotLeaderOrFollower.code());
        assert_eq!((p.leader_id, p.leader_epoch), (BrokerId(-1), 8));
    }

    #[test]
    fn anything_but_the_metadata_log_alone_is_an_unknown_partition() {
        for asked in [
            vec![("orders", &[0][..])],
            vec![(METADATA_TOPIC, &[1][..])],
            vec![(METADATA_TOPIC, &[0, 1][..])],
            vec![(METADATA_TOPIC, &[0][..]), ("orders", &[2][..])],
        ] {
            let response = describe_quorum(
                2,
                &request(&asked),
                own_view(NodeId(1), &leader_status()),
                &brokers(),
                NOW_MS,
            );
            assert_eq!(response.error_code, 0);
            assert!(response.nodes.is_empty());
            let answered: Vec<(String, i32, i16)> = response
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| (t.topic_name.0.to_string(), p.partition_index, p.error_code))
                })
                .collect();
            let expected: Vec<(String, i32, i16)> = asked
                .iter()
                .flat_map(|(name, partitions)| {
                    partitions.iter().map(|&p| {
                        (
                            (*name).to_owned(),
                            p,
                            ResponseError::UnknownTopicOrPartition.code(),
                        )
                    })
                })
                .collect();
            assert_eq!(answered, expected, "{asked:?}");
            assert_eq!(round_trip(&response, 0).topics.len(), asked.len());
        }
        let none = describe_quorum(
            2,
            &request(&[]),
            own_view(NodeId(1), &leader_status()),
            &brokers(),
            NOW_MS,
        );
        assert!(
            none.topics.is_empty() && none.error_code == 0,
            "as Kafka answers"
        );
    }

    #[test]
    fn huge_raft_numbers_saturate_instead_of_wrapping() {
        let status = QuorumStatus {
            term: u64::MAX,
            last_log_index: u64::MAX,
            committed_index: u64::MAX,
            ..leader_status()
        };
        let response = describe_quorum(
            2,
            &metadata_log(),
            own_view(NodeId(1), &status),
            &brokers(),
            NOW_MS,
        );
        let p = only_partition(&response);
        assert_eq!((p.leader_epoch, p.high_watermark), (i32::MAX, i64::MAX));
        assert_eq!(p.current_voters[0].log_end_offset, i64::MAX);
    }

    #[test]
    fn a_follower_that_got_the_leaders_view_answers_as_the_leader_would() {
        let leader = leader_status();
        let from_leader = describe_quorum(
            2,
            &metadata_log(),
            own_view(NodeId(1), &leader),
            &brokers(),
            NOW_MS,
        );
        // What node 2 answers after asking node 1: the same bytes.
        let forwarded = View::Leader {
            node: leader.leader.expect("a leader"),
            status: &leader,
        };
        let from_follower = describe_quorum(2, &metadata_log(), forwarded, &brokers(), NOW_MS);
        assert_eq!(from_follower, from_leader);
        let p = only_partition(&from_follower);
        assert_eq!(
            (p.error_code, p.leader_id, p.leader_epoch),
            (0, BrokerId(1), 7)
        );
        assert_eq!(p.current_voters.len(), 3);
    }

    #[test]
    fn a_follower_that_cannot_ask_the_leader_says_why_and_points_at_it() {
        let follower = QuorumStatus {
            voter_matched: BTreeMap::new(),
            ..leader_status()
        };
        let unreachable = ControllerError::PeerUnreachable {
            peer: NodeId(1),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        let view = View::NotLeader {
            node: NodeId(2),
            status: &follower,
            why: Some(&unreachable),
        };
        let response = describe_quorum(2, &metadata_log(), view, &brokers(), NOW_MS);
        let p = only_partition(&response);
        assert_eq!(p.error_code, ResponseError::NotLeaderOrFollower.code());
        assert_eq!((p.leader_id, p.leader_epoch), (BrokerId(1), 7));
        assert_eq!(
            p.error_message.as_deref(),
            Some(
                "node 2 is not the active controller; node 1 is \
                 (cannot reach the active controller 1: connection refused)"
            )
        );

        // The leader named a newer one: that one is the hint, not the stale local view.
        let moved = ControllerError::NotLeader {
            leader: Some(NodeId(3)),
        };
        let view = View::NotLeader {
            node: NodeId(2),
            status: &follower,
            why: Some(&moved),
        };
        let response = describe_quorum(2, &metadata_log(), view, &brokers(), NOW_MS);
        let p = only_partition(&response);
        assert_eq!(p.leader_id, BrokerId(3));
        assert_eq!(
            p.error_message.as_deref(),
            Some("node 2 is not the active controller; node 3 is")
        );
    }

    #[test]
    fn a_node_that_is_not_the_active_controller_never_points_at_itself() {
        // Node 1 still names itself (its leadership just ended) but could not answer as leader.
        let status = leader_status();
        let view = View::NotLeader {
            node: NodeId(1),
            status: &status,
            why: Some(&ControllerError::NotLeader { leader: None }),
        };
        let response = describe_quorum(2, &metadata_log(), view, &brokers(), NOW_MS);
        let p = only_partition(&response);
        assert_eq!(p.error_code, ResponseError::NotLeaderOrFollower.code());
        assert_eq!(p.leader_id, BrokerId(-1));
        assert!(p.current_voters.is_empty());
    }
}
