//! The set of partition replicas this node hosts.

use crate::partition::{FlushPolicy, Partition, ReplicaError};
use spate_log::LogConfig;
use spate_types::{LeaderEpoch, TopicPartition};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Hosts partitions under `<logs_dir>/<topic>-<partition>`, the directory naming Kafka uses.
pub struct ReplicaManager {
    logs_dir: PathBuf,
    policy: FlushPolicy,
    partitions: RwLock<BTreeMap<TopicPartition, Arc<Partition>>>,
}

impl ReplicaManager {
    pub fn new(logs_dir: impl Into<PathBuf>, policy: FlushPolicy) -> Self {
        Self {
            logs_dir: logs_dir.into(),
            policy,
            partitions: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn logs_dir(&self) -> &Path {
        &self.logs_dir
    }

    pub fn partition_dir(&self, tp: &TopicPartition) -> PathBuf {
        self.logs_dir.join(format!("{}-{}", tp.topic, tp.partition))
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<Arc<Partition>> {
        self.partitions.read().ok()?.get(tp).cloned()
    }

    pub fn contains(&self, tp: &TopicPartition) -> bool {
        self.partitions
            .read()
            .map(|p| p.contains_key(tp))
            .unwrap_or(false)
    }

    pub fn all(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Opens the partition (recovering its log) unless it is already hosted.
    pub fn open(
        &self,
        tp: TopicPartition,
        config: LogConfig,
        leader_epoch: LeaderEpoch,
        now_ms: i64,
    ) -> Result<Arc<Partition>, ReplicaError> {
        if let Some(p) = self.get(&tp) {
            return Ok(p);
        }
        let dir = self.partition_dir(&tp);
        let partition =
            Partition::open(&dir, tp.clone(), config, leader_epoch, self.policy, now_ms)?;
        let mut map = self
            .partitions
            .write()
            .map_err(|_| ReplicaError::Closed(tp.clone()))?;
        Ok(map.entry(tp).or_insert(partition).clone())
    }

    /// Stops hosting the partition and deletes its data.
    pub fn delete(&self, tp: &TopicPartition) -> Result<(), ReplicaError> {
        let removed = self
            .partitions
            .write()
            .ok()
            .and_then(|mut map| map.remove(tp));
        if let Some(partition) = removed {
            if let Some(log) = partition.close()? {
                log.delete()?;
            }
        } else {
            let dir = self.partition_dir(tp);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| ReplicaError::Log(spate_log::LogError::Io(e)))?;
            }
        }
        Ok(())
    }

    /// Fsyncs and closes every partition (clean shutdown).
    pub fn close_all(&self) -> Vec<(TopicPartition, ReplicaError)> {
        let mut failures = Vec::new();
        for partition in self.all() {
            if let Err(e) = partition.close() {
                failures.push((partition.topic_partition().clone(), e));
            }
        }
        failures
    }
}
