//! Applies controller metadata images to this node's replicas: opens the partitions it hosts,
//! pushes topic config changes to their logs, and deletes partitions whose topic is gone.
//!
//! Each partition directory holds a `partition.metadata` file with the topic id (as Kafka's
//! does), so a topic deleted and re-created under the same name, even while this node was
//! down, never revives the old data.

use crate::broker::{now_ms, Broker};
use spate_controller::MetadataImage;
use spate_log::LogConfig;
use spate_types::{LeaderEpoch, TopicPartition};
use std::collections::BTreeMap;
use std::path::Path;
use uuid::Uuid;

const PARTITION_METADATA: &str = "partition.metadata";

/// Idempotent; called by the image watcher and by admin handlers right after their command
/// committed, so a client that creates a topic can produce to it at once.
pub(crate) fn apply_image(broker: &Broker, image: &MetadataImage) {
    let Ok(mut hosted) = broker.hosted.lock() else {
        return;
    };
    let replicas = &broker.replicas;
    let now = now_ms();

    // What the image says this node hosts, and each topic's effective config (parsed once per
    // topic, not once per partition).
    let mut wanted: BTreeMap<TopicPartition, (Uuid, LeaderEpoch)> = BTreeMap::new();
    let mut configs: BTreeMap<&str, LogConfig> = BTreeMap::new();
    for (name, topic) in &image.topics {
        for (index, partition) in topic.partitions.iter().enumerate() {
            if partition.replicas.contains(&broker.config.node_id) {
                wanted.insert(
                    TopicPartition::new(name.clone(), index as i32),
                    (topic.topic_id, partition.leader_epoch),
                );
                configs
                    .entry(name)
                    .or_insert_with(|| topic_config(broker, name, &topic.configs));
            }
        }
    }

    // Drop what is no longer wanted, or belongs to an older incarnation of the topic.
    let stale: Vec<TopicPartition> = hosted
        .iter()
        .filter(|(tp, id)| wanted.get(*tp).map(|(want, _)| want != *id).unwrap_or(true))
        .map(|(tp, _)| tp.clone())
        .collect();
    for tp in stale {
        hosted.remove(&tp);
        match replicas.delete(&tp) {
            Ok(()) => tracing::info!(partition = %tp, "deleted partition"),
            Err(e) => tracing::error!(partition = %tp, error = %e, "failed to delete partition"),
        }
    }

    for (tp, (topic_id, epoch)) in &wanted {
        let config = configs
            .get(tp.topic.as_str())
            .cloned()
            .unwrap_or_else(|| broker.config.log_defaults.clone());
        if let Some(partition) = replicas.get(tp) {
            if let Err(e) = partition.set_config(config) {
                tracing::warn!(partition = %tp, error = %e, "could not update topic config");
            }
            continue;
        }
        let dir = replicas.partition_dir(tp);
        if let Err(e) = claim_dir(&dir, *topic_id) {
            tracing::error!(partition = %tp, error = %e, "cannot prepare partition directory");
            continue;
        }
        match replicas.open(tp.clone(), config, *epoch, now) {
            Ok(_) => {
                hosted.insert(tp.clone(), *topic_id);
            }
            Err(e) => tracing::error!(partition = %tp, error = %e, "failed to open partition"),
        }
    }
}

fn topic_config(broker: &Broker, topic: &str, overrides: &BTreeMap<String, String>) -> LogConfig {
    broker.config.log_defaults.with_overrides(overrides).unwrap_or_else(|e| {
        tracing::error!(%topic, error = %e, "invalid stored topic config; using broker defaults");
        broker.config.log_defaults.clone()
    })
}

/// Makes `dir` belong to `topic_id`: an existing directory of another topic id is removed.
fn claim_dir(dir: &Path, topic_id: Uuid) -> std::io::Result<()> {
    let file = dir.join(PARTITION_METADATA);
    let content = format!("version: 0\ntopic_id: {topic_id}\n");
    match std::fs::read_to_string(&file) {
        Ok(existing) if existing == content => return Ok(()),
        Ok(_) => {
            tracing::info!(dir = %dir.display(), "removing data of a deleted topic with the same name");
            std::fs::remove_dir_all(dir)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(&file, content)?;
    Ok(())
}

/// Removes partition directories that no topic in the image owns (topics deleted while this
/// node was down). Run once at start-up, after the first [`apply_image`].
pub(crate) fn remove_orphans(broker: &Broker) {
    let Ok(hosted) = broker.hosted.lock() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(broker.replicas.logs_dir()) else {
        return;
    };
    let hosted_dirs: std::collections::BTreeSet<_> = hosted
        .keys()
        .map(|tp| broker.replicas.partition_dir(tp))
        .collect();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && path.join(PARTITION_METADATA).exists() && !hosted_dirs.contains(&path) {
            tracing::info!(dir = %path.display(), "removing data of a topic deleted while down");
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::error!(dir = %path.display(), error = %e, "failed to remove orphan partition");
            }
        }
    }
}

/// Follows the controller's images until shutdown.
pub async fn follow_metadata(broker: std::sync::Arc<Broker>) {
    let mut images = broker.controller.subscribe();
    let mut shutdown = broker.shutdown.clone();
    loop {
        let image = images.borrow_and_update().clone();
        apply_image(&broker, &image);
        tokio::select! {
            changed = images.changed() => if changed.is_err() { return },
            _ = crate::broker::shutdown_signalled(&mut shutdown) => return,
        }
    }
}
