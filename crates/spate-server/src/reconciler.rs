//! The reconciler: the one place where committed metadata becomes local state. For each image
//! the controller applies, it brings this node's replicas in line: opens the partitions it is a
//! replica of (claiming their directories for the topic id), pushes topic configs, hands each
//! partition its leader and ISR (the replica becomes leader or follower and its fetcher starts
//! or stops), and deletes partitions whose topic is gone or was re-created. It then publishes
//! the index it reconciled, which admin handlers wait for before they answer, so a client that
//! created a topic can produce to it at once, whichever node it asked.
//!
//! It also carries leaders' ISR proposals to the controller (AlterPartition) and reports each
//! answer back to the replica. A refused proposal is forgotten (the leader retries on a later
//! tick); one whose outcome is unknown stays pending and is sent again, because it may have been
//! committed: its joiner must keep holding back the high watermark (seed 20944). And it asks
//! the controller to take this node out of the ISR of a partition whose local copy holds a
//! damaged batch.
//!
//! The wall-clock time handed to the partition logs (`now_ms`: segment age, timestamps) comes
//! from the node's [`Clock`]; the replica cores read its monotonic side themselves (a wall
//! clock step must not move follower lag); the tick and rebalance intervals are the runtime's
//! timers.

use spate_controller::{
    Controller, ControllerError, MetadataCommand, MetadataError, MetadataImage, MetadataOutcome,
    NO_LEADER,
};
use spate_kafka::Broker;
use spate_log::LogConfig;
use spate_replica::{IsrAnswer, IsrProposal, LeaderAndIsr, ReplicaManager};
use spate_types::{Clock, NodeId, TopicPartition};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// The leader and ISR of a partition as the replica core takes it.
pub(crate) fn leader_and_isr(p: &spate_controller::PartitionImage) -> LeaderAndIsr {
    LeaderAndIsr {
        leader: (p.leader != NO_LEADER).then_some(p.leader),
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        replicas: p.replicas.clone(),
        isr: p.isr.clone(),
    }
}

fn topic_config(
    defaults: &LogConfig,
    topic: &str,
    overrides: &BTreeMap<String, String>,
) -> LogConfig {
    defaults.with_overrides(overrides).unwrap_or_else(|e| {
        tracing::error!(%topic, error = %e, "invalid stored topic config; using broker defaults");
        defaults.clone()
    })
}

/// Applies one image to the local replicas. Idempotent. Returns the partitions the image
/// assigns to this node (whether or not each opened).
pub(crate) fn reconcile(
    node: NodeId,
    replicas: &ReplicaManager,
    log_defaults: &LogConfig,
    image: &MetadataImage,
    now_ms: i64,
) -> BTreeSet<TopicPartition> {
    // Dynamic broker configs (cluster-wide, then this node's) over the static `log.*` ones.
    let log_defaults = &spate_kafka::effective_log_defaults(log_defaults, image, node);
    replicas.set_broker_addresses(
        image
            .brokers
            .iter()
            .map(|(id, e)| (*id, format!("{}:{}", e.host, e.port)))
            .collect(),
    );
    let mut wanted = BTreeMap::new();
    for (name, topic) in &image.topics {
        let mut config = None;
        for (index, p) in topic.partitions.iter().enumerate() {
            if !p.replicas.contains(&node) {
                continue;
            }
            let config = config
                .get_or_insert_with(|| topic_config(log_defaults, name, &topic.configs))
                .clone();
            let tp = TopicPartition::new(name.clone(), index as i32);
            let ineligible = p
                .replicas
                .iter()
                .copied()
                .filter(|r| !image.is_alive(*r))
                .collect();
            wanted.insert(tp, (topic.topic_id, config, leader_and_isr(p), ineligible));
        }
    }
    for (tp, topic_id) in replicas.hosted() {
        if wanted.get(&tp).is_none_or(|(id, ..)| *id != topic_id) {
            match replicas.delete(&tp) {
                Ok(()) => tracing::info!(partition = %tp, "deleted partition"),
                Err(e) => {
                    tracing::error!(partition = %tp, error = %e, "failed to delete partition")
                }
            }
        }
    }
    let assigned = wanted.keys().cloned().collect();
    for (tp, (topic_id, config, state, ineligible)) in wanted {
        if let Err(e) = replicas.ensure(tp.clone(), topic_id, config, state, ineligible, now_ms) {
            tracing::error!(partition = %tp, error = %e, "failed to open or update partition");
        }
    }
    assigned
}

/// Follows the controller's images until shutdown, reconciling each and publishing the index.
pub(crate) async fn follow(
    broker: Arc<Broker>,
    reconciled: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
) {
    let mut images = broker.controller.subscribe();
    loop {
        let image = images.borrow_and_update().clone();
        reconcile(
            broker.config.node_id,
            &broker.replicas,
            &broker.config.log_defaults,
            &image,
            clock.now_ms(),
        );
        reconciled.send_replace(image.last_applied_index);
        // Biased (deterministic under simulation); the shutdown, which ends the loop, first.
        tokio::select! {
            biased;
            _ = spate_kafka::shutdown_signalled(&mut shutdown) => return,
            changed = images.changed() => if changed.is_err() { return },
        }
    }
}

/// Carries ISR proposals from partition leaders to the controller.
pub(crate) async fn propose_isr_changes(
    controller: Controller,
    replicas: Arc<ReplicaManager>,
    mut proposals: mpsc::Receiver<IsrProposal>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // Biased (deterministic under simulation); the shutdown, which ends the loop, first.
        let proposal = tokio::select! {
            biased;
            _ = spate_kafka::shutdown_signalled(&mut shutdown) => return,
            p = proposals.recv() => match p { Some(p) => p, None => return },
        };
        let controller = controller.clone();
        let replicas = replicas.clone();
        let mut shutdown = shutdown.clone();
        // One task per proposal: a slow controller round trip for one partition must not hold
        // back the others (each partition has at most one proposal pending).
        tokio::spawn(async move {
            let tp = proposal.tp.clone();
            let cmd = MetadataCommand::AlterPartition {
                topic: tp.topic.clone(),
                partition: tp.partition,
                leader: controller.node(),
                leader_epoch: proposal.leader_epoch,
                partition_epoch: proposal.partition_epoch,
                isr: proposal.isr.clone(),
            };
            let mut backoff = ISR_RETRY_BACKOFF_MIN;
            loop {
                let result = controller.propose(cmd.clone()).await;
                let answer = isr_answer(&result);
                match &result {
                    Ok(MetadataOutcome::PartitionAltered { partition_epoch }) => {
                        tracing::info!(partition = %tp, isr = ?proposal.isr, partition_epoch, "ISR changed");
                    }
                    Ok(other) => {
                        tracing::info!(partition = %tp, isr = ?proposal.isr, outcome = ?other, ?answer, "ISR change refused");
                    }
                    Err(e) => {
                        tracing::warn!(partition = %tp, isr = ?proposal.isr, error = %e, "ISR change outcome unknown; still pending");
                    }
                }
                if !replicas.isr_proposal_answered(&tp, &proposal, answer) {
                    return;
                }
                // Biased (deterministic under simulation); the shutdown, which ends it, first.
                tokio::select! {
                    biased;
                    _ = spate_kafka::shutdown_signalled(&mut shutdown) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ISR_RETRY_BACKOFF_MAX);
            }
        });
    }
}

/// Asks the controller to take this node out of the ISR of each partition found damaged
/// (`LeaveIsr`; see `spate_replica`'s `damage.rs`), and again whenever it is in the ISR,
/// until the damage is over or the partition closed. The last live ISR member waits until
/// another member can take over; a partition's only replica drops its damage (there is no
/// other copy to fetch from).
pub(crate) async fn report_damage(
    controller: Controller,
    replicas: Arc<ReplicaManager>,
    mut damaged: mpsc::Receiver<TopicPartition>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // Biased (deterministic under simulation); the shutdown, which ends the loop, first.
        let tp = tokio::select! {
            biased;
            _ = spate_kafka::shutdown_signalled(&mut shutdown) => return,
            tp = damaged.recv() => match tp { Some(tp) => tp, None => return },
        };
        let controller = controller.clone();
        let replicas = replicas.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut backoff = ISR_RETRY_BACKOFF_MIN;
            loop {
                let Some(partition) = replicas.get(&tp) else {
                    return;
                };
                let Some(state) = partition.leader_and_isr() else {
                    return;
                };
                if partition.damaged_from().is_none() {
                    return;
                }
                if state.replicas == [controller.node()] {
                    // The only copy: nothing to fetch it again from.
                    partition.forget_damage();
                    return;
                }
                // Out of the ISR the fetcher repairs it; watched until it is over, since the
                // leader may take it back in before then. The last live member asks once
                // another can take over (the controller would refuse now, and every refusal
                // is a metadata entry).
                if !state.isr.contains(&controller.node()) || !partition.damage_movable() {
                    tokio::select! {
                        biased;
                        _ = spate_kafka::shutdown_signalled(&mut shutdown) => return,
                        _ = tokio::time::sleep(ISR_RETRY_BACKOFF_MAX) => continue,
                    }
                }
                let result = controller
                    .propose(MetadataCommand::LeaveIsr {
                        topic: tp.topic.clone(),
                        topic_id: partition.topic_id(),
                        partition: tp.partition,
                        node: controller.node(),
                    })
                    .await;
                match result {
                    Ok(MetadataOutcome::PartitionAltered { partition_epoch }) => {
                        tracing::info!(partition = %tp, partition_epoch, "left the ISR over a damaged batch");
                    }
                    Ok(MetadataOutcome::Rejected(MetadataError::UnknownTopic(_))) => return,
                    Ok(other) => {
                        tracing::warn!(partition = %tp, outcome = ?other, "cannot leave the ISR over a damaged batch yet");
                    }
                    Err(e) => {
                        tracing::warn!(partition = %tp, error = %e, "leaving the ISR over a damaged batch: outcome unknown");
                    }
                }
                // Biased (deterministic under simulation); the shutdown, which ends it, first.
                tokio::select! {
                    biased;
                    _ = spate_kafka::shutdown_signalled(&mut shutdown) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ISR_RETRY_BACKOFF_MAX);
            }
        });
    }
}

/// Between resends of an ISR proposal whose outcome is unknown.
const ISR_RETRY_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const ISR_RETRY_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// What the controller's reply to an AlterPartition says about it. Any error is
/// [`IsrAnswer::Unknown`]: the command may have been committed before the error (a forwarded
/// proposal whose answer was lost, a Raft core that stopped after replicating it).
fn isr_answer(result: &Result<MetadataOutcome, ControllerError>) -> IsrAnswer {
    match result {
        Ok(MetadataOutcome::PartitionAltered { .. }) => IsrAnswer::Committed,
        Ok(MetadataOutcome::Rejected(
            MetadataError::StalePartitionState(_) | MetadataError::UnknownTopic(_),
        )) => IsrAnswer::Stale,
        Ok(_) => IsrAnswer::Refused,
        Err(_) => IsrAnswer::Unknown,
    }
}

/// How often leaders check follower lag.
const REPLICA_TICK: std::time::Duration = std::time::Duration::from_millis(250);
/// How often moved high watermarks are checkpointed (Kafka:
/// `replica.high.watermark.checkpoint.interval.ms`, 5 s).
const HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS: u64 = 5_000;

/// Leaders' lag checks, and high watermark checkpoints (on the blocking pool).
pub(crate) async fn replica_ticks(
    replicas: Arc<ReplicaManager>,
    mut shutdown: watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
) {
    let mut tick = tokio::time::interval(REPLICA_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint_ms = clock.monotonic_ms();
    loop {
        // Biased (deterministic under simulation); the shutdown, which ends the loop, first.
        tokio::select! {
            biased;
            _ = spate_kafka::shutdown_signalled(&mut shutdown) => return,
            _ = tick.tick() => {}
        }
        replicas.tick();
        let now_ms = clock.monotonic_ms();
        if now_ms.saturating_sub(last_checkpoint_ms) >= HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS {
            last_checkpoint_ms = now_ms;
            let replicas = replicas.clone();
            // Each partition's failure is logged inside; only a panic comes back here.
            if let Err(e) =
                spate_types::exec::blocking(move || replicas.checkpoint_high_watermarks()).await
            {
                tracing::error!(error = %e, "high watermark checkpoint failed");
            }
        }
    }
}

/// Partitions whose preferred replica (the first) is alive and in sync but not leading.
pub(crate) fn imbalanced(image: &MetadataImage) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for (name, topic) in &image.topics {
        for (index, p) in topic.partitions.iter().enumerate() {
            let Some(preferred) = p.replicas.first() else {
                continue;
            };
            if p.leader != *preferred && p.isr.contains(preferred) && image.is_alive(*preferred) {
                out.push((name.clone(), index as i32));
            }
        }
    }
    out
}

/// `auto.leader.rebalance.enable`: on the active controller, every
/// `leader.imbalance.check.interval.seconds`, moves leadership back to preferred replicas.
pub(crate) async fn rebalance_leaders(
    controller: Controller,
    interval: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // Biased (deterministic under simulation); the shutdown, which ends the loop, first.
        tokio::select! {
            biased;
            _ = spate_kafka::shutdown_signalled(&mut shutdown) => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if controller.leader() != Some(controller.node()) {
            continue;
        }
        let partitions = imbalanced(&controller.image());
        if partitions.is_empty() {
            continue;
        }
        match controller
            .propose(MetadataCommand::ElectPreferredLeaders { partitions })
            .await
        {
            Ok(MetadataOutcome::LeadersElected { moved }) if moved > 0 => {
                tracing::info!(moved, "moved leadership back to preferred replicas")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "preferred leader election failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_controller::StopCause;

    #[test]
    fn only_an_applied_refusal_forgets_an_isr_proposal() {
        let altered = Ok(MetadataOutcome::PartitionAltered { partition_epoch: 4 });
        assert_eq!(isr_answer(&altered), IsrAnswer::Committed);
        let rejected = |e| Ok(MetadataOutcome::Rejected(e));
        assert_eq!(
            isr_answer(&rejected(MetadataError::InvalidIsr("fenced".into()))),
            IsrAnswer::Refused
        );
        for stale in [
            MetadataError::StalePartitionState("epoch moved".into()),
            MetadataError::UnknownTopic("t".into()),
        ] {
            assert_eq!(isr_answer(&rejected(stale)), IsrAnswer::Stale);
        }
        // Any error may hide a commit: the answer was lost, or the core stopped after it.
        for lost in [
            ControllerError::PeerTimeout {
                peer: NodeId(3),
                timeout_ms: 5_000,
            },
            ControllerError::Stopped(StopCause::ShutDown),
            ControllerError::NotLeader { leader: None },
        ] {
            assert_eq!(isr_answer(&Err(lost)), IsrAnswer::Unknown);
        }
    }
}
