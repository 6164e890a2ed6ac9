//! Transaction markers: how the transaction coordinator's [`MarkerJob`]s reach partitions.
//!
//! A partition led here gets its marker appended directly ([`write_local`], which the
//! WriteTxnMarkers handler uses too); a partition led elsewhere gets it through a
//! WriteTxnMarkers request to its leader. Either way a marker counts as written once it is
//! durable on the partition's in-sync replicas (an acks=all write), as Kafka's coordinator
//! waits for. Failures are retried with backoff until the marker is written, the partition's
//! topic is gone, or the job is abandoned (this node no longer leads the transaction's
//! `__transaction_state` partition, or a partition has seen a newer coordinator).

use crate::broker::Broker;
use crate::errors::replica_error;
use futures::future::{join_all, BoxFuture};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{ProducerId, TopicName, WriteTxnMarkersRequest};
use kafka_protocol::ResponseError;
use spate_coordinator::txn::{MarkerJob, MarkerWriter};
use spate_log::TxnMarker;
use spate_types::{NodeId, ProducerEpoch, ProducerId as Pid, TopicPartition};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// Backoff between rounds of a job with partitions still to mark.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Appends a marker to a partition led here and waits until it is durable on the in-sync
/// replicas; the error a WriteTxnMarkers response gives otherwise.
pub(crate) async fn write_local(
    broker: &Broker,
    tp: &TopicPartition,
    marker: TxnMarker,
) -> Result<(), ResponseError> {
    let Some(partition) = broker.replicas.get(tp) else {
        return Err(ResponseError::UnknownTopicOrPartition);
    };
    let receipt = partition
        .append_marker(marker, broker.now_ms())
        .map_err(|e| replica_error(&e))?;
    partition
        .wait_acks_all(receipt.last_offset)
        .await
        .map_err(|e| replica_error(&e))?;
    if tp.topic == spate_coordinator::OFFSETS_TOPIC {
        crate::groups::transaction_completed(broker, tp.partition, marker).await;
    }
    Ok(())
}

/// What a marker's failure on one partition means for its job.
enum Outcome {
    Written,
    Retry,
    /// The coordinator was fenced (a newer one exists) or the producer epoch moved on.
    Abandon,
}

fn outcome(result: Result<(), ResponseError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Written,
        Err(ResponseError::TransactionCoordinatorFenced | ResponseError::InvalidProducerEpoch) => {
            Outcome::Abandon
        }
        Err(_) => Outcome::Retry,
    }
}

/// The node's marker writer.
pub(crate) struct NodeMarkerWriter {
    broker: Weak<Broker>,
}

impl NodeMarkerWriter {
    pub(crate) fn new(broker: &Arc<Broker>) -> NodeMarkerWriter {
        NodeMarkerWriter {
            broker: Arc::downgrade(broker),
        }
    }
}

impl MarkerWriter for NodeMarkerWriter {
    fn write(&self, job: MarkerJob, abandon: watch::Receiver<bool>) -> BoxFuture<'static, bool> {
        Box::pin(write_job(self.broker.clone(), job, abandon))
    }
}

async fn write_job(
    broker: Weak<Broker>,
    job: MarkerJob,
    mut abandon: watch::Receiver<bool>,
) -> bool {
    let marker = TxnMarker {
        producer_id: Pid(job.producer_id),
        producer_epoch: ProducerEpoch(job.producer_epoch),
        coordinator_epoch: job.coordinator_epoch,
        commit: job.commit,
    };
    let mut left: BTreeSet<TopicPartition> = job
        .partitions
        .iter()
        .map(|(t, p)| TopicPartition::new(t.clone(), *p))
        .collect();
    let mut backoff = RETRY_BACKOFF_MIN;
    loop {
        if *abandon.borrow() {
            return false;
        }
        let Some(broker) = broker.upgrade() else {
            return false;
        };
        // Partitions of deleted topics need no marker; the others go to their leaders.
        let image = broker.image();
        left.retain(|tp| {
            image
                .topics
                .get(&tp.topic)
                .is_some_and(|t| t.partitions.len() > tp.partition as usize)
        });
        let mut by_leader: BTreeMap<Option<NodeId>, Vec<TopicPartition>> = BTreeMap::new();
        for tp in &left {
            let leader = image
                .topics
                .get(&tp.topic)
                .and_then(|t| t.partitions.get(tp.partition as usize))
                .filter(|p| p.has_leader())
                .map(|p| p.leader);
            by_leader.entry(leader).or_default().push(tp.clone());
        }
        // Every leader at once, and every local partition at once: a marker's cost is one
        // replication round trip, and a transaction's markers are on the path of its
        // producer's next transaction (its AddPartitionsToTxn waits for them).
        let rounds = by_leader.into_iter().map(|(leader, tps)| {
            let (broker, job) = (&broker, &job);
            async move {
                match leader {
                    None => Vec::new(),
                    Some(node) if node == broker.config.node_id => {
                        join_all(tps.into_iter().map(|tp| async move {
                            let r = write_local(broker, &tp, marker).await;
                            (tp, r)
                        }))
                        .await
                    }
                    Some(node) => match send_remote(broker, node, job, &tps).await {
                        Ok(results) => results,
                        Err(e) => {
                            tracing::debug!(%node, error = %e, "cannot send transaction markers; retrying");
                            Vec::new()
                        }
                    },
                }
            }
        });
        for results in join_all(rounds).await {
            for (tp, result) in results {
                match outcome(result) {
                    Outcome::Written => {
                        left.remove(&tp);
                    }
                    Outcome::Retry => {}
                    Outcome::Abandon => {
                        tracing::info!(partition = %tp, transactional_id = %job.transactional_id,
                            "a partition refused the transaction marker: a newer coordinator or producer epoch exists");
                        return false;
                    }
                }
            }
        }
        if left.is_empty() {
            return true;
        }
        drop(broker);
        tokio::select! {
            biased;
            _ = abandon.wait_for(|a| *a) => return false,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
    }
}

/// One WriteTxnMarkers request to `node` for `tps`; the per-partition results.
async fn send_remote(
    broker: &Broker,
    node: NodeId,
    job: &MarkerJob,
    tps: &[TopicPartition],
) -> Result<Vec<(TopicPartition, Result<(), ResponseError>)>, spate_client::ClientError> {
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in tps {
        topics.entry(&tp.topic).or_default().push(tp.partition);
    }
    let request =
        WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
            .with_producer_id(ProducerId(job.producer_id))
            .with_producer_epoch(job.producer_epoch)
            .with_transaction_result(job.commit)
            .with_coordinator_epoch(job.coordinator_epoch)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        WritableTxnMarkerTopic::default()
                            .with_name(TopicName(crate::groups::str_bytes(t)))
                            .with_partition_indexes(ps)
                    })
                    .collect(),
            )]);
    let response = broker.peers.send(broker, node, &request).await?;
    let mut results = Vec::new();
    for marker in response.markers {
        for topic in marker.topics {
            for p in topic.partitions {
                let tp = TopicPartition::new(topic.name.0.as_str(), p.partition_index);
                let result = match ResponseError::try_from_code(p.error_code) {
                    None => Ok(()),
                    Some(e) => Err(e),
                };
                results.push((tp, result));
            }
        }
    }
    Ok(results)
}
