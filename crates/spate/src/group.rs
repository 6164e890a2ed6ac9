//! `spate group list` and `spate group describe`: consumer groups and their lag, read over the
//! Kafka protocol the way an admin client reads them, so they work against any Kafka-compatible
//! broker.
//!
//! `describe` asks the bootstrap broker for the group's coordinator (FindCoordinator), the
//! coordinator for the group (DescribeGroups) and its committed offsets (OffsetFetch, all
//! partitions), the cluster for each partition's leader (Metadata) and each leader for the log
//! end offset (ListOffsets latest, read_committed). Lag is log end offset minus committed
//! offset; where either is unknown it is shown as "-".
//!
//! The log end offset shown (LOG-END-OFFSET, `log_end_offset`) is the partition's last stable
//! offset, for every group: the end of what a `read_committed` consumer can reach. Records of
//! a transaction still open are past it and not counted as lag until the transaction commits;
//! without open transactions it equals the high watermark. (The broker's
//! `spate_consumer_group_lag` metric uses the last stable offset only for groups that commit
//! offsets in transactions, and the high watermark for the others.)
//!
//! The fetching functions do I/O; everything that turns responses into rows and text is pure
//! and tested below.

use crate::cli::{self, dash, json, render_table, ConnectArgs, Output, Retry};
use anyhow::Context;
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_protocol_assignment::ConsumerProtocolAssignment;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, FindCoordinatorRequest, GroupId, ListGroupsRequest,
    ListOffsetsRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Message, StrBytes};
use serde::Serialize;
use spate_client::{self as client, ClientError, Cluster};
use spate_types::TopicPartition;
use std::collections::{BTreeMap, BTreeSet};

/// The ListGroups version that brought the states filter (KIP-518).
const LIST_GROUPS_STATES_VERSION: i16 = 4;
/// FindCoordinator from this version looks up a batch of keys (KIP-699).
const FIND_COORDINATOR_BATCH_VERSION: i16 = 4;
/// OffsetFetch from this version asks for several groups at once (KIP-709).
const OFFSET_FETCH_GROUPS_VERSION: i16 = 8;
/// OffsetFetch with topics = null ("all partitions") exists from this version.
const OFFSET_FETCH_ALL_VERSION: i16 = 2;
/// ListOffsets has an isolation level from this version.
const LIST_OFFSETS_ISOLATION_VERSION: i16 = 2;
const READ_COMMITTED: i8 = 1;
const LATEST_TIMESTAMP: i64 = -1;
const CONSUMER_PROTOCOL_TYPE: &str = "consumer";
/// DescribeGroups answers this state for a group that does not exist.
const DEAD: &str = "Dead";
/// Group states as Kafka spells them (classic and KIP-848 consumer groups).
const KNOWN_STATES: &[&str] = &[
    "PreparingRebalance",
    "CompletingRebalance",
    "Stable",
    "Empty",
    "Dead",
    "Assigning",
    "Reconciling",
    "NotReady",
];

#[derive(clap::Subcommand)]
pub enum GroupCommand {
    /// List consumer groups: GROUP, STATE, PROTOCOL TYPE.
    List(ListArgs),
    /// Describe a group: state, members and their partitions, committed offsets and lag.
    ///
    /// LOG-END-OFFSET is the last stable offset (what a read_committed consumer can reach):
    /// records of an open transaction are not counted as lag until it commits.
    Describe(DescribeArgs),
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only groups in these states (repeatable or comma separated), e.g. Stable,Empty.
    #[arg(long = "state", value_name = "STATE", value_delimiter = ',')]
    states: Vec<String>,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(clap::Args)]
pub struct DescribeArgs {
    /// The group id.
    group: String,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Runs a `spate group` command; returns what to print on stdout.
pub fn run(command: GroupCommand) -> anyhow::Result<String> {
    cli::block_on(async {
        match command {
            GroupCommand::List(args) => {
                let states = canonical_states(&args.states);
                let mut cluster = args.connect.cluster();
                let groups = list_with_retries(&mut cluster, &states).await?;
                Ok(match args.connect.output {
                    Output::Text => render_list(&groups),
                    Output::Json => json(&serde_json::json!({ "groups": groups }))?,
                })
            }
            GroupCommand::Describe(args) => {
                let mut cluster = args.connect.cluster();
                let description = describe_with_retries(&mut cluster, &args.group).await?;
                Ok(match args.connect.output {
                    Output::Text => render_description(&description),
                    Output::Json => json(&description)?,
                })
            }
        }
    })
}

async fn list_with_retries(
    cluster: &mut Cluster,
    states: &[String],
) -> anyhow::Result<Vec<ListedGroup>> {
    let mut retry = Retry::default();
    loop {
        match list_groups(cluster, states).await {
            Ok(groups) => return Ok(groups),
            Err(error) => {
                retry
                    .wait(cluster, error, ClientError::is_coordinator_retriable)
                    .await?
            }
        }
    }
}

async fn describe_with_retries(
    cluster: &mut Cluster,
    group: &str,
) -> anyhow::Result<GroupDescription> {
    let mut retry = Retry::default();
    loop {
        match describe_group(cluster, group).await {
            Ok(description) => return Ok(description),
            Err(error) => {
                retry
                    .wait(cluster, error, ClientError::is_coordinator_retriable)
                    .await?
            }
        }
    }
}

// ---- list ---------------------------------------------------------------------------------

/// One row of `spate group list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListedGroup {
    pub group: String,
    pub state: String,
    pub protocol_type: String,
}

async fn list_groups(cluster: &mut Cluster, states: &[String]) -> anyhow::Result<Vec<ListedGroup>> {
    // Each broker lists the groups it coordinates, so every broker is asked.
    let bootstrap = cluster.bootstrap().await?;
    let (_, metadata) = cluster
        .send(&bootstrap, |version| {
            cli::metadata_request(version, Some(&[]))
        })
        .await?;
    let mut brokers: BTreeSet<String> = metadata
        .brokers
        .iter()
        .map(|b| client::address(&b.host, b.port))
        .collect();
    if brokers.is_empty() {
        brokers.insert(bootstrap);
    }
    let mut groups = Vec::new();
    for addr in &brokers {
        let (version, response) = cluster
            .send(addr, |version| {
                let request = ListGroupsRequest::default();
                if version >= LIST_GROUPS_STATES_VERSION {
                    request.with_states_filter(
                        states
                            .iter()
                            .map(|s| StrBytes::from_string(s.clone()))
                            .collect(),
                    )
                } else {
                    request
                }
            })
            .await?;
        client::check(response.error_code, || format!("ListGroups on {addr}"))?;
        tracing::debug!(%addr, version, groups = response.groups.len(), "listed groups");
        let mut listed: Vec<ListedGroup> = response
            .groups
            .into_iter()
            .map(|g| ListedGroup {
                group: g.group_id.0.to_string(),
                state: g.group_state.to_string(),
                protocol_type: g.protocol_type.to_string(),
            })
            .collect();
        if version < LIST_GROUPS_STATES_VERSION && !listed.is_empty() {
            // No states before v4: the broker that lists a group coordinates it, so it can
            // describe them all.
            fill_states(cluster, addr, &mut listed).await?;
        }
        groups.extend(listed);
    }
    // Brokers older than ListGroups v4 cannot filter: the states are filtered here.
    Ok(filter_groups(groups, states))
}

/// States of `groups` from DescribeGroups on their coordinator `addr`; groups that have gone
/// (Dead) are dropped.
async fn fill_states(
    cluster: &mut Cluster,
    addr: &str,
    groups: &mut Vec<ListedGroup>,
) -> anyhow::Result<()> {
    let ids = groups.iter().map(|g| group_id(&g.group)).collect();
    let (_, response) = cluster
        .send(addr, |_| DescribeGroupsRequest::default().with_groups(ids))
        .await?;
    let states: BTreeMap<String, (i16, String)> = response
        .groups
        .into_iter()
        .map(|g| {
            (
                g.group_id.0.to_string(),
                (g.error_code, g.group_state.to_string()),
            )
        })
        .collect();
    for g in groups.iter_mut() {
        match states.get(&g.group) {
            Some((0, state)) => g.state = state.clone(),
            Some((code, _)) => {
                client::check(*code, || format!("DescribeGroups {} on {addr}", g.group))?
            }
            None => {}
        }
    }
    groups.retain(|g| g.state != DEAD);
    Ok(())
}

/// Known state names in Kafka's spelling, whatever case they were typed in.
fn canonical_states(states: &[String]) -> Vec<String> {
    states
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            KNOWN_STATES
                .iter()
                .find(|k| k.eq_ignore_ascii_case(s))
                .map_or_else(|| s.to_owned(), |k| (*k).to_owned())
        })
        .collect()
}

/// Sorted by group id, one row per group, only the given states (all if none are given).
fn filter_groups(groups: Vec<ListedGroup>, states: &[String]) -> Vec<ListedGroup> {
    let mut by_id = BTreeMap::new();
    for g in groups {
        if states.is_empty() || states.iter().any(|s| s.eq_ignore_ascii_case(&g.state)) {
            by_id.insert(g.group.clone(), g);
        }
    }
    by_id.into_values().collect()
}

fn render_list(groups: &[ListedGroup]) -> String {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| vec![g.group.clone(), dash(&g.state), dash(&g.protocol_type)])
        .collect();
    render_table(&["GROUP", "STATE", "PROTOCOL TYPE"], &rows)
}

// ---- describe -----------------------------------------------------------------------------

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

async fn describe_group(cluster: &mut Cluster, group: &str) -> anyhow::Result<GroupDescription> {
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

fn group_id(group: &str) -> GroupId {
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

fn render_description(d: &GroupDescription) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
    use kafka_protocol::protocol::Encodable;
    use std::time::Duration;

    fn encoded_assignment(version: i16, topics: &[(&str, &[i32])]) -> Bytes {
        let assignment = ConsumerProtocolAssignment::default()
            .with_assigned_partitions(
                topics
                    .iter()
                    .map(|(t, ps)| {
                        AssignedTopic::default()
                            .with_topic(TopicName(StrBytes::from_string((*t).to_owned())))
                            .with_partitions(ps.to_vec())
                    })
                    .collect(),
            )
            .with_user_data(Some(Bytes::from_static(b"ud")));
        let mut buf = bytes::BytesMut::new();
        bytes::BufMut::put_i16(&mut buf, version);
        assignment
            .encode(&mut buf, version.min(3))
            .expect("encodes");
        buf.freeze()
    }

    fn member(id: &str, assignment: &[(&str, i32)]) -> Member {
        Member {
            member_id: id.to_owned(),
            group_instance_id: None,
            client_id: "rdkafka".to_owned(),
            host: "/127.0.0.1".to_owned(),
            assignment: assignment
                .iter()
                .map(|(t, p)| TopicPartition::new(*t, *p))
                .collect(),
        }
    }

    #[test]
    fn decodes_assignments_of_every_version_sorted() {
        for version in 0..=3 {
            let bytes = encoded_assignment(version, &[("t", &[2, 0]), ("a", &[1])]);
            assert_eq!(
                decode_assignment(&bytes).expect("decodes"),
                vec![
                    TopicPartition::new("a", 1),
                    TopicPartition::new("t", 0),
                    TopicPartition::new("t", 2)
                ],
                "version {version}"
            );
        }
    }

    #[test]
    fn newer_assignment_versions_read_as_the_newest_known() {
        let mut bytes = encoded_assignment(7, &[("t", &[0])]).to_vec();
        bytes.extend_from_slice(b"fields from the future");
        assert_eq!(
            decode_assignment(&Bytes::from(bytes)).expect("decodes"),
            vec![TopicPartition::new("t", 0)]
        );
    }

    #[test]
    fn empty_assignment_is_no_partitions_and_garbage_is_an_error() {
        assert_eq!(decode_assignment(&Bytes::new()).expect("empty"), vec![]);
        assert!(decode_assignment(&Bytes::from_static(&[0])).is_err());
        assert!(decode_assignment(&Bytes::from_static(&[0xff, 0xff, 0, 0])).is_err());
        // Claims 2^31-1 topics in 4 bytes.
        assert!(decode_assignment(&Bytes::from_static(&[0, 0, 0x7f, 0xff, 0xff, 0xff])).is_err());
    }

    #[test]
    fn lag_needs_both_offsets() {
        assert_eq!(lag(Some(4), Some(10)), Some(6));
        assert_eq!(lag(Some(10), Some(10)), Some(0));
        assert_eq!(lag(None, Some(10)), None);
        assert_eq!(lag(Some(4), None), None);
        assert_eq!(lag(Some(12), Some(10)), Some(-2));
    }

    #[test]
    fn rows_cover_committed_and_assigned_partitions() {
        let members = vec![
            member("m1", &[("t", 0), ("t", 1)]),
            member("m2", &[("t", 2)]),
        ];
        let committed = BTreeMap::from([
            (TopicPartition::new("t", 0), 4),
            (TopicPartition::new("t", 2), 3),
            (TopicPartition::new("old", 0), 7),
        ]);
        let log_end = BTreeMap::from([
            (TopicPartition::new("t", 0), 10),
            (TopicPartition::new("t", 1), 10),
            (TopicPartition::new("t", 2), 10),
        ]);
        let rows = offset_rows(&members, &committed, &log_end);
        let summary: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.topic.as_str(),
                    r.partition,
                    r.current_offset,
                    r.log_end_offset,
                    r.lag,
                    r.consumer_id.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("old", 0, Some(7), None, None, None),
                ("t", 0, Some(4), Some(10), Some(6), Some("m1")),
                ("t", 1, None, Some(10), None, Some("m1")),
                ("t", 2, Some(3), Some(10), Some(7), Some("m2")),
            ]
        );
    }

    #[test]
    fn describe_text_shows_dashes_for_unknown_offsets() {
        let members = vec![member("m1", &[("t", 0), ("t", 1)])];
        let committed = BTreeMap::from([(TopicPartition::new("t", 0), 4)]);
        let log_end = BTreeMap::from([
            (TopicPartition::new("t", 0), 10),
            (TopicPartition::new("t", 1), 10),
        ]);
        let offsets = offset_rows(&members, &committed, &log_end);
        let d = GroupDescription {
            group: "g1".into(),
            state: "Stable".into(),
            protocol_type: "consumer".into(),
            protocol: "range".into(),
            coordinator: Node {
                node_id: 1,
                host: "127.0.0.1".into(),
                port: 9092,
            },
            total_lag: offsets.iter().filter_map(|r| r.lag).sum(),
            members,
            offsets,
        };
        let text = render_description(&d);
        assert!(text.contains("STATE        Stable\n"), "{text}");
        assert!(text.contains("PROTOCOL     consumer (range)\n"), "{text}");
        assert!(text.contains("COORDINATOR  1 (127.0.0.1:9092)\n"), "{text}");
        assert!(
            text.contains("m1         -                  rdkafka    /127.0.0.1  t:0,1\n"),
            "{text}"
        );
        assert!(
            text.contains("t      0          4               10              6    m1\n"),
            "{text}"
        );
        assert!(
            text.contains("t      1          -               10              -    m1\n"),
            "{text}"
        );
        assert_eq!(d.total_lag, 6);
        let json = serde_json::to_value(&d).expect("json");
        assert_eq!(
            json["offsets"][1]["current_offset"],
            serde_json::Value::Null
        );
        assert_eq!(json["members"][0]["assignment"][1]["partition"], 1);
    }

    #[test]
    fn list_filters_states_case_insensitively_and_sorts() {
        let g = |id: &str, state: &str| ListedGroup {
            group: id.into(),
            state: state.into(),
            protocol_type: "consumer".into(),
        };
        let groups = vec![
            g("b", "Stable"),
            g("a", "Empty"),
            g("c", "Stable"),
            g("b", "Stable"),
        ];
        let states = canonical_states(&["stable".to_owned()]);
        assert_eq!(states, vec!["Stable".to_owned()]);
        assert_eq!(
            filter_groups(groups.clone(), &states),
            vec![g("b", "Stable"), g("c", "Stable")]
        );
        assert_eq!(filter_groups(groups, &[]).len(), 3);
        assert_eq!(
            canonical_states(&["Weird".to_owned(), " ".to_owned()]),
            vec!["Weird"]
        );
    }

    // ---- against the scripted broker -----------------------------------------------------

    use crate::fake_broker::{FakeBroker, Script, Seen};

    #[tokio::test]
    async fn describe_on_a_modern_broker_uses_the_newest_versions() {
        let broker = FakeBroker::start(Script::modern()).await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let d = describe_with_retries(&mut cluster, "g1")
            .await
            .expect("describe");
        assert_eq!((d.state.as_str(), d.protocol.as_str()), ("Stable", "range"));
        assert_eq!(d.members.len(), 1);
        assert_eq!(
            d.members[0].assignment,
            (0..3)
                .map(|p| TopicPartition::new("t", p))
                .collect::<Vec<_>>()
        );
        let offsets: Vec<_> = d
            .offsets
            .iter()
            .map(|r| (r.partition, r.current_offset, r.log_end_offset, r.lag))
            .collect();
        assert_eq!(
            offsets,
            vec![
                (0, Some(4), Some(10), Some(6)),
                (1, Some(3), Some(10), Some(7)),
                (2, Some(3), Some(10), Some(7))
            ]
        );
        assert_eq!(d.total_lag, 20);
        assert!(d
            .offsets
            .iter()
            .all(|r| r.consumer_id.as_deref() == Some("m1")));

        let seen = broker.seen();
        // ApiVersions v4 was refused (KIP-511), v3 answered; one connection (the coordinator is
        // the bootstrap broker and the leader).
        assert_eq!(
            seen.iter()
                .filter(|s| matches!(s, Seen::ApiVersions(_)))
                .collect::<Vec<_>>(),
            vec![&Seen::ApiVersions(3)]
        );
        for s in &seen {
            match s {
                Seen::FindCoordinator(v, r) => {
                    assert_eq!(*v, 6);
                    assert_eq!(r.coordinator_keys, vec![StrBytes::from_static_str("g1")]);
                    assert_eq!(r.key_type, 0);
                }
                Seen::OffsetFetch(v, r) => {
                    assert_eq!(*v, 9);
                    assert_eq!(r.groups.len(), 1);
                    assert_eq!(r.groups[0].topics, None, "all partitions");
                }
                Seen::ListOffsets(v, r) => {
                    assert_eq!(*v, 9);
                    assert_eq!((r.replica_id.0, r.isolation_level), (-1, READ_COMMITTED));
                    assert!(r.topics[0].partitions.iter().all(|p| p.timestamp == -1));
                }
                Seen::Metadata(v, r) => {
                    assert_eq!(*v, 12);
                    assert!(!r.allow_auto_topic_creation);
                }
                Seen::DescribeGroups(v) => assert_eq!(*v, 5),
                Seen::ApiVersions(_) | Seen::ListGroups(..) => {}
            }
        }
    }

    #[tokio::test]
    async fn describe_on_an_old_broker_uses_the_older_request_forms() {
        let broker = FakeBroker::start(Script::old()).await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let d = describe_with_retries(&mut cluster, "g1")
            .await
            .expect("describe");
        assert_eq!(d.total_lag, 20);
        for s in broker.seen() {
            match s {
                Seen::FindCoordinator(v, r) => {
                    assert_eq!(v, 2);
                    assert_eq!(r.key.as_str(), "g1");
                }
                Seen::OffsetFetch(v, r) => {
                    assert_eq!(v, 5);
                    assert_eq!((r.group_id.0.as_str(), r.topics), ("g1", None));
                }
                Seen::ListOffsets(v, r) => assert_eq!((v, r.isolation_level), (5, 1)),
                Seen::ApiVersions(v) => assert_eq!(v, 2),
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn an_empty_group_shows_committed_offsets_without_consumers() {
        let broker = FakeBroker::start(Script::modern()).await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let d = describe_with_retries(&mut cluster, "empty")
            .await
            .expect("describe");
        assert_eq!(d.state, "Empty");
        assert!(d.members.is_empty());
        assert_eq!(d.offsets.len(), 1);
        assert_eq!(
            (d.offsets[0].lag, d.offsets[0].consumer_id.clone()),
            (Some(5), None)
        );
        assert!(render_description(&d).contains("Group empty has no active members."));
    }

    #[tokio::test]
    async fn an_unknown_group_does_not_exist() {
        let broker = FakeBroker::start(Script::modern()).await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let err = describe_with_retries(&mut cluster, "nope")
            .await
            .expect_err("dead");
        assert_eq!(format!("{err:#}"), "group nope does not exist");
    }

    #[tokio::test]
    async fn a_loading_coordinator_is_retried_until_the_deadline() {
        let broker = FakeBroker::start(Script {
            loading_answers: 3,
            ..Script::modern()
        })
        .await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let d = describe_with_retries(&mut cluster, "g1")
            .await
            .expect("after retries");
        assert_eq!(d.state, "Stable");
        let describes = broker
            .seen()
            .iter()
            .filter(|s| matches!(s, Seen::DescribeGroups(_)))
            .count();
        assert_eq!(describes, 4);

        let broker = FakeBroker::start(Script {
            loading_answers: usize::MAX,
            ..Script::modern()
        })
        .await;
        let started = std::time::Instant::now();
        let mut cluster = cli::cluster(&broker.addr, 300);
        let err = describe_with_retries(&mut cluster, "g1")
            .await
            .expect_err("gives up");
        let message = format!("{err:#}");
        assert!(message.starts_with("gave up after 300 ms: "), "{message}");
        assert!(
            message.contains("COORDINATOR_LOAD_IN_PROGRESS"),
            "{message}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn list_filters_on_the_broker_or_here() {
        for (script, filter_version) in [(Script::modern(), 5), (Script::old(), 2)] {
            let broker = FakeBroker::start(script).await;
            let mut cluster = cli::cluster(&broker.addr, 5_000);
            let all = list_with_retries(&mut cluster, &[]).await.expect("list");
            let states: Vec<_> = all
                .iter()
                .map(|g| (g.group.as_str(), g.state.as_str()))
                .collect();
            assert_eq!(states, vec![("empty", "Empty"), ("g1", "Stable")]);
            let stable = list_with_retries(&mut cluster, &canonical_states(&["STABLE".into()]))
                .await
                .expect("list");
            assert_eq!(stable.len(), 1, "v{filter_version}");
            assert_eq!(stable[0].group, "g1");
            let last = broker
                .seen()
                .into_iter()
                .filter_map(|s| match s {
                    Seen::ListGroups(v, r) => Some((v, r.states_filter.len())),
                    _ => None,
                })
                .last();
            let sent = if filter_version >= LIST_GROUPS_STATES_VERSION {
                1
            } else {
                0
            };
            assert_eq!(last, Some((filter_version, sent)));
        }
    }

    #[tokio::test]
    async fn unreachable_and_silent_brokers_fail_clearly() {
        // A port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let mut cluster = cli::cluster(&format!("127.0.0.1:{port}"), 2_000);
        let err = list_with_retries(&mut cluster, &[])
            .await
            .expect_err("refused");
        assert!(
            format!("{err:#}").starts_with(&format!("cannot connect to broker 127.0.0.1:{port}: ")),
            "{err:#}"
        );
        // A listener that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = silent.local_addr().expect("addr").to_string();
        let mut cluster = cli::cluster(&addr, 200);
        let started = std::time::Instant::now();
        let err = describe_with_retries(&mut cluster, "g1")
            .await
            .expect_err("silent");
        assert_eq!(
            format!("{err:#}"),
            format!("timed out after 200 ms waiting for the ApiVersions response ({addr})")
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
