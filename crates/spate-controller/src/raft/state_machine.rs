//! The Raft state machine: applies committed entries to the [`MetadataImage`] and keeps its
//! snapshot in `snapshot` under the controller dir.
//!
//! The image lives in memory; durability comes from the snapshot plus the Raft log. On open the
//! state machine starts from the last snapshot and openraft re-applies the log from there up to the
//! saved committed index (see `log_store.rs`), which restores the exact pre-restart image.
//!
//! Openraft's obligations (`RaftStateMachine`, `RaftSnapshotBuilder`) and how they are met:
//! - **Every applied entry gets its response**: `apply` sends each entry's outcome to its
//!   responder, if it has one, right after applying it.
//! - **Snapshots contain all applied entries, including membership**: the builder copies the image,
//!   the last applied log id and the last membership under one `&mut self` call, so they agree.
//! - **A snapshot is durable before openraft may purge the log it covers**: `build_snapshot` and
//!   `install_snapshot` write the file (temp + fsync + rename + fsync dir) before returning.
//! - **`install_snapshot` replaces the state and becomes the current snapshot**; older snapshots
//!   are gone because there is only one file. A snapshot never replaces a newer one on disk.
//! - Subscribers see a new image after every `apply` and `install_snapshot`.

use super::{io_err, Entry, LogId, SnapshotMeta, StoredMembership, TypeConfig};
use crate::fsio;
use crate::metadata::MetadataImage;
use crate::state;
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use spate_types::disk::Disk;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub(crate) const SNAPSHOT_FILE: &str = "snapshot";

pub(crate) type Snapshot =
    openraft::Snapshot<super::LeaderId, super::RaftNodeId, openraft::BasicNode, MetadataImage>;

/// The snapshot file's contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    image: MetadataImage,
}

/// The durable current snapshot, shared by the state machine and its builders.
#[derive(Debug)]
struct SnapshotFile {
    disk: Arc<dyn Disk>,
    path: PathBuf,
    current: Mutex<Option<StoredSnapshot>>,
}

impl SnapshotFile {
    fn load(disk: Arc<dyn Disk>, dir: &Path) -> io::Result<SnapshotFile> {
        let path = dir.join(SNAPSHOT_FILE);
        let current = match fsio::read_framed_file(&*disk, &path)? {
            None => None,
            Some(payload) => Some(serde_json::from_slice::<StoredSnapshot>(&payload).map_err(
                |e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                },
            )?),
        };
        Ok(SnapshotFile {
            disk,
            path,
            current: Mutex::new(current),
        })
    }

    fn current(&self) -> io::Result<Option<StoredSnapshot>> {
        Ok(self.lock()?.clone())
    }

    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, Option<StoredSnapshot>>> {
        self.current
            .lock()
            .map_err(|_| io::Error::other("snapshot lock poisoned by an earlier panic"))
    }

    /// Makes `snap` durable and current, unless a newer snapshot already is.
    fn store(&self, snap: StoredSnapshot) -> io::Result<()> {
        let mut payload = Vec::new();
        let json = serde_json::to_vec(&snap).map_err(|e| io_err("encoding a snapshot", e))?;
        fsio::encode_frame(&json, &mut payload)?;
        // Held across the write so two snapshots cannot race to the rename.
        let mut current = self.lock()?;
        if let Some(cur) = current.as_ref() {
            if cur.meta.last_log_id >= snap.meta.last_log_id {
                return Ok(());
            }
        }
        fsio::write_atomic(&*self.disk, &self.path, &payload)?;
        *current = Some(snap);
        Ok(())
    }
}

async fn store_blocking(file: Arc<SnapshotFile>, snap: StoredSnapshot) -> io::Result<()> {
    spate_types::exec::blocking(move || file.store(snap))
        .await
        .map_err(|e| io_err("snapshot write task", e))?
}

/// The state machine handed to openraft.
pub(crate) struct StateMachine {
    image: Arc<MetadataImage>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    snapshots: Arc<SnapshotFile>,
    image_tx: watch::Sender<Arc<MetadataImage>>,
}

impl StateMachine {
    /// Loads the last snapshot in `dir` of `disk`, if any, as the starting state.
    pub(crate) fn open(
        disk: Arc<dyn Disk>,
        dir: &Path,
    ) -> io::Result<(StateMachine, watch::Receiver<Arc<MetadataImage>>)> {
        let snapshots = Arc::new(SnapshotFile::load(disk, dir)?);
        let (image, last_applied, last_membership) = match snapshots.current()? {
            Some(s) => (s.image, s.meta.last_log_id, s.meta.last_membership),
            None => (MetadataImage::default(), None, StoredMembership::default()),
        };
        let image = Arc::new(image);
        let (image_tx, image_rx) = watch::channel(image.clone());
        Ok((
            StateMachine {
                image,
                last_applied,
                last_membership,
                snapshots,
                image_tx,
            },
            image_rx,
        ))
    }

    fn publish(&self) {
        self.image_tx.send_replace(self.image.clone());
    }
}

/// A frozen view of the state machine, turned into a durable snapshot off the apply path.
pub(crate) struct SnapshotBuilder {
    snap: StoredSnapshot,
    snapshots: Arc<SnapshotFile>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = MetadataImage;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        store_blocking(self.snapshots.clone(), self.snap.clone()).await?;
        Ok(Snapshot {
            meta: self.snap.meta.clone(),
            snapshot: self.snap.image.clone(),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = MetadataImage;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut applied_any = false;
        // Answer proposers only after the new image is published, so that a proposer reading
        // `Controller::image` right after `propose` returns sees its own command applied.
        let mut answers = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            let entry: Entry = entry;
            // Copy-on-write: clones only if a subscriber still holds the previous image.
            let image = Arc::make_mut(&mut self.image);
            image.last_applied_index = entry.log_id.index();
            image.controller_id = super::spate_id(entry.log_id.committed_leader_id().node_id);
            let outcome = match &entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(cmd) => Some(state::apply(image, cmd)),
                EntryPayload::Membership(m) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    None
                }
            };
            self.last_applied = Some(entry.log_id);
            applied_any = true;
            if let Some(responder) = responder {
                answers.push((responder, outcome));
            }
        }
        if applied_any {
            self.publish();
        }
        for (responder, outcome) in answers {
            responder.send(outcome);
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        Some(self.get_snapshot_builder().await)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            snap: StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: self.last_applied,
                    last_membership: self.last_membership.clone(),
                },
                image: (*self.image).clone(),
            },
            snapshots: self.snapshots.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: MetadataImage,
    ) -> Result<(), io::Error> {
        let snap = StoredSnapshot {
            meta: meta.clone(),
            image: snapshot,
        };
        store_blocking(self.snapshots.clone(), snap.clone()).await?;
        self.image = Arc::new(snap.image);
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.snapshots.current()?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: s.image,
        }))
    }
}
