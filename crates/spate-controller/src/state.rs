//! The metadata state machine: `apply(image, command) -> outcome`, pure and I/O-free.
//!
//! Invariants:
//! - `apply` is a total, deterministic function of `(image, command)`: same commands in the same
//!   order give the same image on every replica. It never panics on any command, because a
//!   committed entry that panicked on apply would take down every replica on every restart.
//! - A rejected command leaves the image untouched.
//! - Every partition has `1 <= replicas.len() <= alive brokers at creation`, `leader ==
//!   replicas[0]`, and `isr == replicas` at creation, with `leader_epoch` 0. Replicas are placed
//!   on unfenced brokers only.
//! - The ISR is never empty and is a subset of the replicas; the leader is an ISR member or
//!   [`NO_LEADER`]; only unfenced brokers are elected. A broker leaves an ISR only while another
//!   member is alive, so the last member standing (which holds every committed record) stays
//!   eligible: there is no unclean election.
//! - `leader_epoch` grows on every leader change, `partition_epoch` on every leader or ISR
//!   change; neither ever goes back.
//! - Producer id blocks never overlap: `next_producer_id` only grows.
//! - Group and broker config overrides stay within the limits of `resource_configs.rs`.
//!
//! `last_applied_index` and `controller_id` are Raft facts, maintained by the Raft glue, not here.

use crate::metadata::{
    MetadataCommand, MetadataError, MetadataImage, MetadataOutcome, PartitionImage, TopicImage,
    NO_LEADER,
};
use crate::resource_configs;
use spate_types::limits::PARTITIONS_PER_TOPIC_MAX;
use spate_types::{validate_topic_name, LeaderEpoch, NodeId, ProducerId};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Largest producer id block one command may take. Coordinators ask for small blocks (Kafka
/// uses 1000); a bigger request is a bug in the proposer, not a reason to burn the id space.
pub const PRODUCER_IDS_PER_BLOCK_MAX: i64 = 1_000_000;

/// Applies one command to the image and says what happened.
pub fn apply(image: &mut MetadataImage, cmd: &MetadataCommand) -> MetadataOutcome {
    let result = match cmd {
        MetadataCommand::InitCluster { cluster_id } => {
            if cluster_id.is_empty() {
                Err(MetadataError::InvalidRequest("empty cluster id".to_owned()))
            } else {
                let id = image.cluster_id.get_or_insert_with(|| cluster_id.clone());
                Ok(MetadataOutcome::ClusterInitialized {
                    cluster_id: id.clone(),
                })
            }
        }
        MetadataCommand::RegisterBroker {
            node,
            endpoint,
            directory_id,
        } => {
            if node.0 < 0 {
                Err(MetadataError::InvalidRequest(format!(
                    "broker node id {node} is negative"
                )))
            } else {
                // A new incarnation may have lost its unflushed tail: it must not keep leading
                // in an epoch whose records others may hold beyond its log end. Fence it until
                // it has caught up. With the same data directory it still holds everything it
                // fsynced, so it keeps its ISR places (see `RegisterBroker`).
                let same_directory = !directory_id.is_nil()
                    && image.broker_directories.get(node) == Some(directory_id);
                image.brokers.insert(*node, endpoint.clone());
                image.broker_directories.insert(*node, *directory_id);
                let places = if same_directory {
                    IsrPlaces::Keep
                } else {
                    IsrPlaces::Leave
                };
                fence(image, *node, places);
                image.shutting_down.remove(node);
                let broker_epoch = image.last_applied_index;
                image.broker_epochs.insert(*node, broker_epoch);
                Ok(MetadataOutcome::BrokerRegistered { broker_epoch })
            }
        }
        MetadataCommand::FenceBroker { node, shutdown } => {
            if !image.brokers.contains_key(node) {
                Err(MetadataError::UnknownBroker {
                    node: *node,
                    broker_epoch: 0,
                })
            } else {
                fence(image, *node, IsrPlaces::Leave);
                if *shutdown {
                    image.shutting_down.insert(*node);
                }
                Ok(MetadataOutcome::BrokerFenced)
            }
        }
        MetadataCommand::UnfenceBroker { node, broker_epoch } => {
            if image.broker_epochs.get(node) != Some(broker_epoch) {
                Err(MetadataError::UnknownBroker {
                    node: *node,
                    broker_epoch: *broker_epoch,
                })
            } else {
                unfence(image, *node);
                Ok(MetadataOutcome::BrokerUnfenced)
            }
        }
        MetadataCommand::AlterPartition {
            topic,
            partition,
            leader,
            leader_epoch,
            partition_epoch,
            isr,
        } => alter_partition(
            image,
            topic,
            *partition,
            *leader,
            *leader_epoch,
            *partition_epoch,
            isr,
        ),
        MetadataCommand::LeaveIsr {
            topic,
            topic_id,
            partition,
            node,
        } => leave_isr(image, topic, *topic_id, *partition, *node),
        MetadataCommand::ElectPreferredLeaders { partitions } => {
            let mut moved = 0;
            for (topic, index) in partitions {
                let alive = alive_set(image);
                let Some(p) = partition_mut(image, topic, *index) else {
                    continue;
                };
                let Some(preferred) = p.replicas.first().copied() else {
                    continue;
                };
                if p.leader != preferred && p.isr.contains(&preferred) && alive.contains(&preferred)
                {
                    set_leader(p, preferred);
                    moved += 1;
                }
            }
            Ok(MetadataOutcome::LeadersElected { moved })
        }
        MetadataCommand::CreateTopic {
            name,
            topic_id,
            partitions,
            replication_factor,
            configs,
            assignments,
        } => create_topic(
            image,
            name,
            *topic_id,
            (*partitions, *replication_factor, assignments.as_deref()),
            configs,
        ),
        MetadataCommand::DeleteTopic { name, topic_id } => match image.topics.get(name) {
            Some(topic) if topic_id.is_none_or(|id| id == topic.topic_id) => {
                let topic_id = topic.topic_id;
                image.topics.remove(name);
                Ok(MetadataOutcome::TopicDeleted { topic_id })
            }
            _ => Err(MetadataError::UnknownTopic(name.clone())),
        },
        MetadataCommand::CreatePartitions {
            name,
            new_total,
            assignments,
        } => create_partitions(image, name, *new_total, assignments.as_deref()),
        MetadataCommand::SetTopicConfigs {
            name,
            configs,
            expected,
        } => match image.topics.get_mut(name) {
            Some(topic) if expected.as_ref().is_some_and(|e| *e != topic.configs) => Err(
                MetadataError::ConcurrentModification(format!("topic '{name}'")),
            ),
            Some(topic) => {
                topic.configs = configs.clone();
                Ok(MetadataOutcome::TopicConfigsSet)
            }
            None => Err(MetadataError::UnknownTopic(name.clone())),
        },
        MetadataCommand::AllocateProducerIds { node, count } => {
            allocate_producer_ids(image, *node, *count)
        }
        MetadataCommand::SetGroupConfigs {
            group,
            configs,
            expected,
        } => resource_configs::set_group_configs(image, group, configs, expected.as_ref()),
        MetadataCommand::SetBrokerConfigs {
            node,
            configs,
            expected,
        } => resource_configs::set_broker_configs(image, *node, configs, expected.as_ref()),
    };
    result.unwrap_or_else(MetadataOutcome::Rejected)
}

fn create_topic(
    image: &mut MetadataImage,
    name: &str,
    topic_id: Uuid,
    (partitions, replication_factor, assignments): (i32, i16, Option<&[Vec<NodeId>]>),
    configs: &BTreeMap<String, String>,
) -> Result<MetadataOutcome, MetadataError> {
    validate_topic_name(name).map_err(MetadataError::InvalidTopicName)?;
    if image.topics.contains_key(name) {
        return Err(MetadataError::TopicAlreadyExists(name.to_owned()));
    }
    if topic_id.is_nil() {
        return Err(MetadataError::InvalidRequest(format!(
            "topic '{name}' proposed with the nil topic id, which Kafka reserves"
        )));
    }
    if image.topic_by_id(topic_id).is_some() {
        // Astronomically unlikely with random ids; the proposer retries with a fresh id.
        return Err(MetadataError::TopicAlreadyExists(name.to_owned()));
    }
    check_partition_count(partitions)?;
    let nodes: Vec<NodeId> = image.alive_brokers().map(|(id, _)| *id).collect();
    let brokers = nodes.len();
    if replication_factor == -1 {
        return Err(MetadataError::InvalidReplicationFactor(
            "replication factor -1 (broker default) must be resolved by the front end before proposing"
                .to_owned(),
        ));
    }
    if replication_factor < 1 {
        return Err(MetadataError::InvalidReplicationFactor(format!(
            "replication factor must be at least 1, got {replication_factor}"
        )));
    }
    let replication_factor = usize::from(replication_factor.unsigned_abs());
    let partitions = if let Some(lists) = assignments {
        if usize::try_from(partitions).ok() != Some(lists.len()) {
            return Err(MetadataError::InvalidRequest(format!(
                "topic '{name}' proposed with {partitions} partition(s) but {} replica list(s)",
                lists.len()
            )));
        }
        manual_partitions(image, 0, lists, Some(replication_factor))?
    } else {
        if replication_factor > brokers {
            return Err(MetadataError::InvalidReplicationFactor(format!(
                "replication factor {replication_factor} is larger than the {brokers} available broker(s)"
            )));
        }
        (0..partitions)
            .map(|p| assign_partition(&nodes, topic_id, p, replication_factor))
            .collect()
    };
    image.topics.insert(
        name.to_owned(),
        TopicImage {
            topic_id,
            partitions,
            configs: configs.clone(),
        },
    );
    Ok(MetadataOutcome::TopicCreated { topic_id })
}

fn create_partitions(
    image: &mut MetadataImage,
    name: &str,
    new_total: i32,
    assignments: Option<&[Vec<NodeId>]>,
) -> Result<MetadataOutcome, MetadataError> {
    let nodes: Vec<NodeId> = image.alive_brokers().map(|(id, _)| *id).collect();
    let Some(topic) = image.topics.get(name) else {
        return Err(MetadataError::UnknownTopic(name.to_owned()));
    };
    let current = topic.partitions.len();
    if usize::try_from(new_total).map_or(true, |total| total <= current) {
        return Err(MetadataError::InvalidPartitions(format!(
            "topic '{name}' has {current} partition(s); the new total {new_total} must be larger"
        )));
    }
    check_partition_count(new_total)?;
    // New partitions keep the topic's replication factor.
    let replication_factor = topic
        .partitions
        .first()
        .map_or(1, |p| p.replicas.len())
        .max(1);
    let first_new = i32::try_from(current).unwrap_or(i32::MAX);
    let added: Vec<PartitionImage> = if let Some(lists) = assignments {
        if i32::try_from(lists.len()).ok() != new_total.checked_sub(first_new) {
            return Err(MetadataError::InvalidReplicaAssignment(format!(
                "Attempted to add {} additional partition(s), but only {} assignment(s) were specified.",
                new_total - first_new,
                lists.len()
            )));
        }
        manual_partitions(image, first_new, lists, Some(replication_factor))?
    } else {
        if replication_factor > nodes.len() {
            return Err(MetadataError::InvalidReplicationFactor(format!(
                "topic '{name}' has replication factor {replication_factor} but only {} broker(s) are available",
                nodes.len()
            )));
        }
        (first_new..new_total)
            .map(|p| assign_partition(&nodes, topic.topic_id, p, replication_factor))
            .collect()
    };
    if let Some(topic) = image.topics.get_mut(name) {
        topic.partitions.extend(added);
    }
    Ok(MetadataOutcome::PartitionsCreated)
}

/// Kafka's checks of manually assigned replica lists, one per partition from `first_index` on
/// (none empty, no broker twice, every broker registered, `replication_factor` replicas each or,
/// without it, as many as the first list, at least one unfenced replica per partition), and the
/// partitions they make: the unfenced replicas form the ISR and the first of them leads.
///
/// Public so the front end answers a `validate_only` request exactly as the controller would.
pub fn manual_partitions(
    image: &MetadataImage,
    first_index: i32,
    lists: &[Vec<NodeId>],
    replication_factor: Option<usize>,
) -> Result<Vec<PartitionImage>, MetadataError> {
    let invalid = MetadataError::InvalidReplicaAssignment;
    let mut replication_factor = replication_factor;
    let mut partitions = Vec::with_capacity(lists.len());
    for (replicas, index) in lists.iter().zip(first_index..) {
        if replicas.is_empty() {
            return Err(invalid(
                "The manual partition assignment includes an empty replica list.".to_owned(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for id in replicas {
            if !seen.insert(*id) {
                return Err(invalid(format!(
                    "The manual partition assignment includes the broker {id} more than once."
                )));
            }
            if !image.brokers.contains_key(id) {
                return Err(invalid(format!(
                    "The manual partition assignment includes broker {id}, but no such broker is registered."
                )));
            }
        }
        match replication_factor {
            Some(rf) if rf != replicas.len() => {
                return Err(invalid(format!(
                    "The manual partition assignment includes a partition with {} replica(s), but this is not consistent with previous partitions, which have {rf} replica(s).",
                    replicas.len()
                )));
            }
            _ => replication_factor = Some(replicas.len()),
        }
        let isr: Vec<NodeId> = replicas
            .iter()
            .copied()
            .filter(|id| image.is_alive(*id))
            .collect();
        let Some(leader) = isr.first().copied() else {
            return Err(invalid(format!(
                "All brokers specified in the manual partition assignment for partition {index} are fenced or in controlled shutdown."
            )));
        };
        partitions.push(PartitionImage {
            leader,
            leader_epoch: LeaderEpoch(0),
            partition_epoch: 0,
            isr,
            replicas: replicas.clone(),
        });
    }
    Ok(partitions)
}

fn allocate_producer_ids(
    image: &mut MetadataImage,
    node: NodeId,
    count: i64,
) -> Result<MetadataOutcome, MetadataError> {
    if !(1..=PRODUCER_IDS_PER_BLOCK_MAX).contains(&count) {
        return Err(MetadataError::InvalidRequest(format!(
            "node {node} asked for {count} producer ids; a block holds 1 to {PRODUCER_IDS_PER_BLOCK_MAX}"
        )));
    }
    let first = image.next_producer_id;
    let Some(next) = first.checked_add(count) else {
        return Err(MetadataError::InvalidRequest(
            "the producer id space is exhausted".to_owned(),
        ));
    };
    image.next_producer_id = next;
    Ok(MetadataOutcome::ProducerIds {
        first: ProducerId(first),
        count,
    })
}

fn alive_set(image: &MetadataImage) -> std::collections::BTreeSet<NodeId> {
    image.alive_brokers().map(|(id, _)| *id).collect()
}

fn partition_mut<'a>(
    image: &'a mut MetadataImage,
    topic: &str,
    partition: i32,
) -> Option<&'a mut PartitionImage> {
    let index = usize::try_from(partition).ok()?;
    image.topics.get_mut(topic)?.partitions.get_mut(index)
}

/// A leader change: new leader (or none) in a new leader epoch and partition epoch.
fn set_leader(p: &mut PartitionImage, leader: NodeId) {
    p.leader = leader;
    p.leader_epoch = LeaderEpoch(p.leader_epoch.0.saturating_add(1));
    p.partition_epoch = p.partition_epoch.saturating_add(1);
}

/// Whether a fenced broker leaves the ISRs it is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IsrPlaces {
    /// Out of every ISR where another member is alive (a missed session, a new directory).
    Leave,
    /// Kept (a restart with the same data directory: it still holds what it fsynced).
    Keep,
}

/// Marks `node` fenced, takes it out of ISRs as `places` says, and moves its leaderships to the
/// first live ISR member in replica order (or to none).
fn fence(image: &mut MetadataImage, node: NodeId, places: IsrPlaces) {
    image.fenced.insert(node);
    let alive = alive_set(image);
    for topic in image.topics.values_mut() {
        for p in &mut topic.partitions {
            let mut changed = false;
            if places == IsrPlaces::Leave
                && p.isr.contains(&node)
                && p.isr.iter().any(|r| *r != node && alive.contains(r))
            {
                p.isr.retain(|r| *r != node);
                changed = true;
            }
            if p.leader == node {
                let next = p
                    .replicas
                    .iter()
                    .copied()
                    .find(|r| *r != node && p.isr.contains(r) && alive.contains(r))
                    .unwrap_or(NO_LEADER);
                set_leader(p, next);
            } else if changed {
                p.partition_epoch = p.partition_epoch.saturating_add(1);
            }
        }
    }
}

/// Marks `node` alive again and gives every leaderless partition whose ISR now has a live
/// member a leader.
fn unfence(image: &mut MetadataImage, node: NodeId) {
    image.fenced.remove(&node);
    image.shutting_down.remove(&node);
    let alive = alive_set(image);
    for topic in image.topics.values_mut() {
        for p in &mut topic.partitions {
            if p.has_leader() {
                continue;
            }
            if let Some(next) = p
                .replicas
                .iter()
                .copied()
                .find(|r| p.isr.contains(r) && alive.contains(r))
            {
                set_leader(p, next);
            }
        }
    }
}

fn alter_partition(
    image: &mut MetadataImage,
    topic: &str,
    partition: i32,
    leader: NodeId,
    leader_epoch: LeaderEpoch,
    partition_epoch: i32,
    isr: &[NodeId],
) -> Result<MetadataOutcome, MetadataError> {
    let alive = alive_set(image);
    let Some(p) = partition_mut(image, topic, partition) else {
        return Err(MetadataError::UnknownTopic(topic.to_owned()));
    };
    if p.leader != leader || p.leader_epoch != leader_epoch {
        return Err(MetadataError::StalePartitionState(format!(
            "{topic}-{partition}: leader {leader} in epoch {leader_epoch} asked, but the leader is {} in epoch {}",
            p.leader, p.leader_epoch
        )));
    }
    if p.partition_epoch != partition_epoch {
        return Err(MetadataError::StalePartitionState(format!(
            "{topic}-{partition}: partition epoch {partition_epoch} asked, current is {}",
            p.partition_epoch
        )));
    }
    let distinct: std::collections::BTreeSet<&NodeId> = isr.iter().collect();
    if isr.is_empty() || distinct.len() != isr.len() {
        return Err(MetadataError::InvalidIsr(format!(
            "{topic}-{partition}: ISR {isr:?} is empty or repeats a broker"
        )));
    }
    if let Some(r) = isr.iter().find(|r| !p.replicas.contains(r)) {
        return Err(MetadataError::InvalidIsr(format!(
            "{topic}-{partition}: {r} is not a replica"
        )));
    }
    if !isr.contains(&leader) {
        return Err(MetadataError::InvalidIsr(format!(
            "{topic}-{partition}: the ISR must hold the leader {leader}"
        )));
    }
    if let Some(r) = isr
        .iter()
        .find(|r| !p.isr.contains(r) && !alive.contains(r))
    {
        return Err(MetadataError::InvalidIsr(format!(
            "{topic}-{partition}: {r} is fenced and cannot join the ISR"
        )));
    }
    // Replica order, so that images do not depend on the order a leader listed them in.
    p.isr = p
        .replicas
        .iter()
        .copied()
        .filter(|r| isr.contains(r))
        .collect();
    p.partition_epoch = p.partition_epoch.saturating_add(1);
    Ok(MetadataOutcome::PartitionAltered {
        partition_epoch: p.partition_epoch,
    })
}

/// See [`MetadataCommand::LeaveIsr`].
fn leave_isr(
    image: &mut MetadataImage,
    topic: &str,
    topic_id: Uuid,
    partition: i32,
    node: NodeId,
) -> Result<MetadataOutcome, MetadataError> {
    if image
        .topics
        .get(topic)
        .is_none_or(|t| t.topic_id != topic_id)
    {
        return Err(MetadataError::UnknownTopic(topic.to_owned()));
    }
    let alive = alive_set(image);
    let Some(p) = partition_mut(image, topic, partition) else {
        return Err(MetadataError::UnknownTopic(topic.to_owned()));
    };
    if !p.isr.contains(&node) {
        return Ok(MetadataOutcome::PartitionAltered {
            partition_epoch: p.partition_epoch,
        });
    }
    let Some(next) = p
        .replicas
        .iter()
        .copied()
        .find(|r| *r != node && p.isr.contains(r) && alive.contains(r))
    else {
        return Err(MetadataError::InvalidIsr(format!(
            "{topic}-{partition}: {node} is the last live ISR member"
        )));
    };
    p.isr.retain(|r| *r != node);
    if p.leader == node {
        set_leader(p, next);
    } else {
        p.partition_epoch = p.partition_epoch.saturating_add(1);
    }
    Ok(MetadataOutcome::PartitionAltered {
        partition_epoch: p.partition_epoch,
    })
}

fn check_partition_count(partitions: i32) -> Result<(), MetadataError> {
    if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&partitions) {
        return Err(MetadataError::InvalidPartitions(format!(
            "partition count must be between 1 and {PARTITIONS_PER_TOPIC_MAX}, got {partitions}"
        )));
    }
    Ok(())
}

/// Round-robin over the registered brokers (in node id order), starting at a position that
/// depends on the partition and on the topic id. The topic id term spreads the leaders of many
/// single-partition topics over the brokers, as Kafka's random start index does, while staying
/// deterministic: the id was chosen by the proposer and travels in the command.
///
/// Callers guarantee `1 <= replication_factor <= nodes.len()`.
fn assign_partition(
    nodes: &[NodeId],
    topic_id: Uuid,
    partition: i32,
    replication_factor: usize,
) -> PartitionImage {
    let n = nodes.len().max(1);
    let topic_offset = (topic_id.as_u128() % n as u128) as usize;
    let partition = usize::try_from(partition).unwrap_or(0);
    let start = (topic_offset + partition) % n;
    let replicas: Vec<NodeId> = (0..replication_factor)
        .filter_map(|i| nodes.get((start + i) % n).copied())
        .collect();
    PartitionImage {
        leader: replicas.first().copied().unwrap_or(NO_LEADER),
        leader_epoch: LeaderEpoch(0),
        partition_epoch: 0,
        isr: replicas.clone(),
        replicas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::BrokerEndpoint;

    fn endpoint(port: u16) -> BrokerEndpoint {
        BrokerEndpoint {
            host: "localhost".into(),
            port,
            rack: None,
        }
    }

    /// Registers `node` and unfences it, as a broker that caught up does.
    pub(super) fn register_alive(image: &mut MetadataImage, node: NodeId) {
        image.last_applied_index += 1;
        let out = apply(
            image,
            &MetadataCommand::RegisterBroker {
                node,
                directory_id: Uuid::nil(),
                endpoint: endpoint(9092),
            },
        );
        let broker_epoch = image.last_applied_index;
        assert_eq!(out, MetadataOutcome::BrokerRegistered { broker_epoch });
        image.last_applied_index += 1;
        let out = apply(
            image,
            &MetadataCommand::UnfenceBroker { node, broker_epoch },
        );
        assert_eq!(out, MetadataOutcome::BrokerUnfenced);
    }

    fn with_brokers(n: i32) -> MetadataImage {
        let mut image = MetadataImage::default();
        for node in 0..n {
            register_alive(&mut image, NodeId(node));
        }
        image
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn create(name: &str, topic_id: Uuid, partitions: i32, rf: i16) -> MetadataCommand {
        MetadataCommand::CreateTopic {
            name: name.into(),
            topic_id,
            partitions,
            replication_factor: rf,
            configs: BTreeMap::new(),
            assignments: None,
        }
    }

    /// Applies a command expected to be rejected and checks the image did not change.
    fn rejected(image: &mut MetadataImage, cmd: MetadataCommand) -> MetadataError {
        let before = image.clone();
        match apply(image, &cmd) {
            MetadataOutcome::Rejected(e) => {
                assert_eq!(*image, before, "a rejected {cmd} changed the image");
                e
            }
            other => panic!("{cmd} should be rejected, got {other:?}"),
        }
    }

    fn register(image: &mut MetadataImage, node: i32, directory: u128) {
        image.last_applied_index += 1;
        let out = apply(
            image,
            &MetadataCommand::RegisterBroker {
                node: NodeId(node),
                directory_id: Uuid::from_u128(directory),
                endpoint: endpoint(9092),
            },
        );
        assert!(
            matches!(out, MetadataOutcome::BrokerRegistered { .. }),
            "{out:?}"
        );
    }

    fn isr(image: &MetadataImage) -> Vec<NodeId> {
        image.topics["t"].partitions[0].isr.clone()
    }

    #[test]
    fn a_restart_with_the_same_directory_keeps_isr_places_but_not_leadership() {
        let mut image = MetadataImage::default();
        for node in 0..3 {
            register(&mut image, node, 100 + node as u128);
            let epoch = image.last_applied_index;
            apply(
                &mut image,
                &MetadataCommand::UnfenceBroker {
                    node: NodeId(node),
                    broker_epoch: epoch,
                },
            );
        }
        apply(&mut image, &create("t", id(1), 1, 3));
        let p = &image.topics["t"].partitions[0];
        let (leader, epoch) = (p.leader, p.leader_epoch);
        let all = isr(&image);
        let others: Vec<NodeId> = all.iter().copied().filter(|r| *r != leader).collect();
        let dir = |n: NodeId| 100 + n.0 as u128;

        // The leader restarts with its own directory: fenced, leadership moves in a new epoch,
        // but it still holds everything it fsynced, so it stays in the ISR.
        register(&mut image, leader.0, dir(leader));
        let p = &image.topics["t"].partitions[0];
        assert!(image.fenced.contains(&leader));
        assert!(others.contains(&p.leader), "{:?}", p.leader);
        assert!(p.leader_epoch > epoch);
        assert_eq!(isr(&image), all);
        let new_leader = p.leader;
        let follower = others.iter().copied().find(|r| *r != new_leader).unwrap();

        // A follower comes back with a new directory (a wiped disk): it leaves the ISR.
        register(&mut image, follower.0, 999);
        assert!(!isr(&image).contains(&follower));
        assert_eq!(image.broker_directories[&follower], Uuid::from_u128(999));
        // An unknown (nil) directory counts as new, even when the stored one is nil too; the
        // last live member stays (and with every member fenced, nobody leads).
        register(&mut image, new_leader.0, 0);
        register(&mut image, new_leader.0, 0);
        assert_eq!(isr(&image).len(), 2, "{:?}", isr(&image));
        assert_eq!(image.topics["t"].partitions[0].leader, NO_LEADER);
    }

    #[test]
    fn register_broker_adds_and_replaces() {
        let mut image = MetadataImage {
            last_applied_index: 4,
            ..MetadataImage::default()
        };
        let cmd = MetadataCommand::RegisterBroker {
            node: NodeId(3),
            directory_id: Uuid::nil(),
            endpoint: endpoint(1),
        };
        assert_eq!(
            apply(&mut image, &cmd),
            MetadataOutcome::BrokerRegistered { broker_epoch: 4 }
        );
        assert!(
            image.fenced.contains(&NodeId(3)),
            "registered brokers start fenced"
        );
        image.last_applied_index = 9;
        let cmd = MetadataCommand::RegisterBroker {
            node: NodeId(3),
            directory_id: Uuid::nil(),
            endpoint: endpoint(2),
        };
        assert_eq!(
            apply(&mut image, &cmd),
            MetadataOutcome::BrokerRegistered { broker_epoch: 9 }
        );
        assert_eq!(image.brokers.len(), 1);
        assert_eq!(image.brokers[&NodeId(3)].port, 2);
        assert_eq!(image.broker_epochs[&NodeId(3)], 9);
        // The first incarnation's epoch no longer unfences it.
        let e = rejected(
            &mut image,
            MetadataCommand::UnfenceBroker {
                node: NodeId(3),
                broker_epoch: 4,
            },
        );
        assert!(matches!(e, MetadataError::UnknownBroker { .. }), "{e}");
        assert_eq!(
            apply(
                &mut image,
                &MetadataCommand::UnfenceBroker {
                    node: NodeId(3),
                    broker_epoch: 9
                }
            ),
            MetadataOutcome::BrokerUnfenced
        );
        assert!(image.is_alive(NodeId(3)));
    }

    #[test]
    fn register_broker_rejects_negative_node() {
        let mut image = MetadataImage::default();
        let e = rejected(
            &mut image,
            MetadataCommand::RegisterBroker {
                node: NodeId(-1),
                directory_id: Uuid::nil(),
                endpoint: endpoint(1),
            },
        );
        assert!(matches!(e, MetadataError::InvalidRequest(_)), "{e}");
    }

    #[test]
    fn create_topic_assigns_round_robin_replicas() {
        let mut image = with_brokers(3);
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_owned(), "1000".to_owned());
        // 3 % 3 == 0: no topic offset, so partition p starts at broker p % 3.
        let cmd = MetadataCommand::CreateTopic {
            name: "orders".into(),
            topic_id: id(3),
            partitions: 4,
            replication_factor: 2,
            configs: configs.clone(),
            assignments: None,
        };
        assert_eq!(
            apply(&mut image, &cmd),
            MetadataOutcome::TopicCreated { topic_id: id(3) }
        );
        let topic = &image.topics["orders"];
        assert_eq!(topic.topic_id, id(3));
        assert_eq!(topic.configs, configs);
        let replicas: Vec<Vec<i32>> = topic
            .partitions
            .iter()
            .map(|p| p.replicas.iter().map(|n| n.0).collect())
            .collect();
        assert_eq!(
            replicas,
            vec![vec![0, 1], vec![1, 2], vec![2, 0], vec![0, 1]]
        );
        for p in &topic.partitions {
            assert_eq!(p.leader, p.replicas[0]);
            assert_eq!(p.isr, p.replicas);
            assert_eq!(p.leader_epoch, LeaderEpoch(0));
        }
        assert_eq!(image.topic_by_id(id(3)).map(|(n, _)| n), Some("orders"));
        assert!(image.topic_by_id(id(4)).is_none());
    }

    #[test]
    fn topic_id_shifts_the_first_leader() {
        let mut image = with_brokers(3);
        apply(&mut image, &create("a", id(4), 1, 1)); // 4 % 3 == 1
        apply(&mut image, &create("b", id(5), 1, 1)); // 5 % 3 == 2
        assert_eq!(image.topics["a"].partitions[0].leader, NodeId(1));
        assert_eq!(image.topics["b"].partitions[0].leader, NodeId(2));
    }

    #[test]
    fn create_topic_rejections() {
        let mut image = with_brokers(2);
        assert!(matches!(
            apply(&mut image, &create("t", id(1), 1, 1)),
            MetadataOutcome::TopicCreated { .. }
        ));

        let e = rejected(&mut image, create("t", id(2), 1, 1));
        assert_eq!(e, MetadataError::TopicAlreadyExists("t".into()));
        let e = rejected(&mut image, create("other", id(1), 1, 1));
        assert_eq!(
            e,
            MetadataError::TopicAlreadyExists("other".into()),
            "duplicate topic id"
        );
        let e = rejected(&mut image, create("nil", Uuid::nil(), 1, 1));
        assert!(matches!(e, MetadataError::InvalidRequest(_)), "{e}");

        for bad in ["", ".", "..", "has space", "a/b", &"x".repeat(250)] {
            let e = rejected(&mut image, create(bad, id(9), 1, 1));
            assert!(
                matches!(e, MetadataError::InvalidTopicName(_)),
                "{bad:?}: {e}"
            );
        }
        for bad in [0, -1, PARTITIONS_PER_TOPIC_MAX + 1, i32::MIN, i32::MAX] {
            let e = rejected(&mut image, create("p", id(9), bad, 1));
            assert!(
                matches!(e, MetadataError::InvalidPartitions(_)),
                "{bad}: {e}"
            );
        }
        for bad in [0, -2, 3, i16::MIN, i16::MAX] {
            let e = rejected(&mut image, create("r", id(9), 1, bad));
            assert!(
                matches!(e, MetadataError::InvalidReplicationFactor(_)),
                "{bad}: {e}"
            );
        }
        let e = rejected(&mut image, create("r", id(9), 1, -1));
        assert!(e.to_string().contains("broker default"), "{e}");

        let mut empty = MetadataImage::default();
        let e = rejected(&mut empty, create("r", id(9), 1, 1));
        assert!(
            matches!(e, MetadataError::InvalidReplicationFactor(_)),
            "no brokers: {e}"
        );
    }

    #[test]
    fn create_topic_accepts_limits() {
        let mut image = with_brokers(1);
        let name = "n".repeat(249);
        let out = apply(
            &mut image,
            &create(&name, id(1), PARTITIONS_PER_TOPIC_MAX, 1),
        );
        assert_eq!(out, MetadataOutcome::TopicCreated { topic_id: id(1) });
        assert_eq!(
            image.topics[&name].partitions.len(),
            PARTITIONS_PER_TOPIC_MAX as usize
        );
    }

    #[test]
    fn delete_topic() {
        let mut image = with_brokers(1);
        apply(&mut image, &create("t", id(7), 2, 1));
        let out = apply(
            &mut image,
            &MetadataCommand::DeleteTopic {
                name: "t".into(),
                topic_id: None,
            },
        );
        assert_eq!(out, MetadataOutcome::TopicDeleted { topic_id: id(7) });
        assert!(image.topics.is_empty());
        let e = rejected(
            &mut image,
            MetadataCommand::DeleteTopic {
                name: "t".into(),
                topic_id: None,
            },
        );
        assert_eq!(e, MetadataError::UnknownTopic("t".into()));
        // The name can be reused with a new id.
        assert!(matches!(
            apply(&mut image, &create("t", id(8), 1, 1)),
            MetadataOutcome::TopicCreated { .. }
        ));
    }

    #[test]
    fn create_partitions_extends_with_same_replication_factor() {
        let mut image = with_brokers(3);
        apply(&mut image, &create("t", id(3), 2, 2));
        let out = apply(
            &mut image,
            &MetadataCommand::CreatePartitions {
                name: "t".into(),
                new_total: 5,
                assignments: None,
            },
        );
        assert_eq!(out, MetadataOutcome::PartitionsCreated);
        let topic = &image.topics["t"];
        assert_eq!(topic.partitions.len(), 5);
        let replicas: Vec<Vec<i32>> = topic
            .partitions
            .iter()
            .map(|p| p.replicas.iter().map(|n| n.0).collect())
            .collect();
        assert_eq!(
            replicas,
            vec![vec![0, 1], vec![1, 2], vec![2, 0], vec![0, 1], vec![1, 2]]
        );
        for p in &topic.partitions {
            assert_eq!(p.leader, p.replicas[0]);
            assert_eq!(p.isr, p.replicas);
        }
    }

    #[test]
    fn create_partitions_rejections() {
        let mut image = with_brokers(1);
        apply(&mut image, &create("t", id(1), 3, 1));
        let cp = |new_total| MetadataCommand::CreatePartitions {
            name: "t".into(),
            new_total,
            assignments: None,
        };
        for bad in [
            3,
            2,
            0,
            -1,
            i32::MIN,
            PARTITIONS_PER_TOPIC_MAX + 1,
            i32::MAX,
        ] {
            let e = rejected(&mut image, cp(bad));
            assert!(
                matches!(e, MetadataError::InvalidPartitions(_)),
                "{bad}: {e}"
            );
        }
        let e = rejected(
            &mut image,
            MetadataCommand::CreatePartitions {
                name: "nope".into(),
                new_total: 4,
                assignments: None,
            },
        );
        assert_eq!(e, MetadataError::UnknownTopic("nope".into()));
        assert_eq!(
            apply(&mut image, &cp(PARTITIONS_PER_TOPIC_MAX)),
            MetadataOutcome::PartitionsCreated
        );
    }

    #[test]
    fn set_topic_configs_replaces_the_map() {
        let mut image = with_brokers(1);
        let mut configs = BTreeMap::new();
        configs.insert("cleanup.policy".to_owned(), "compact".to_owned());
        apply(
            &mut image,
            &MetadataCommand::CreateTopic {
                name: "t".into(),
                topic_id: id(1),
                partitions: 1,
                replication_factor: 1,
                configs,
                assignments: None,
            },
        );
        let mut new = BTreeMap::new();
        new.insert("retention.ms".to_owned(), "5".to_owned());
        let out = apply(
            &mut image,
            &MetadataCommand::SetTopicConfigs {
                name: "t".into(),
                configs: new.clone(),
                expected: None,
            },
        );
        assert_eq!(out, MetadataOutcome::TopicConfigsSet);
        assert_eq!(image.topics["t"].configs, new);
        let e = rejected(
            &mut image,
            MetadataCommand::SetTopicConfigs {
                name: "u".into(),
                configs: BTreeMap::new(),
                expected: None,
            },
        );
        assert_eq!(e, MetadataError::UnknownTopic("u".into()));
    }

    #[test]
    fn producer_id_blocks_are_contiguous_and_disjoint() {
        let mut image = MetadataImage::default();
        let alloc = |node, count| MetadataCommand::AllocateProducerIds {
            node: NodeId(node),
            count,
        };
        assert_eq!(
            apply(&mut image, &alloc(1, 1000)),
            MetadataOutcome::ProducerIds {
                first: ProducerId(0),
                count: 1000
            }
        );
        assert_eq!(
            apply(&mut image, &alloc(2, 10)),
            MetadataOutcome::ProducerIds {
                first: ProducerId(1000),
                count: 10
            }
        );
        assert_eq!(image.next_producer_id, 1010);
        for bad in [0, -1, i64::MIN, PRODUCER_IDS_PER_BLOCK_MAX + 1] {
            let e = rejected(&mut image, alloc(1, bad));
            assert!(matches!(e, MetadataError::InvalidRequest(_)), "{bad}: {e}");
        }
        image.next_producer_id = i64::MAX - 5;
        let e = rejected(&mut image, alloc(1, 10));
        assert!(e.to_string().contains("exhausted"), "{e}");
    }

    #[test]
    fn same_commands_give_the_same_image() {
        let commands = || {
            let mut cmds = Vec::new();
            for node in [5, 1, 3] {
                cmds.push(MetadataCommand::RegisterBroker {
                    node: NodeId(node),
                    directory_id: Uuid::nil(),
                    endpoint: endpoint(9000),
                });
            }
            for i in 0..20u128 {
                cmds.push(create(
                    &format!("topic-{i}"),
                    id(i * 7 + 1),
                    (i % 5) as i32 + 1,
                    (i % 3) as i16 + 1,
                ));
            }
            cmds.push(MetadataCommand::CreatePartitions {
                name: "topic-3".into(),
                new_total: 9,
                assignments: None,
            });
            cmds.push(MetadataCommand::DeleteTopic {
                name: "topic-4".into(),
                topic_id: None,
            });
            cmds.push(MetadataCommand::DeleteTopic {
                name: "missing".into(),
                topic_id: None,
            });
            cmds.push(MetadataCommand::AllocateProducerIds {
                node: NodeId(1),
                count: 1000,
            });
            cmds
        };
        let run = || {
            let mut image = MetadataImage::default();
            let mut outcomes = Vec::new();
            for c in commands() {
                if let MetadataCommand::RegisterBroker { node, .. } = &c {
                    register_alive(&mut image, *node);
                    continue;
                }
                outcomes.push(apply(&mut image, &c));
            }
            (image, outcomes)
        };
        let (a, out_a) = run();
        let (b, out_b) = run();
        assert_eq!(a, b);
        assert_eq!(out_a, out_b);
        // Byte-identical serialization, which is what snapshots compare.
        assert_eq!(serde_json::to_vec(&a).ok(), serde_json::to_vec(&b).ok());
        assert_eq!(a.topics.len(), 19);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn command() -> impl Strategy<Value = MetadataCommand> {
            let name =
                prop::sample::select(vec!["a", "b", "c", "bad name", ""]).prop_map(str::to_owned);
            prop_oneof![
                // Directories 0 (nil: unknown), 1 and 2: restarts with the same, a new or
                // an unknown data directory.
                (-1..6i32, 0..3u128).prop_map(|(n, d)| MetadataCommand::RegisterBroker {
                    node: NodeId(n),
                    directory_id: Uuid::from_u128(d),
                    endpoint: BrokerEndpoint {
                        host: "h".into(),
                        port: 1,
                        rack: None
                    },
                }),
                (name.clone(), 0..8u128, -1..20i32, -2..5i16).prop_map(
                    |(name, id, partitions, rf)| {
                        MetadataCommand::CreateTopic {
                            name,
                            topic_id: Uuid::from_u128(id),
                            partitions,
                            replication_factor: rf,
                            configs: BTreeMap::new(),
                            assignments: None,
                        }
                    }
                ),
                name.clone().prop_map(|name| MetadataCommand::DeleteTopic {
                    name,
                    topic_id: None
                }),
                (name.clone(), -1..30i32).prop_map(|(name, new_total)| {
                    MetadataCommand::CreatePartitions {
                        name,
                        new_total,
                        assignments: None,
                    }
                }),
                (
                    name,
                    prop::collection::btree_map("[a-z.]{1,8}", "[a-z0-9]{0,4}", 0..3)
                )
                    .prop_map(|(name, configs)| MetadataCommand::SetTopicConfigs {
                        name,
                        configs,
                        expected: None
                    }),
                (0..3i32, -2..2000i64).prop_map(|(n, count)| {
                    MetadataCommand::AllocateProducerIds {
                        node: NodeId(n),
                        count,
                    }
                }),
                (0..6i32, any::<bool>()).prop_map(|(n, shutdown)| MetadataCommand::FenceBroker {
                    node: NodeId(n),
                    shutdown
                }),
                // Epoch u64::MAX: resolved to the broker's current epoch when applied.
                (0..6i32).prop_map(|n| MetadataCommand::UnfenceBroker {
                    node: NodeId(n),
                    broker_epoch: u64::MAX
                }),
                (
                    prop::sample::select(vec!["a", "b", "c"]),
                    0..3i32,
                    0..6i32,
                    any::<bool>(),
                    prop::collection::vec(0..6i32, 0..4)
                )
                    .prop_map(|(topic, partition, leader, current, isr)| {
                        MetadataCommand::AlterPartition {
                            topic: topic.to_owned(),
                            partition,
                            leader: NodeId(leader),
                            // -1: resolved to the current epochs when applied.
                            leader_epoch: LeaderEpoch(if current { -1 } else { 0 }),
                            partition_epoch: if current { -1 } else { 0 },
                            isr: isr.into_iter().map(NodeId).collect(),
                        }
                    }),
                // Topic id nil: resolved to the topic's current id when applied.
                (
                    prop::sample::select(vec!["a", "b", "c"]),
                    0..3i32,
                    0..6i32,
                    any::<bool>()
                )
                    .prop_map(|(topic, partition, node, current)| {
                        MetadataCommand::LeaveIsr {
                            topic: topic.to_owned(),
                            topic_id: Uuid::from_u128(if current { 0 } else { 1 }),
                            partition,
                            node: NodeId(node),
                        }
                    }),
                (prop::sample::select(vec!["a", "b", "c"]), 0..3i32).prop_map(|(t, p)| {
                    MetadataCommand::ElectPreferredLeaders {
                        partitions: vec![(t.to_owned(), p)],
                    }
                }),
                (
                    prop::sample::select(vec!["g", "h", ""]),
                    prop::collection::btree_map("[a-z.]{0,8}", "[a-z0-9]{0,4}", 0..3),
                    any::<bool>(),
                )
                    .prop_map(|(group, configs, cas)| {
                        MetadataCommand::SetGroupConfigs {
                            group: group.to_owned(),
                            configs,
                            expected: cas.then(BTreeMap::new),
                        }
                    }),
                (
                    prop::option::of(-1..6i32),
                    prop::collection::btree_map("[a-z.]{0,8}", "[a-z0-9]{0,4}", 0..3),
                    any::<bool>(),
                )
                    .prop_map(|(node, configs, cas)| {
                        MetadataCommand::SetBrokerConfigs {
                            node: node.map(NodeId),
                            configs,
                            expected: cas.then(BTreeMap::new),
                        }
                    }),
            ]
        }

        /// Fills in the "current" placeholders of generated commands from the image.
        fn resolve(image: &MetadataImage, cmd: MetadataCommand) -> MetadataCommand {
            match cmd {
                MetadataCommand::UnfenceBroker { node, .. } => MetadataCommand::UnfenceBroker {
                    node,
                    broker_epoch: image.broker_epochs.get(&node).copied().unwrap_or(0),
                },
                MetadataCommand::AlterPartition {
                    topic,
                    partition,
                    leader,
                    leader_epoch,
                    partition_epoch,
                    isr,
                } if leader_epoch.0 == -1 => {
                    let current = image.partition(&topic, partition);
                    MetadataCommand::AlterPartition {
                        leader: current.map_or(leader, |p| p.leader),
                        leader_epoch: current.map_or(leader_epoch, |p| p.leader_epoch),
                        partition_epoch: current.map_or(partition_epoch, |p| p.partition_epoch),
                        topic,
                        partition,
                        isr,
                    }
                }
                MetadataCommand::LeaveIsr {
                    topic,
                    topic_id,
                    partition,
                    node,
                } if topic_id.is_nil() => MetadataCommand::LeaveIsr {
                    topic_id: image.topics.get(&topic).map_or(topic_id, |t| t.topic_id),
                    topic,
                    partition,
                    node,
                },
                other => other,
            }
        }

        fn check_invariants(
            before: &MetadataImage,
            image: &MetadataImage,
        ) -> Result<(), TestCaseError> {
            let mut ids = std::collections::BTreeSet::new();
            for (name, topic) in &image.topics {
                prop_assert!(validate_topic_name(name).is_ok());
                prop_assert!(!topic.topic_id.is_nil());
                prop_assert!(
                    ids.insert(topic.topic_id),
                    "duplicate topic id {}",
                    topic.topic_id
                );
                prop_assert!(!topic.partitions.is_empty());
                prop_assert!(topic.partitions.len() <= PARTITIONS_PER_TOPIC_MAX as usize);
                let rf = topic.partitions[0].replicas.len();
                let old = before
                    .topics
                    .get(name)
                    .filter(|t| t.topic_id == topic.topic_id);
                for (i, p) in topic.partitions.iter().enumerate() {
                    prop_assert_eq!(p.replicas.len(), rf, "{} mixes replication factors", name);
                    prop_assert!(rf >= 1);
                    let distinct: std::collections::BTreeSet<_> = p.replicas.iter().collect();
                    prop_assert_eq!(distinct.len(), rf, "replicas repeat a broker");
                    for r in &p.replicas {
                        prop_assert!(
                            image.brokers.contains_key(r),
                            "replica on unknown broker {}",
                            r
                        );
                    }
                    prop_assert!(!p.isr.is_empty(), "{}-{} has an empty ISR", name, i);
                    prop_assert!(p.isr.iter().all(|r| p.replicas.contains(r)));
                    let distinct: std::collections::BTreeSet<_> = p.isr.iter().collect();
                    prop_assert_eq!(distinct.len(), p.isr.len(), "ISR repeats a broker");
                    if p.has_leader() {
                        prop_assert!(p.isr.contains(&p.leader), "leader outside the ISR");
                        prop_assert!(image.is_alive(p.leader), "fenced leader {}", p.leader);
                    }
                    if let Some(prev) = old.and_then(|t| t.partitions.get(i)) {
                        prop_assert!(p.leader_epoch >= prev.leader_epoch);
                        prop_assert!(p.partition_epoch >= prev.partition_epoch);
                        if p.leader != prev.leader {
                            prop_assert!(p.leader_epoch > prev.leader_epoch);
                        }
                        if p.isr != prev.isr {
                            prop_assert!(p.partition_epoch > prev.partition_epoch);
                        }
                    }
                }
            }
            prop_assert!(image.next_producer_id >= 0);
            prop_assert!(image.fenced.iter().all(|n| image.brokers.contains_key(n)));
            prop_assert!(image.shutting_down.is_subset(&image.fenced));
            let stored = &image.resource_configs;
            prop_assert!(stored.groups.values().all(|m| !m.is_empty()));
            prop_assert!(stored.brokers.values().all(|m| !m.is_empty()));
            prop_assert!(stored.brokers.keys().all(|n| image.brokers.contains_key(n)));
            prop_assert!(!stored.groups.contains_key(""));
            Ok(())
        }

        proptest! {
            #[test]
            fn any_command_sequence_keeps_invariants_and_is_deterministic(
                cmds in prop::collection::vec(command(), 0..80)
            ) {
                let mut image = MetadataImage::default();
                let mut outcomes = Vec::new();
                let mut applied = Vec::new();
                for cmd in cmds {
                    let cmd = resolve(&image, cmd);
                    let before = image.clone();
                    let next_pid = image.next_producer_id;
                    image.last_applied_index += 1;
                    let outcome = apply(&mut image, &cmd);
                    match &outcome {
                        MetadataOutcome::Rejected(_) => {
                            image.last_applied_index -= 1;
                            prop_assert_eq!(&image, &before);
                            image.last_applied_index += 1;
                        }
                        MetadataOutcome::ProducerIds { first, count } => {
                            prop_assert_eq!(first.0, next_pid);
                            prop_assert_eq!(image.next_producer_id, next_pid + count);
                        }
                        _ => {}
                    }
                    check_invariants(&before, &image)?;
                    outcomes.push(outcome);
                    applied.push(cmd);
                }
                let mut again = MetadataImage::default();
                let mut replayed = Vec::new();
                for c in &applied {
                    again.last_applied_index += 1;
                    replayed.push(apply(&mut again, c));
                }
                prop_assert_eq!(again, image);
                prop_assert_eq!(replayed, outcomes);
            }
        }
    }
}

#[cfg(test)]
#[path = "assignment_tests.rs"]
mod assignment_tests;

#[cfg(test)]
mod compare_and_set_tests {
    use super::*;
    use spate_types::NodeId;

    fn image_with_topic() -> (MetadataImage, Uuid) {
        let mut image = MetadataImage::default();
        super::tests::register_alive(&mut image, NodeId(1));
        let id = Uuid::from_u128(42);
        let out = apply(
            &mut image,
            &MetadataCommand::CreateTopic {
                name: "t".into(),
                topic_id: id,
                partitions: 1,
                replication_factor: 1,
                configs: BTreeMap::new(),
                assignments: None,
            },
        );
        assert_eq!(out, MetadataOutcome::TopicCreated { topic_id: id });
        (image, id)
    }

    #[test]
    fn set_topic_configs_with_stale_expectation_is_rejected() {
        let (mut image, _) = image_with_topic();
        let a = BTreeMap::from([("retention.ms".to_owned(), "1".to_owned())]);
        let b = BTreeMap::from([("segment.ms".to_owned(), "2".to_owned())]);
        // Two alterations both read the empty map; the second must not undo the first.
        let first = MetadataCommand::SetTopicConfigs {
            name: "t".into(),
            configs: a.clone(),
            expected: Some(BTreeMap::new()),
        };
        let second = MetadataCommand::SetTopicConfigs {
            name: "t".into(),
            configs: b,
            expected: Some(BTreeMap::new()),
        };
        assert_eq!(apply(&mut image, &first), MetadataOutcome::TopicConfigsSet);
        assert_eq!(
            apply(&mut image, &second),
            MetadataOutcome::Rejected(MetadataError::ConcurrentModification("topic 't'".into()))
        );
        assert_eq!(image.topics["t"].configs, a);
    }

    #[test]
    fn delete_by_id_spares_a_recreated_topic() {
        let (mut image, id) = image_with_topic();
        let stale = MetadataCommand::DeleteTopic {
            name: "t".into(),
            topic_id: Some(Uuid::from_u128(7)),
        };
        assert_eq!(
            apply(&mut image, &stale),
            MetadataOutcome::Rejected(MetadataError::UnknownTopic("t".into()))
        );
        assert!(image.topics.contains_key("t"));
        let exact = MetadataCommand::DeleteTopic {
            name: "t".into(),
            topic_id: Some(id),
        };
        assert_eq!(
            apply(&mut image, &exact),
            MetadataOutcome::TopicDeleted { topic_id: id }
        );
    }
}

#[cfg(test)]
mod replication_tests {
    use super::tests::register_alive;
    use super::*;

    fn cluster_with_topic(brokers: i32, rf: i16) -> MetadataImage {
        let mut image = MetadataImage::default();
        for n in 0..brokers {
            register_alive(&mut image, NodeId(n));
        }
        // Topic id 3 with 3 brokers: partition 0 starts at broker 0.
        let out = apply(
            &mut image,
            &MetadataCommand::CreateTopic {
                name: "t".into(),
                topic_id: Uuid::from_u128(3),
                partitions: 1,
                replication_factor: rf,
                configs: BTreeMap::new(),
                assignments: None,
            },
        );
        assert!(
            matches!(out, MetadataOutcome::TopicCreated { .. }),
            "{out:?}"
        );
        image
    }

    fn part(image: &MetadataImage) -> &PartitionImage {
        image.partition("t", 0).expect("partition t-0")
    }

    fn nodes(ids: &[i32]) -> Vec<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    pub(super) fn fence(image: &mut MetadataImage, node: i32) {
        let out = apply(
            image,
            &MetadataCommand::FenceBroker {
                node: NodeId(node),
                shutdown: false,
            },
        );
        assert_eq!(out, MetadataOutcome::BrokerFenced);
    }

    fn alter(image: &MetadataImage, isr: &[i32]) -> MetadataCommand {
        let p = part(image);
        MetadataCommand::AlterPartition {
            topic: "t".into(),
            partition: 0,
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: nodes(isr),
        }
    }

    #[test]
    fn fencing_moves_leadership_down_the_isr_and_keeps_the_last_member() {
        let mut image = cluster_with_topic(3, 3);
        assert_eq!(part(&image).leader, NodeId(0));
        assert_eq!(part(&image).isr, nodes(&[0, 1, 2]));

        fence(&mut image, 0);
        let p = part(&image);
        assert_eq!(
            (p.leader, p.leader_epoch, p.partition_epoch),
            (NodeId(1), LeaderEpoch(1), 1)
        );
        assert_eq!(p.isr, nodes(&[1, 2]));
        assert_eq!(p.offline_replicas(&image), nodes(&[0]));

        fence(&mut image, 1);
        let p = part(&image);
        assert_eq!((p.leader, p.leader_epoch), (NodeId(2), LeaderEpoch(2)));
        assert_eq!(p.isr, nodes(&[2]));

        // The last ISR member stays in the ISR: it alone is known to hold every committed record.
        fence(&mut image, 2);
        let p = part(&image);
        assert_eq!(
            (p.leader, p.leader_epoch, p.partition_epoch),
            (NO_LEADER, LeaderEpoch(3), 3)
        );
        assert_eq!(p.isr, nodes(&[2]));

        // Broker 0 comes back first: it is not in the ISR, so no unclean election.
        register_alive(&mut image, NodeId(0));
        assert!(
            !part(&image).has_leader(),
            "an out-of-sync replica must not lead"
        );

        // Broker 2 comes back: it leads again in a new epoch.
        let epoch = image.broker_epochs[&NodeId(2)];
        assert_eq!(
            apply(
                &mut image,
                &MetadataCommand::UnfenceBroker {
                    node: NodeId(2),
                    broker_epoch: epoch
                }
            ),
            MetadataOutcome::BrokerUnfenced
        );
        let p = part(&image);
        assert_eq!((p.leader, p.leader_epoch), (NodeId(2), LeaderEpoch(4)));
    }

    #[test]
    fn a_follower_fenced_leaves_the_isr_without_a_leader_change() {
        let mut image = cluster_with_topic(3, 3);
        fence(&mut image, 2);
        let p = part(&image);
        assert_eq!(
            (p.leader, p.leader_epoch, p.partition_epoch),
            (NodeId(0), LeaderEpoch(0), 1)
        );
        assert_eq!(p.isr, nodes(&[0, 1]));
    }

    #[test]
    fn controlled_shutdown_is_a_fence_marked_shutting_down() {
        let mut image = cluster_with_topic(3, 3);
        let out = apply(
            &mut image,
            &MetadataCommand::FenceBroker {
                node: NodeId(0),
                shutdown: true,
            },
        );
        assert_eq!(out, MetadataOutcome::BrokerFenced);
        assert!(image.shutting_down.contains(&NodeId(0)));
        assert_eq!(part(&image).leader, NodeId(1));
        // Registering again (the restart) clears it, and fences until caught up.
        image.last_applied_index += 1;
        apply(
            &mut image,
            &MetadataCommand::RegisterBroker {
                node: NodeId(0),
                directory_id: Uuid::nil(),
                endpoint: crate::BrokerEndpoint {
                    host: "h".into(),
                    port: 1,
                    rack: None,
                },
            },
        );
        assert!(!image.shutting_down.contains(&NodeId(0)));
        assert!(image.fenced.contains(&NodeId(0)));
    }

    #[test]
    fn reregistering_leader_is_fenced_and_loses_leadership() {
        // A restarted broker may have lost an unflushed tail of its epoch: it must not lead on.
        let mut image = cluster_with_topic(3, 3);
        image.last_applied_index += 1;
        apply(
            &mut image,
            &MetadataCommand::RegisterBroker {
                node: NodeId(0),
                directory_id: Uuid::nil(),
                endpoint: crate::BrokerEndpoint {
                    host: "h".into(),
                    port: 1,
                    rack: None,
                },
            },
        );
        let p = part(&image);
        assert_eq!((p.leader, p.leader_epoch), (NodeId(1), LeaderEpoch(1)));
        assert_eq!(p.isr, nodes(&[1, 2]));
    }

    #[test]
    fn single_node_restart_leads_again_once_unfenced() {
        let mut image = cluster_with_topic(1, 1);
        register_alive(&mut image, NodeId(0));
        let p = part(&image);
        assert_eq!((p.leader, p.leader_epoch), (NodeId(0), LeaderEpoch(2)));
        assert_eq!(p.isr, nodes(&[0]));
    }

    #[test]
    fn a_damaged_replica_leaves_the_isr_and_its_leadership_moves_unless_it_is_the_last() {
        let mut image = cluster_with_topic(3, 3);
        let leave = |node: i32| MetadataCommand::LeaveIsr {
            topic: "t".into(),
            topic_id: Uuid::from_u128(3),
            partition: 0,
            node: NodeId(node),
        };
        let leader = part(&image).leader;
        let before = part(&image).clone();
        // A follower leaves: the ISR shrinks, the leader and its epoch stay.
        let follower = before.replicas.iter().find(|r| **r != leader).unwrap().0;
        assert_eq!(
            apply(&mut image, &leave(follower)),
            MetadataOutcome::PartitionAltered { partition_epoch: 1 }
        );
        assert!(!part(&image).isr.contains(&NodeId(follower)));
        assert_eq!(part(&image).leader_epoch, before.leader_epoch);
        // Again: already out, nothing changes.
        let once = image.clone();
        assert_eq!(
            apply(&mut image, &leave(follower)),
            MetadataOutcome::PartitionAltered { partition_epoch: 1 }
        );
        assert_eq!(image, once);
        // The leader leaves: the next live ISR member in replica order leads, in a new epoch.
        assert_eq!(
            apply(&mut image, &leave(leader.0)),
            MetadataOutcome::PartitionAltered { partition_epoch: 2 }
        );
        let p = part(&image);
        let last = *p.isr.first().unwrap();
        assert_eq!(p.isr.len(), 1);
        assert_eq!(p.leader, last);
        assert_eq!(p.leader_epoch, LeaderEpoch(before.leader_epoch.0 + 1));
        // The last member stays: every other copy may miss committed records.
        let once = image.clone();
        assert!(matches!(
            apply(&mut image, &leave(last.0)),
            MetadataOutcome::Rejected(MetadataError::InvalidIsr(_))
        ));
        assert_eq!(image, once);
        // Another incarnation of the topic, or an unknown one: refused, nothing changes.
        let mut stale = leave(last.0);
        if let MetadataCommand::LeaveIsr { topic_id, .. } = &mut stale {
            *topic_id = Uuid::from_u128(99);
        }
        assert_eq!(
            apply(&mut image, &stale),
            MetadataOutcome::Rejected(MetadataError::UnknownTopic("t".into()))
        );
        assert_eq!(image, once);
    }

    #[test]
    fn a_damaged_replica_stays_when_the_other_members_are_fenced() {
        let mut image = cluster_with_topic(3, 3);
        let leader = part(&image).leader;
        for r in part(&image).replicas.clone() {
            if r != leader {
                fence(&mut image, r.0);
            }
        }
        // Fencing left the leader alone in the ISR; a fenced member would not count anyway.
        let out = apply(
            &mut image,
            &MetadataCommand::LeaveIsr {
                topic: "t".into(),
                topic_id: Uuid::from_u128(3),
                partition: 0,
                node: leader,
            },
        );
        assert!(matches!(
            out,
            MetadataOutcome::Rejected(MetadataError::InvalidIsr(_))
        ));
        assert_eq!(part(&image).leader, leader);
    }

    #[test]
    fn alter_partition_checks_epochs_leader_and_members() {
        let mut image = cluster_with_topic(3, 3);
        // Shrink by the leader: applied, partition epoch bumped, leader epoch kept.
        let cmd = alter(&image, &[0, 1]);
        assert_eq!(
            apply(&mut image, &cmd),
            MetadataOutcome::PartitionAltered { partition_epoch: 1 }
        );
        assert_eq!(part(&image).isr, nodes(&[0, 1]));
        assert_eq!(part(&image).leader_epoch, LeaderEpoch(0));

        let rejected = |image: &mut MetadataImage, cmd: MetadataCommand| {
            let before = image.clone();
            match apply(image, &cmd) {
                MetadataOutcome::Rejected(e) => {
                    assert_eq!(*image, before);
                    e
                }
                other => panic!("{cmd} should be rejected, got {other:?}"),
            }
        };
        // The same request again carries a stale partition epoch.
        let mut stale = alter(&image, &[0]);
        if let MetadataCommand::AlterPartition {
            partition_epoch, ..
        } = &mut stale
        {
            *partition_epoch = 0;
        }
        let e = rejected(&mut image, stale);
        assert!(matches!(e, MetadataError::StalePartitionState(_)), "{e}");
        // A stale leader epoch (a deposed leader).
        let mut deposed = alter(&image, &[0]);
        if let MetadataCommand::AlterPartition { leader_epoch, .. } = &mut deposed {
            *leader_epoch = LeaderEpoch(-5);
        }
        let e = rejected(&mut image, deposed);
        assert!(matches!(e, MetadataError::StalePartitionState(_)), "{e}");
        // Not the leader.
        let mut other = alter(&image, &[1]);
        if let MetadataCommand::AlterPartition { leader, .. } = &mut other {
            *leader = NodeId(1);
        }
        let e = rejected(&mut image, other);
        assert!(matches!(e, MetadataError::StalePartitionState(_)), "{e}");
        for bad in [&[][..], &[1][..], &[0, 0][..], &[0, 7][..]] {
            let cmd = alter(&image, bad);
            let e = rejected(&mut image, cmd);
            assert!(matches!(e, MetadataError::InvalidIsr(_)), "{bad:?}: {e}");
        }
        // A fenced broker cannot join.
        fence(&mut image, 2);
        let cmd = alter(&image, &[0, 1, 2]);
        let e = rejected(&mut image, cmd);
        assert!(matches!(e, MetadataError::InvalidIsr(_)), "{e}");
        // Order given by the leader does not matter: stored in replica order.
        register_alive(&mut image, NodeId(2));
        let cmd = alter(&image, &[2, 0, 1]);
        assert!(matches!(
            apply(&mut image, &cmd),
            MetadataOutcome::PartitionAltered { .. }
        ));
        assert_eq!(part(&image).isr, nodes(&[0, 1, 2]));
    }

    #[test]
    fn preferred_leader_election_brings_leadership_home() {
        let mut image = cluster_with_topic(3, 3);
        fence(&mut image, 0);
        register_alive(&mut image, NodeId(0));
        assert_eq!(part(&image).leader, NodeId(1));
        let elect = MetadataCommand::ElectPreferredLeaders {
            partitions: vec![("t".into(), 0), ("missing".into(), 0), ("t".into(), 9)],
        };
        // Not in the ISR yet: nothing moves.
        assert_eq!(
            apply(&mut image, &elect),
            MetadataOutcome::LeadersElected { moved: 0 }
        );
        let cmd = alter(&image, &[0, 1, 2]);
        apply(&mut image, &cmd);
        let epoch = part(&image).leader_epoch;
        assert_eq!(
            apply(&mut image, &elect),
            MetadataOutcome::LeadersElected { moved: 1 }
        );
        assert_eq!(part(&image).leader, NodeId(0));
        assert_eq!(part(&image).leader_epoch, LeaderEpoch(epoch.0 + 1));
    }

    #[test]
    fn new_topics_are_placed_on_alive_brokers_only() {
        let mut image = cluster_with_topic(3, 1);
        fence(&mut image, 1);
        let out = apply(
            &mut image,
            &MetadataCommand::CreateTopic {
                name: "u".into(),
                topic_id: Uuid::from_u128(30),
                partitions: 6,
                replication_factor: 2,
                configs: BTreeMap::new(),
                assignments: None,
            },
        );
        assert!(matches!(out, MetadataOutcome::TopicCreated { .. }));
        for p in &image.topics["u"].partitions {
            assert!(!p.replicas.contains(&NodeId(1)), "{p:?}");
        }
        let out = apply(
            &mut image,
            &MetadataCommand::CreateTopic {
                name: "v".into(),
                topic_id: Uuid::from_u128(31),
                partitions: 1,
                replication_factor: 3,
                configs: BTreeMap::new(),
                assignments: None,
            },
        );
        assert!(
            matches!(
                out,
                MetadataOutcome::Rejected(MetadataError::InvalidReplicationFactor(_))
            ),
            "{out:?}"
        );
    }

    #[test]
    fn cluster_id_is_set_once() {
        let mut image = MetadataImage::default();
        for (candidate, expected) in [("first", "first"), ("second", "first")] {
            assert_eq!(
                apply(
                    &mut image,
                    &MetadataCommand::InitCluster {
                        cluster_id: candidate.into()
                    }
                ),
                MetadataOutcome::ClusterInitialized {
                    cluster_id: expected.into()
                }
            );
        }
        assert_eq!(image.cluster_id.as_deref(), Some("first"));
    }
}
