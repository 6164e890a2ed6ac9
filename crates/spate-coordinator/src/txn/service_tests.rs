//! The transaction coordinator task with a real `__transaction_state` partition: a transaction
//! through to its Complete record, and a coordinator taking over one left half done.

use super::messages::{
    AddPartitionsRequest, EndRequest, InitRequest, MarkerJob, TxnError, TxnSettings,
};
use super::service::{MarkerWriter, TxnService};
use super::state::TxnState;
use super::TRANSACTION_STATE_TOPIC;
use futures::future::BoxFuture;
use spate_log::LogConfig;
use spate_replica::{FlushPolicy, LeaderAndIsr, Partition, ReplicaSettings, StorageHealth};
use spate_types::{LeaderEpoch, NodeId, Seams, TopicPartition};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

const LOCAL: NodeId = NodeId(1);

/// `__transaction_state-0`, led here alone at `epoch`.
fn txn_partition(dir: &Path, epoch: i32) -> Arc<Partition> {
    let p = Partition::open(
        Arc::new(spate_types::OsDisk),
        dir,
        TopicPartition::new(TRANSACTION_STATE_TOPIC, 0),
        uuid::Uuid::from_u128(51),
        LogConfig::default(),
        ReplicaSettings {
            local: LOCAL,
            replica_lag_time_max_ms: 60_000,
            min_insync_replicas: 1,
            fsync_required: true,
        },
        FlushPolicy::default(),
        StorageHealth::default(),
        Arc::new(spate_types::SystemClock),
        0,
    )
    .expect("open");
    p.apply(LeaderAndIsr {
        leader: Some(LOCAL),
        leader_epoch: LeaderEpoch(epoch),
        partition_epoch: epoch,
        replicas: vec![LOCAL],
        isr: vec![LOCAL],
    })
    .expect("leader");
    p
}

/// A marker writer that reports each job to the test, and writes it only if told to.
struct Recorder {
    jobs: mpsc::UnboundedSender<MarkerJob>,
    succeed: bool,
}

impl MarkerWriter for Recorder {
    fn write(
        &self,
        job: MarkerJob,
        mut abandon: watch::Receiver<bool>,
    ) -> BoxFuture<'static, bool> {
        let _ = self.jobs.send(job);
        let succeed = self.succeed;
        Box::pin(async move {
            if succeed {
                return true;
            }
            let _ = abandon.wait_for(|a| *a).await;
            false
        })
    }
}

fn start(
    succeed: bool,
    shutdown: watch::Receiver<bool>,
) -> (TxnService, mpsc::UnboundedReceiver<MarkerJob>) {
    let (jobs, rx) = mpsc::unbounded_channel();
    let service = TxnService::start(
        TxnSettings {
            partition_count: 1,
            ..TxnSettings::default()
        },
        Duration::from_secs(600),
        Arc::new(Recorder { jobs, succeed }),
        shutdown,
        Seams::system(),
    );
    (service, rx)
}

async fn allocate() -> Result<i64, String> {
    Ok(1000)
}

fn end_req(producer_id: i64, producer_epoch: i16, commit: bool) -> EndRequest {
    EndRequest {
        transactional_id: "t".into(),
        producer_id,
        producer_epoch,
        commit,
        tv2: false,
    }
}

fn init_req() -> InitRequest {
    InitRequest {
        transactional_id: "t".into(),
        timeout_ms: 60_000,
        producer_id: -1,
        producer_epoch: -1,
    }
}

async fn state(service: &TxnService) -> Result<TxnState, TxnError> {
    service
        .query(|core, _| core.describe("t").map(|d| d.state))
        .await
        .and_then(|r| r)
}

/// Waits (checking as the task answers, up to 30 s) for the id to reach `want`.
async fn reaches(service: &TxnService, want: TxnState) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = state(service).await;
        if now == Ok(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {now:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_transaction_is_stored_marked_and_completed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let partition = txn_partition(dir.path(), 3);
    let (_stop, stopped) = watch::channel(false);
    let (service, mut jobs) = start(true, stopped);
    assert_eq!(
        service.init_producer_id(init_req(), allocate).await.error,
        Some(TxnError::NotCoordinator),
        "nothing is led yet"
    );
    service.own(BTreeMap::from([(0, partition.clone())])).await;
    let a = service.init_producer_id(init_req(), allocate).await;
    assert_eq!((a.error, a.producer_id, a.producer_epoch), (None, 1000, 0));
    assert!(
        partition.high_watermark().0 >= 1,
        "answered only once the record is below the high watermark"
    );
    let added = service
        .add_partitions(AddPartitionsRequest {
            transactional_id: "t".into(),
            producer_id: 1000,
            producer_epoch: 0,
            partitions: vec![("a".into(), 0)],
            tv2: false,
        })
        .await;
    assert_eq!(added.error, None);
    let ended = service.end_txn(end_req(1000, 0, true), allocate).await;
    assert_eq!(ended.error, None);
    let job = jobs.recv().await.expect("a marker job");
    assert_eq!(
        (job.commit, job.coordinator_epoch, job.partitions.clone()),
        (true, 3, vec![("a".to_owned(), 0)]),
        "markers carry the partition's leader epoch as the coordinator epoch"
    );
    // The Complete record is stored after the markers.
    reaches(&service, TxnState::CompleteCommit).await;
}

#[tokio::test]
async fn a_new_coordinator_writes_the_markers_of_a_transaction_left_between_prepare_and_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stop, stopped) = watch::channel(false);
    {
        let partition = txn_partition(dir.path(), 1);
        let (service, mut jobs) = start(false, stopped.clone());
        service.own(BTreeMap::from([(0, partition.clone())])).await;
        let a = service.init_producer_id(init_req(), allocate).await;
        service
            .add_partitions(AddPartitionsRequest {
                transactional_id: "t".into(),
                producer_id: a.producer_id,
                producer_epoch: a.producer_epoch,
                partitions: vec![("a".into(), 1), ("b".into(), 0)],
                tv2: false,
            })
            .await;
        let ended = service
            .end_txn(end_req(a.producer_id, a.producer_epoch, false), allocate)
            .await;
        assert_eq!(ended.error, None);
        assert!(!jobs.recv().await.expect("job").commit);
        assert_eq!(state(&service).await, Ok(TxnState::PrepareAbort));
        // Leadership moves away: the unfinished job is abandoned.
        service.own(BTreeMap::new()).await;
        assert_eq!(state(&service).await, Err(TxnError::NotCoordinator));
        let _ = stop.send(true);
        partition.close().expect("close");
    }
    let (_stop, stopped) = watch::channel(false);
    let partition = txn_partition(dir.path(), 2);
    let (service, mut jobs) = start(true, stopped);
    service.own(BTreeMap::from([(0, partition.clone())])).await;
    let job = jobs.recv().await.expect("the markers are sent again");
    assert_eq!(
        (job.commit, job.coordinator_epoch, job.partitions.len()),
        (false, 2, 2)
    );
    reaches(&service, TxnState::CompleteAbort).await;
}

/// A marker writer that writes each job once the test opens the gate.
struct Gated {
    jobs: mpsc::UnboundedSender<MarkerJob>,
    gate: watch::Receiver<bool>,
}

impl MarkerWriter for Gated {
    fn write(&self, job: MarkerJob, abandon: watch::Receiver<bool>) -> BoxFuture<'static, bool> {
        let _ = self.jobs.send(job);
        let (mut gate, mut abandon) = (self.gate.clone(), abandon);
        Box::pin(async move {
            tokio::select! {
                _ = gate.wait_for(|open| *open) => true,
                _ = abandon.wait_for(|a| *a) => false,
            }
        })
    }
}

/// A committed transaction whose markers wait for the gate; returns the service, its marker
/// jobs and the gate.
async fn committed_awaiting_markers(
    partition: Arc<Partition>,
    stopped: watch::Receiver<bool>,
) -> (
    TxnService,
    mpsc::UnboundedReceiver<MarkerJob>,
    watch::Sender<bool>,
) {
    let (jobs_tx, mut jobs) = mpsc::unbounded_channel();
    let (gate, gate_rx) = watch::channel(false);
    let service = TxnService::start(
        TxnSettings {
            partition_count: 1,
            ..TxnSettings::default()
        },
        Duration::from_secs(600),
        Arc::new(Gated {
            jobs: jobs_tx,
            gate: gate_rx,
        }),
        stopped,
        Seams::system(),
    );
    service.own(BTreeMap::from([(0, partition)])).await;
    let a = service.init_producer_id(init_req(), allocate).await;
    assert_eq!(a.error, None);
    assert_eq!(service.add_partitions(add("a")).await.error, None);
    let ended = service.end_txn(end_req(1000, 0, true), allocate).await;
    assert_eq!(ended.error, None, "answered once PrepareCommit is stored");
    jobs.recv().await.expect("a marker job");
    assert_eq!(state(&service).await, Ok(TxnState::PrepareCommit));
    (service, jobs, gate)
}

/// Returns once an add for the id's next transaction waits in the core for the markers.
async fn add_waits(service: &TxnService) {
    while !service
        .query(|core, _| core.add_waiting(&init_req().transactional_id))
        .await
        .expect("query")
    {
        tokio::task::yield_now().await;
    }
}

fn add(topic: &str) -> AddPartitionsRequest {
    AddPartitionsRequest {
        transactional_id: "t".into(),
        producer_id: 1000,
        producer_epoch: 0,
        partitions: vec![(topic.into(), 0)],
        tv2: false,
    }
}

#[tokio::test]
async fn the_next_transactions_add_partitions_waits_for_the_markers_instead_of_refusing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_stop, stopped) = watch::channel(false);
    let partition = txn_partition(dir.path(), 1);
    let (service, _jobs, gate) = committed_awaiting_markers(partition.clone(), stopped).await;
    let next = tokio::spawn({
        let service = service.clone();
        async move { service.add_partitions(add("b")).await }
    });
    // The request waits in the core while the markers are pending (it would have been
    // answered CONCURRENT_TRANSACTIONS at once before).
    add_waits(&service).await;
    assert_eq!(state(&service).await, Ok(TxnState::PrepareCommit));
    assert!(
        !next.is_finished(),
        "answered before the markers were written"
    );
    gate.send_replace(true);
    let answer = next.await.expect("join");
    assert_eq!(
        answer.error, None,
        "the next transaction starts once Complete is stored"
    );
    assert_eq!(state(&service).await, Ok(TxnState::Ongoing));
    // The Complete record and the next Ongoing one went in one batch.
    let mut stored = Vec::new();
    crate::service::replay_records(&partition, |header, record| {
        let key = record.key.expect("key");
        let value = super::TxnRecord::decode(&key, record.value.as_deref())
            .expect("a transaction record")
            .value
            .expect("not a tombstone");
        stored.push((header.base_offset.0, value.state));
    })
    .expect("replay");
    let last_batch = stored.last().map(|(b, _)| *b);
    let tail: Vec<TxnState> = stored
        .iter()
        .filter(|(b, _)| Some(*b) == last_batch)
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(
        tail,
        vec![TxnState::CompleteCommit, TxnState::Ongoing],
        "{stored:?}"
    );
}

/// A version 2 producer's first writes of its next transaction, to partitions of different
/// leaders, each make their leader add the partition while the previous markers are being
/// written: one waits in the core, the other is asked again once the records settle, and
/// neither producer write is refused.
#[tokio::test]
async fn adds_of_several_partitions_behind_the_markers_all_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_stop, stopped) = watch::channel(false);
    let (service, _jobs, gate) =
        committed_awaiting_markers(txn_partition(dir.path(), 1), stopped).await;
    let spawn_add = |topic: &'static str| {
        let service = service.clone();
        tokio::spawn(async move { service.add_partitions(add(topic)).await })
    };
    let first = spawn_add("b");
    add_waits(&service).await;
    let second = spawn_add("c");
    gate.send_replace(true);
    assert_eq!(first.await.expect("join").error, None);
    assert_eq!(second.await.expect("join").error, None);
    let partitions = service
        .query(|core, _| core.describe("t").map(|d| d.partitions))
        .await
        .expect("query");
    assert_eq!(
        partitions,
        Ok(vec![("b".to_owned(), 0), ("c".to_owned(), 0)])
    );
}

#[tokio::test]
async fn an_add_partitions_behind_markers_that_never_finish_is_refused_after_the_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_stop, stopped) = watch::channel(false);
    let (service, _jobs, _gate) =
        committed_awaiting_markers(txn_partition(dir.path(), 1), stopped).await;
    let started = tokio::time::Instant::now();
    let answer = service.add_partitions(add("b")).await;
    assert_eq!(answer.error, Some(TxnError::ConcurrentTransactions));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "refused only after waiting: {:?}",
        started.elapsed()
    );
    assert_eq!(state(&service).await, Ok(TxnState::PrepareCommit));
}
