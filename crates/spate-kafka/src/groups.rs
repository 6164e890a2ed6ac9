//! The group coordinator as the Kafka handlers reach it: started on first use, which creates
//! the internal `__consumer_offsets` topic (compacted, `offsets.topic.num.partitions`), or at
//! start when the topic exists so committed offsets are loaded before clients ask.

use crate::broker::Broker;
use crate::topics::{
    capped_at_live_brokers, ensure_internal_topic, led_partitions, partition_count, ApiError,
    NewTopic,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use spate_coordinator::{Coordinator, OFFSETS_TOPIC};
use spate_replica::Partition;
use spate_types::TopicPartition;
use std::sync::Arc;

/// The coordinator, starting it (and creating its topic) if needed.
pub(crate) async fn coordinator(broker: &Arc<Broker>) -> Result<&Coordinator, ApiError> {
    broker
        .groups
        .get_or_try_init(|| async {
            let config = &broker.config.groups;
            let configs = [
                ("cleanup.policy", "compact".to_owned()),
                (
                    "segment.bytes",
                    config.offsets_topic_segment_bytes.to_string(),
                ),
            ];
            let topic = NewTopic {
                name: OFFSETS_TOPIC.to_owned(),
                partitions: config.offsets_topic_partitions,
                replication_factor: capped_at_live_brokers(
                    broker,
                    config.offsets_topic_replication_factor,
                ),
                configs: configs
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
                assignments: None,
            };
            ensure_internal_topic(broker, topic).await?;
            start(broker)
        })
        .await
}

fn start(broker: &Arc<Broker>) -> Result<Coordinator, ApiError> {
    let count = partition_count(broker, OFFSETS_TOPIC);
    if count == 0 {
        return Err(ApiError::new(
            ResponseError::CoordinatorNotAvailable,
            format!("{OFFSETS_TOPIC} does not exist"),
        ));
    }
    let config = &broker.config.groups;
    // The coordinator reads the broker's clock (group sessions, commit and expiry timestamps)
    // and id source (its incarnation).
    let coordinator = Coordinator::start_with_seams(
        config.settings.clone(),
        count,
        config.offsets_retention_check,
        broker.shutdown.clone(),
        broker.seams().clone(),
    );
    tokio::spawn(follow_leadership(broker.clone(), coordinator.clone()));
    Ok(coordinator)
}

/// Keeps the coordinator's set of partitions equal to the `__consumer_offsets` partitions
/// this node leads, after every reconciliation (a leader change loads or unloads groups).
async fn follow_leadership(broker: Arc<Broker>, coordinator: Coordinator) {
    let mut reconciled = broker.reconciled.clone();
    let mut shutdown = broker.shutdown.clone();
    let count = partition_count(&broker, OFFSETS_TOPIC);
    let mut last: Option<Vec<i32>> = None;
    loop {
        let led = led_partitions(&broker, OFFSETS_TOPIC, count);
        let keys: Vec<i32> = led.keys().copied().collect();
        if last.as_ref() != Some(&keys) {
            coordinator.own(led).await;
            last = Some(keys);
        }
        // Biased (deterministic under simulation); the shutdown, which ends the loop, first.
        tokio::select! {
            biased;
            _ = crate::broker::shutdown_signalled(&mut shutdown) => return,
            changed = reconciled.changed() => if changed.is_err() { return },
        }
    }
}

/// The node that coordinates `key` (a group id): the leader of its `__consumer_offsets`
/// partition, if it has one.
pub(crate) fn coordinator_node(broker: &Broker, key: &str) -> Option<spate_types::NodeId> {
    crate::topics::coordinator_node(broker, OFFSETS_TOPIC, key)
}

/// Starts the coordinator at node start if `__consumer_offsets` exists, so offsets are
/// loaded (and expire) without waiting for a client; also drops offsets of topics deleted
/// while the node was down.
pub async fn start_groups_if_present(broker: &Arc<Broker>) {
    if broker.image().topics.contains_key(OFFSETS_TOPIC) {
        match coordinator(broker).await {
            Ok(_) => forget_deleted_topics(broker).await,
            Err(e) => tracing::error!(error = %e.message, "cannot start the group coordinator"),
        }
    }
}

/// Removes committed offsets of topics that no longer exist (Kafka does this on deletion).
pub(crate) async fn forget_deleted_topics(broker: &Broker) {
    let Some(coordinator) = broker.groups.get() else {
        return;
    };
    let image = broker.image();
    let removed = coordinator
        .query(move |core, _| core.remove_topics(|t| image.topics.contains_key(t)))
        .await
        .unwrap_or(0);
    if removed > 0 {
        tracing::info!(removed, "removed committed offsets of deleted topics");
    }
}

/// A transaction marker is durable on `__consumer_offsets` partition `partition`: the group
/// coordinator applies (commit) or drops (abort) the producer's pending transactional offsets
/// there (Kafka's `onTransactionCompleted`).
pub(crate) async fn transaction_completed(
    broker: &Broker,
    partition: i32,
    marker: spate_log::TxnMarker,
) {
    if let Some(coordinator) = broker.groups.get() {
        coordinator
            .complete_txn(partition, marker.producer_id.0, marker.commit)
            .await;
    }
}

/// One committed offset and its lag, for `/metrics`.
#[derive(Clone, Debug)]
pub struct GroupLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    /// What the group's consumers can still read past the committed offset, at least 0: up to
    /// the last stable offset for an exactly-once group (it commits offsets in transactions),
    /// up to the high watermark otherwise. `None` when the partition is not hosted on this
    /// node.
    pub lag: Option<i64>,
}

/// Lag of a committed offset of `partition`, at least 0. An exactly-once group (it commits
/// offsets inside transactions, so its consumers read with `isolation.level=read_committed`)
/// is measured against the last stable offset, the end of what it can read: an open
/// transaction's records are no lag of it until they commit. Any other group is measured
/// against the high watermark.
fn lag(partition: &Partition, committed: i64, exactly_once: bool) -> i64 {
    let end = if exactly_once {
        partition.last_stable_offset()
    } else {
        partition.high_watermark()
    };
    (end.0 - committed).max(0)
}

/// Committed offsets and lag of every group, and member counts per group.
pub async fn group_lag(broker: &Broker) -> (Vec<GroupLag>, Vec<(String, usize)>) {
    let Some(coordinator) = broker.groups.get() else {
        return Default::default();
    };
    let Ok((offsets, members)) = coordinator
        .query(|core, _| (core.all_offsets(), core.member_counts()))
        .await
    else {
        return Default::default();
    };
    let lags = offsets
        .into_iter()
        .map(|o| {
            let tp = TopicPartition::new(o.topic.clone(), o.partition);
            GroupLag {
                lag: broker
                    .replicas
                    .get(&tp)
                    .map(|p| lag(&p, o.offset, o.exactly_once)),
                group: o.group,
                topic: o.topic,
                partition: o.partition,
                committed: o.offset,
            }
        })
        .collect();
    let members = members.into_iter().map(|(g, n, _)| (g, n)).collect();
    (lags, members)
}

pub(crate) fn string(s: &StrBytes) -> String {
    s.as_str().to_owned()
}

pub(crate) fn opt_string(s: &Option<StrBytes>) -> Option<String> {
    s.as_ref().map(string)
}

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::lag;
    use crate::apis::fetch::tests::{batch, end_txn, leader, produce, txn, TXN_PID};

    #[tokio::test]
    async fn an_exactly_once_groups_lag_ends_at_the_last_stable_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = leader(dir.path());
        produce(&p, batch(2, None, false, 1_000)).await;
        produce(&p, txn(3, 0, 2_000)).await;
        // High watermark 5, last stable offset 2 (the open transaction's first offset).
        assert_eq!(lag(&p, 2, true), 0, "an open transaction is no lag yet");
        assert_eq!(lag(&p, 2, false), 3);
        assert_eq!(lag(&p, 0, true), 2);
        assert_eq!(
            lag(&p, 9, false),
            0,
            "a commit past the end is no negative lag"
        );
        assert_eq!(lag(&p, 9, true), 0);

        tracing::info!("--- committed: the three records and the marker count for both");
        end_txn(&p, TXN_PID, true).await;
        assert_eq!(lag(&p, 2, true), 4);
        assert_eq!(lag(&p, 2, false), 4);
    }
}
