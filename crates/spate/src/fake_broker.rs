//! A scripted broker for `spate group`'s tests: on top of spate-client's
//! [`ScriptedBroker`] (framing, version checks, KIP-511), it answers the APIs `spate group` uses
//! for one consumer group, at the version ranges a test chooses, and records every request it
//! was sent.
//!
//! The scripted group "g1" has one member "m1" assigned t-0, t-1 and t-2; committed offsets
//! 4, 3, 3; log end offsets 10 each (so the total lag is 20). Group "empty" has no members and
//! a committed offset 5 on t-0. Any other group is Dead.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::{
    ConsumerProtocolAssignment, TopicPartition as AssignedTopic,
};
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerId, DescribeGroupsRequest, DescribeGroupsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, ListGroupsRequest,
    ListGroupsResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse,
    OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use spate_test_broker::{Received, ScriptedBroker};
use std::sync::{Arc, Mutex};

pub const NODE_ID: i32 = 1;
pub const TOPIC: &str = "t";
const COMMITTED: [i64; 3] = [4, 3, 3];
const LOG_END: i64 = 10;

/// What the broker offers and how it misbehaves.
#[derive(Clone)]
pub struct Script {
    pub versions: Vec<(ApiKey, i16, i16)>,
    /// This many DescribeGroups are answered COORDINATOR_LOAD_IN_PROGRESS first.
    pub loading_answers: usize,
}

impl Script {
    /// Today's Kafka ranges, except ApiVersions only to v3 (so v4 is refused, KIP-511).
    pub fn modern() -> Script {
        Script {
            versions: vec![
                (ApiKey::ApiVersions, 0, 3),
                (ApiKey::Metadata, 0, 12),
                (ApiKey::FindCoordinator, 0, 6),
                (ApiKey::ListGroups, 0, 5),
                (ApiKey::DescribeGroups, 0, 5),
                (ApiKey::OffsetFetch, 1, 9),
                (ApiKey::ListOffsets, 1, 9),
            ],
            loading_answers: 0,
        }
    }

    /// A broker from before batched FindCoordinator, ListGroups states and grouped OffsetFetch.
    pub fn old() -> Script {
        Script {
            versions: vec![
                (ApiKey::ApiVersions, 0, 2),
                (ApiKey::Metadata, 0, 8),
                (ApiKey::FindCoordinator, 0, 2),
                (ApiKey::ListGroups, 0, 2),
                (ApiKey::DescribeGroups, 0, 4),
                (ApiKey::OffsetFetch, 1, 5),
                (ApiKey::ListOffsets, 1, 5),
            ],
            loading_answers: 0,
        }
    }
}

/// A request as the broker saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    ApiVersions(i16),
    Metadata(i16, MetadataRequest),
    FindCoordinator(i16, FindCoordinatorRequest),
    ListGroups(i16, ListGroupsRequest),
    DescribeGroups(i16),
    OffsetFetch(i16, OffsetFetchRequest),
    ListOffsets(i16, ListOffsetsRequest),
}

pub struct FakeBroker {
    pub addr: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

struct State {
    loading_left: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeBroker {
    pub async fn start(script: Script) -> FakeBroker {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut state = State {
            loading_left: script.loading_answers,
            seen: seen.clone(),
        };
        let broker =
            ScriptedBroker::start(script.versions, move |request| answer(&mut state, request))
                .await;
        FakeBroker {
            addr: broker.addr,
            seen,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

fn s(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

fn answer(state: &mut State, req: &Received) -> Bytes {
    assert_eq!(req.header.client_id.as_deref(), Some(crate::cli::CLIENT_ID));
    let version = req.version;
    let port = req.broker_port;
    let record = |seen: Seen| state.seen.lock().expect("lock").push(seen);
    match req.api_key {
        ApiKey::ApiVersions => {
            let _: ApiVersionsRequest = req.decode();
            record(Seen::ApiVersions(version));
            req.respond(&req.api_versions())
        }
        ApiKey::Metadata => {
            let request: MetadataRequest = req.decode();
            record(Seen::Metadata(version, request.clone()));
            let topics = request
                .topics
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| t.name)
                .filter(|n| n.0.as_str() == TOPIC)
                .map(|name| {
                    MetadataResponseTopic::default()
                        .with_name(Some(name))
                        .with_partitions(
                            (0..3)
                                .map(|p| {
                                    MetadataResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_leader_id(BrokerId(NODE_ID))
                                })
                                .collect(),
                        )
                })
                .collect();
            let response = MetadataResponse::default()
                .with_brokers(vec![MetadataResponseBroker::default()
                    .with_node_id(BrokerId(NODE_ID))
                    .with_host(s("127.0.0.1"))
                    .with_port(port)])
                .with_topics(topics);
            req.respond(&response)
        }
        ApiKey::FindCoordinator => {
            let request: FindCoordinatorRequest = req.decode();
            record(Seen::FindCoordinator(version, request.clone()));
            let response = if version >= 4 {
                FindCoordinatorResponse::default().with_coordinators(
                    request
                        .coordinator_keys
                        .into_iter()
                        .map(|key| {
                            Coordinator::default()
                                .with_key(key)
                                .with_node_id(BrokerId(NODE_ID))
                                .with_host(s("127.0.0.1"))
                                .with_port(port)
                        })
                        .collect(),
                )
            } else {
                FindCoordinatorResponse::default()
                    .with_node_id(BrokerId(NODE_ID))
                    .with_host(s("127.0.0.1"))
                    .with_port(port)
            };
            req.respond(&response)
        }
        ApiKey::ListGroups => {
            let request: ListGroupsRequest = req.decode();
            record(Seen::ListGroups(version, request.clone()));
            let all = [("g1", "Stable"), ("empty", "Empty")];
            let groups = all
                .iter()
                .filter(|(_, st)| {
                    request.states_filter.is_empty()
                        || request.states_filter.iter().any(|f| f.as_str() == *st)
                })
                .map(|(g, st)| {
                    let group = ListedGroup::default()
                        .with_group_id(GroupId(s(g)))
                        .with_protocol_type(s("consumer"));
                    if version >= 4 {
                        group.with_group_state(s(st))
                    } else {
                        group
                    }
                })
                .collect();
            req.respond(&ListGroupsResponse::default().with_groups(groups))
        }
        ApiKey::DescribeGroups => {
            let request: DescribeGroupsRequest = req.decode();
            record(Seen::DescribeGroups(version));
            let loading = state.loading_left > 0;
            state.loading_left = state.loading_left.saturating_sub(1);
            let groups = request
                .groups
                .into_iter()
                .map(|group| describe(group, loading))
                .collect();
            req.respond(&DescribeGroupsResponse::default().with_groups(groups))
        }
        ApiKey::OffsetFetch => {
            let request: OffsetFetchRequest = req.decode();
            record(Seen::OffsetFetch(version, request.clone()));
            let committed = |group: &str| -> Vec<(i32, i64)> {
                match group {
                    "g1" => (0..3).zip(COMMITTED).collect(),
                    "empty" => vec![(0, 5)],
                    _ => vec![],
                }
            };
            let response = if version >= 8 {
                OffsetFetchResponse::default().with_groups(
                    request
                        .groups
                        .into_iter()
                        .map(|g| {
                            let partitions: Vec<_> = committed(g.group_id.0.as_str())
                                .into_iter()
                                .map(|(p, o)| {
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(o)
                                })
                                .collect();
                            OffsetFetchResponseGroup::default()
                                .with_group_id(g.group_id)
                                .with_topics(vec![OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(s(TOPIC)))
                                    .with_partitions(partitions)])
                        })
                        .collect(),
                )
            } else {
                let partitions: Vec<_> = committed(request.group_id.0.as_str())
                    .into_iter()
                    .map(|(p, o)| {
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(o)
                    })
                    .collect();
                OffsetFetchResponse::default()
                    .with_topics(vec![OffsetFetchResponseTopic::default()
                        .with_name(TopicName(s(TOPIC)))
                        .with_partitions(partitions)])
            };
            req.respond(&response)
        }
        ApiKey::ListOffsets => {
            let request: ListOffsetsRequest = req.decode();
            record(Seen::ListOffsets(version, request.clone()));
            let topics = request
                .topics
                .into_iter()
                .map(|t| {
                    let partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_offset(LOG_END)
                        })
                        .collect();
                    ListOffsetsTopicResponse::default()
                        .with_name(t.name)
                        .with_partitions(partitions)
                })
                .collect();
            req.respond(&ListOffsetsResponse::default().with_topics(topics))
        }
        other => panic!("the fake broker does not answer {other:?}"),
    }
}

fn describe(group: GroupId, loading: bool) -> DescribedGroup {
    let described = DescribedGroup::default().with_group_id(group.clone());
    if loading {
        return described.with_error_code(14);
    }
    match group.0.as_str() {
        "g1" => {
            let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
                AssignedTopic::default()
                    .with_topic(TopicName(s(TOPIC)))
                    .with_partitions(vec![0, 1, 2]),
            ]);
            let mut bytes = BytesMut::new();
            bytes.put_i16(1);
            assignment.encode(&mut bytes, 1).expect("assignment");
            described
                .with_group_state(s("Stable"))
                .with_protocol_type(s("consumer"))
                .with_protocol_data(s("range"))
                .with_members(vec![DescribedGroupMember::default()
                    .with_member_id(s("m1"))
                    .with_client_id(s("client-1"))
                    .with_client_host(s("/127.0.0.1"))
                    .with_member_assignment(bytes.freeze())])
        }
        "empty" => described
            .with_group_state(s("Empty"))
            .with_protocol_type(s("consumer")),
        _ => described.with_group_state(s("Dead")),
    }
}
