//! `spate group describe`: the coordinator, the group, its committed offsets and the log end
//! offsets, turned into rows with lag.

use super::{
    CONSUMER_PROTOCOL_TYPE, DEAD, FIND_COORDINATOR_BATCH_VERSION, LATEST_TIMESTAMP,
    LIST_OFFSETS_ISOLATION_VERSION, OFFSET_FETCH_ALL_VERSION, OFFSET_FETCH_GROUPS_VERSION,
    READ_COMMITTED,
};
use crate::cli::{self, dash, render_table};
use anyhow::Context;
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_protocol_assignment::ConsumerProtocolAssignment;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, FindCoordinatorRequest, GroupId, ListOffsetsRequest,
    OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Message, StrBytes};
use serde::Serialize;
use spate_client::{self as client, ClientError, Cluster};
use spate_types::TopicPartition;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub host: String,
    /// Decoded from the consumer protocol assignment; empty for other protocol types.
    pub assignment: Vec<TopicPartition>,
}

/// One row of the offsets table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OffsetRow {
    pub topic: String,
    pub partition: i32,
    pub current_offset: Option<i64>,
    /// The last stable offset (ListOffsets latest, read_committed): the end of what a
    /// `read_committed` consumer can reach.
    pub log_end_offset: Option<i64>,
    pub lag: Option<i64>,
    pub consumer_id: Option<String>,
    pub host: Option<String>,
    pub client_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupDescription {
    pub group: String,
    pub state: String,
    pub protocol_type: String,
    /// The assignor (e.g. "range") for consumer groups.
    pub protocol: String,
    pub coordinator: Node,
    pub members: Vec<Member>,
    pub offsets: Vec<OffsetRow>,
    /// The sum of the known lags.
    pub total_lag: i64,
}

pub(super) async fn describe_group(
    cluster: &mut Cluster,
    group: &str,
) -> anyhow::Result<GroupDescription> {
    let coordinator = find_coordinator(cluster, group).await?;
    let coordinator_addr = client::address(&coordinator.host, coordinator.port);

    let (_, response) = cluster
        .send(&coordinator_addr, |_| {
            DescribeGroupsRequest::default().with_groups(vec![group_id(group)])
        })
        .await?;
    let described = response
        .groups
        .into_iter()
        .find(|g| g.group_id.0.as_str() == group)
        .ok_or_else(|| anyhow::anyhow!("DescribeGroups response does not mention {group}"))?;
    match ResponseError::try_from_code(described.error_code) {
        Some(ResponseError::GroupIdNotFound) => return Err(not_found(group)),
        Some(error) => {
            return Err(ClientError::Kafka {
                context: format!("DescribeGroups {group} on {coordinator_addr}"),
                error,
                message: None,
            }
            .into())
        }
        None => {}
    }
    if described.group_state.as_str() == DEAD {
        return Err(not_found(group));
    }
    let protocol_type = described.protocol_type.to_string();
    let members: Vec<Member> = described
        .members
        .into_iter()
        .map(|m| {
            let member_id = m.member_id.to_string();
            let assignment = if protocol_type == CONSUMER_PROTOCOL_TYPE {
                decode_assignment(&m.member_assignment).unwrap_or_else(|e| {
                    eprintln!("warning: member {member_id}: {e:#}");
                    Vec::new()
                })
            } else {
                Vec::new()
            };
            Member {
                member_id,
                group_instance_id: m.group_instance_id.map(|s| s.to_string()),
                client_id: m.client_id.to_string(),
                host: m.client_host.to_string(),
                assignment,
            }
        })
        .collect();

    let committed = fetch_committed(cluster, &coordinator_addr, group).await?;
    let mut partitions: BTreeSet<TopicPartition> = committed.keys().cloned().collect();
    partitions.extend(members.iter().flat_map(|m| m.assignment.iter().cloned()));
    let log_end = fetch_log_end_offsets(cluster, &partitions).await?;
    let offsets = offset_rows(&members, &committed, &log_end);
    let total_lag = offsets.iter().filter_map(|r| r.lag).sum();
    Ok(GroupDescription {
        group: group.to_owned(),
        state: described.group_state.to_string(),
        protocol_type,
        protocol: described.protocol_data.to_string(),
        coordinator,
        members,
        offsets,
        total_lag,
    })
}

fn not_found(group: &str) -> anyhow::Error {
    anyhow::anyhow!("group {group} does not exist")
}

pub(super) fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_owned()))
}

async fn find_coordinator(cluster: &mut Cluster, group: &str) -> anyhow::Result<Node> {
    let bootstrap = cluster.bootstrap().await?;
    let key = || StrBytes::from_string(group.to_owned());
    // key_type 0 (group) is the default.
    let (version, response) = cluster
        .send(&bootstrap, |version| {
            if version >= FIND_COORDINATOR_BATCH_VERSION {
                FindCoordinatorRequest::default().with_coordinator_keys(vec![key()])
            } else {
                FindCoordinatorRequest::default().with_key(key())
            }
        })
        .await?;
    let context = || format!("FindCoordinator for group {group} on {bootstrap}");
    let node = if version >= FIND_COORDINATOR_BATCH_VERSION {
        let c = response
            .coordinators
            .into_iter()
            .find(|c| c.key.as_str() == group)
            .ok_or_else(|| anyhow::anyhow!("{}: no answer for the group", context()))?;
        client::check(c.error_code, context)?;
        Node {
            node_id: c.node_id.0,
            host: c.host.to_string(),
            port: c.port,
        }
    } else {
        client::check(response.error_code, context)?;
        Node {
            node_id: response.node_id.0,
            host: response.host.to_string(),
            port: response.port,
        }
    };
    tracing::debug!(group, node_id = node.node_id, "found coordinator");
    Ok(node)
}

/// Committed offsets of every partition the group has committed for.
async fn fetch_committed(
    cluster: &mut Cluster,
    coordinator: &str,
    group: &str,
) -> anyhow::Result<BTreeMap<TopicPartition, i64>> {
    let version = cluster.version::<OffsetFetchRequest>(coordinator).await?;
    anyhow::ensure!(
        version >= OFFSET_FETCH_ALL_VERSION,
        "broker {coordinator} offers OffsetFetch up to v{version}; fetching all of a group's \
         offsets needs v{OFFSET_FETCH_ALL_VERSION}"
    );
    let (version, response) = cluster
        .send(coordinator, |version| {
            if version >= OFFSET_FETCH_GROUPS_VERSION {
                OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                    .with_group_id(group_id(group))
                    .with_topics(None)])
            } else {
                OffsetFetchRequest::default()
                    .with_group_id(group_id(group))
                    .with_topics(None)
            }
        })
        .await?;
    let context = || format!("OffsetFetch {group} on {coordinator}");
    let mut committed = BTreeMap::new();
    let mut add = |topic: &str, partition: i32, offset: i64, code: i16| -> anyhow::Result<()> {
        if let Err(e) = client::check(code, || format!("{}, {topic}-{partition}", context())) {
            if e.is_coordinator_retriable() {
                return Err(e.into());
            }
            eprintln!("warning: {e}");
        } else if offset >= 0 {
            committed.insert(TopicPartition::new(topic, partition), offset);
        }
        Ok(())
    };
    if version >= OFFSET_FETCH_GROUPS_VERSION {
        let answer = response
            .groups
            .into_iter()
            .find(|g| g.group_id.0.as_str() == group)
            .ok_or_else(|| anyhow::anyhow!("{}: no answer for the group", context()))?;
        client::check(answer.error_code, context)?;
        for t in answer.topics {
            for p in t.partitions {
                add(
                    &t.name.0,
                    p.partition_index,
                    p.committed_offset,
                    p.error_code,
                )?;
            }
        }
    } else {
        client::check(response.error_code, context)?;
        for t in response.topics {
            for p in t.partitions {
                add(
                    &t.name.0,
                    p.partition_index,
                    p.committed_offset,
                    p.error_code,
                )?;
            }
        }
    }
    Ok(committed)
}

/// Log end offsets (read_committed: the last stable offset) from each partition's leader.
/// Partitions without a leader, or whose leader fails to answer, are left out.
async fn fetch_log_end_offsets(
    cluster: &mut Cluster,
    partitions: &BTreeSet<TopicPartition>,
) -> anyhow::Result<BTreeMap<TopicPartition, i64>> {
    let mut log_end = BTreeMap::new();
    // Sorted by topic, so equal names are adjacent.
    let mut topics: Vec<&str> = partitions.iter().map(|tp| tp.topic.as_str()).collect();
    topics.dedup();
    if topics.is_empty() {
        return Ok(log_end);
    }
    let bootstrap = cluster.bootstrap().await?;
    let (_, metadata) = cluster
        .send(&bootstrap, |version| {
            cli::metadata_request(version, Some(&topics))
        })
        .await?;
    let brokers: BTreeMap<i32, String> = metadata
        .brokers
        .iter()
        .map(|b| (b.node_id.0, client::address(&b.host, b.port)))
        .collect();
    let mut by_leader: BTreeMap<String, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
    for topic in &metadata.topics {
        let Some(name) = topic.name.as_ref().map(|n| n.0.to_string()) else {
            continue;
        };
        if let Err(e) = client::check(topic.error_code, || format!("Metadata for {name}")) {
            eprintln!("warning: {e}");
            continue;
        }
        for p in &topic.partitions {
            let tp = TopicPartition::new(name.clone(), p.partition_index);
            if !partitions.contains(&tp) {
                continue;
            }
            match brokers.get(&p.leader_id.0) {
                Some(addr) if p.error_code == 0 => by_leader
                    .entry(addr.clone())
                    .or_default()
                    .entry(name.clone())
                    .or_default()
                    .push(p.partition_index),
                _ => eprintln!("warning: {}-{} has no leader", tp.topic, tp.partition),
            }
        }
    }
    for (addr, topics) in &by_leader {
        let remaining_ms = cluster.deadline().remaining_ms_i32();
        let result = cluster
            .send(addr, |version| {
                let request = ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_timeout_ms(remaining_ms)
                    .with_topics(
                        topics
                            .iter()
                            .map(|(topic, partitions)| {
                                ListOffsetsTopic::default()
                                    .with_name(TopicName(StrBytes::from_string(topic.clone())))
                                    .with_partitions(
                                        partitions
                                            .iter()
                                            .map(|&p| {
                                                ListOffsetsPartition::default()
                                                    .with_partition_index(p)
                                                    .with_timestamp(LATEST_TIMESTAMP)
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    );
                if version >= LIST_OFFSETS_ISOLATION_VERSION {
                    request.with_isolation_level(READ_COMMITTED)
                } else {
                    request
                }
            })
            .await;
        let response = match result {
            Ok((_, response)) => response,
            Err(e) => {
                eprintln!("warning: no log end offsets from {addr}: {e}");
                continue;
            }
        };
        for t in response.topics {
            for p in t.partitions {
                let tp = TopicPartition::new(t.name.0.to_string(), p.partition_index);
                match client::check(p.error_code, || {
                    format!("ListOffsets {}-{}", tp.topic, tp.partition)
                }) {
                    Ok(()) if p.offset >= 0 => {
                        log_end.insert(tp, p.offset);
                    }
                    Ok(()) => {}
                    Err(e) => eprintln!("warning: {e}"),
                }
            }
        }
    }
    Ok(log_end)
}

/// Decodes a consumer group member's assignment (Kafka's ConsumerProtocolAssignment: a version,
/// then the assignment in that version). Versions newer than this client knows only add fields
/// at the end, so they are read as the newest known one, as Kafka's own clients do. Empty bytes
/// (a member that has no assignment yet) are an empty assignment.
pub fn decode_assignment(bytes: &Bytes) -> anyhow::Result<Vec<TopicPartition>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut buf = bytes.clone();
    anyhow::ensure!(
        buf.len() >= 2,
        "assignment of {} bytes has no version",
        buf.len()
    );
    let version = bytes::Buf::get_i16(&mut buf);
    anyhow::ensure!(version >= 0, "assignment has version {version}");
    let version = version.min(ConsumerProtocolAssignment::VERSIONS.max);
    let assignment = ConsumerProtocolAssignment::decode(&mut buf, version)
        .context("malformed consumer protocol assignment")?;
    let mut partitions: Vec<TopicPartition> = assignment
        .assigned_partitions
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|&p| TopicPartition::new(t.topic.0.to_string(), p))
        })
        .collect();
    partitions.sort();
    partitions.dedup();
    Ok(partitions)
}

/// Lag of a partition: log end offset minus committed offset, if both are known. Negative when
/// the committed offset is past the (read_committed) log end, which is shown as it is.
pub fn lag(current_offset: Option<i64>, log_end_offset: Option<i64>) -> Option<i64> {
    Some(log_end_offset? - current_offset?)
}

/// One row per partition that is committed or assigned, sorted by topic and partition.
pub fn offset_rows(
    members: &[Member],
    committed: &BTreeMap<TopicPartition, i64>,
    log_end: &BTreeMap<TopicPartition, i64>,
) -> Vec<OffsetRow> {
    let mut owner: BTreeMap<&TopicPartition, &Member> = BTreeMap::new();
    for m in members {
        for tp in &m.assignment {
            owner.insert(tp, m);
        }
    }
    let partitions: BTreeSet<&TopicPartition> =
        committed.keys().chain(owner.keys().copied()).collect();
    partitions
        .into_iter()
        .map(|tp| {
            let current_offset = committed.get(tp).copied();
            let log_end_offset = log_end.get(tp).copied();
            let member = owner.get(tp);
            OffsetRow {
                topic: tp.topic.clone(),
                partition: tp.partition,
                current_offset,
                log_end_offset,
                lag: lag(current_offset, log_end_offset),
                consumer_id: member.map(|m| m.member_id.clone()),
                host: member.map(|m| m.host.clone()),
                client_id: member.map(|m| m.client_id.clone()),
            }
        })
        .collect()
}

pub(super) fn render_description(d: &GroupDescription) -> String {
    let protocol = match (d.protocol_type.as_str(), d.protocol.as_str()) {
        ("", "") => "-".to_owned(),
        (t, "") => t.to_owned(),
        (t, p) => format!("{} ({p})", dash(t)),
    };
    let mut out = render_table(
        &["GROUP", d.group.as_str()],
        &[
            vec!["STATE".to_owned(), dash(&d.state)],
            vec!["PROTOCOL".to_owned(), protocol],
            vec![
                "COORDINATOR".to_owned(),
                format!(
                    "{} ({})",
                    d.coordinator.node_id,
                    client::address(&d.coordinator.host, d.coordinator.port)
                ),
            ],
            vec!["MEMBERS".to_owned(), d.members.len().to_string()],
        ],
    );
    out.push('\n');
    if d.members.is_empty() {
        out.push_str(&format!("Group {} has no active members.\n", d.group));
    } else {
        let rows: Vec<Vec<String>> = d
            .members
            .iter()
            .map(|m| {
                vec![
                    m.member_id.clone(),
                    m.group_instance_id
                        .clone()
                        .unwrap_or_else(|| "-".to_owned()),
                    dash(&m.client_id),
                    dash(&m.host),
                    render_assignment(&m.assignment),
                ]
            })
            .collect();
        out.push_str(&render_table(
            &[
                "MEMBER-ID",
                "GROUP-INSTANCE-ID",
                "CLIENT-ID",
                "HOST",
                "ASSIGNMENT",
            ],
            &rows,
        ));
    }
    out.push('\n');
    if d.offsets.is_empty() {
        out.push_str(&format!("Group {} has no committed offsets.\n", d.group));
    } else {
        let opt = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let rows: Vec<Vec<String>> = d
            .offsets
            .iter()
            .map(|r| {
                vec![
                    r.topic.clone(),
                    r.partition.to_string(),
                    opt(r.current_offset),
                    opt(r.log_end_offset),
                    opt(r.lag),
                    r.consumer_id.clone().unwrap_or_else(|| "-".to_owned()),
                ]
            })
            .collect();
        out.push_str(&render_table(
            &[
                "TOPIC",
                "PARTITION",
                "CURRENT-OFFSET",
                "LOG-END-OFFSET",
                "LAG",
                "CONSUMER-ID",
            ],
            &rows,
        ));
    }
    out
}

/// `topic:0,1,2 other:0`, or `-` for none.
fn render_assignment(partitions: &[TopicPartition]) -> String {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    if by_topic.is_empty() {
        return "-".to_owned();
    }
    by_topic
        .into_iter()
        .map(|(topic, ps)| {
            let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
            format!("{topic}:{}", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}
