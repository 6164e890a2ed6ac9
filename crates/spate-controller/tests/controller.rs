//! End-to-end tests of the single-node controller: Raft, storage and the metadata state machine
//! together, through the public API only.

use spate_controller::{
    BrokerEndpoint, Controller, ControllerConfig, ControllerError, MetadataCommand, MetadataError,
    MetadataImage, MetadataOutcome, StopCause,
};
use spate_types::{Disk, MemoryDisk, NodeId, ProducerId, Seams};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const NODE: NodeId = NodeId(1);

fn endpoint() -> BrokerEndpoint {
    BrokerEndpoint {
        host: "127.0.0.1".into(),
        port: 9092,
        rack: Some("r1".into()),
    }
}

fn create(name: &str, partitions: i32) -> MetadataCommand {
    MetadataCommand::CreateTopic {
        name: name.into(),
        topic_id: Uuid::new_v4(),
        partitions,
        replication_factor: 1,
        configs: BTreeMap::new(),
        assignments: None,
    }
}

fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn open(dir: &Path) -> Controller {
    Controller::open(dir, NODE, endpoint())
        .await
        .expect("open controller")
}

async fn propose(c: &Controller, cmd: MetadataCommand) -> MetadataOutcome {
    c.propose(cmd).await.expect("propose")
}

/// The replicated content of an image, without what moves on every open: Raft bookkeeping,
/// and the broker epoch and leader epochs, since a restarted broker registers again (fenced,
/// then unfenced, each a leader change).
fn content(image: &MetadataImage) -> MetadataImage {
    let mut image = MetadataImage {
        last_applied_index: 0,
        broker_epochs: Default::default(),
        ..image.clone()
    };
    for topic in image.topics.values_mut() {
        for p in &mut topic.partitions {
            p.leader_epoch = Default::default();
            p.partition_epoch = 0;
        }
    }
    image
}

/// Drives a mix of commands and returns the image they produced.
async fn populate(c: &Controller) -> MetadataImage {
    assert!(matches!(
        propose(c, create("orders", 3)).await,
        MetadataOutcome::TopicCreated { .. }
    ));
    assert!(matches!(
        propose(c, create("payments", 1)).await,
        MetadataOutcome::TopicCreated { .. }
    ));
    assert!(matches!(
        propose(c, create("doomed", 1)).await,
        MetadataOutcome::TopicCreated { .. }
    ));
    let cfg = configs(&[("retention.ms", "60000"), ("cleanup.policy", "compact")]);
    assert_eq!(
        propose(
            c,
            MetadataCommand::SetTopicConfigs {
                name: "orders".into(),
                configs: cfg,
                expected: None,
            }
        )
        .await,
        MetadataOutcome::TopicConfigsSet
    );
    assert_eq!(
        propose(
            c,
            MetadataCommand::CreatePartitions {
                name: "payments".into(),
                new_total: 4,
                assignments: None,
            }
        )
        .await,
        MetadataOutcome::PartitionsCreated
    );
    assert!(matches!(
        propose(
            c,
            MetadataCommand::DeleteTopic {
                name: "doomed".into(),
                topic_id: None,
            }
        )
        .await,
        MetadataOutcome::TopicDeleted { .. }
    ));
    assert_eq!(
        propose(
            c,
            MetadataCommand::AllocateProducerIds {
                node: NODE,
                count: 1000
            }
        )
        .await,
        MetadataOutcome::ProducerIds {
            first: ProducerId(0),
            count: 1000
        }
    );
    assert_eq!(
        propose(
            c,
            MetadataCommand::AllocateProducerIds {
                node: NODE,
                count: 1000
            }
        )
        .await,
        MetadataOutcome::ProducerIds {
            first: ProducerId(1000),
            count: 1000
        }
    );
    c.image().as_ref().clone()
}

#[tokio::test]
async fn open_propose_subscribe_shutdown_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");

    let started = Instant::now();
    let c = open(dir.path()).await;
    let opened = started.elapsed();
    let image = c.image();
    assert_eq!(
        image.brokers.get(&NODE),
        Some(&endpoint()),
        "open registers this broker"
    );
    assert_eq!(image.controller_id, Some(NODE));
    assert!(image.last_applied_index > 0);
    let first = Instant::now();
    propose(&c, create("first", 1)).await;
    eprintln!(
        "fresh open took {opened:?}, first propose {:?}",
        first.elapsed()
    );

    let mut sub = c.subscribe();
    let before = sub.borrow().last_applied_index;
    let image = populate(&c).await;
    tokio::time::timeout(Duration::from_secs(5), sub.changed())
        .await
        .expect("subscriber notified")
        .expect("sender alive");
    assert!(sub.borrow_and_update().last_applied_index > before);
    assert_eq!(*sub.borrow(), c.image(), "subscriber sees the latest image");

    assert_eq!(
        image.topics.keys().collect::<Vec<_>>(),
        ["first", "orders", "payments"]
    );
    assert_eq!(image.topics["orders"].partitions.len(), 3);
    assert_eq!(image.topics["orders"].configs["cleanup.policy"], "compact");
    assert_eq!(image.topics["payments"].partitions.len(), 4);
    assert_eq!(image.next_producer_id, 2000);
    let orders = &image.topics["orders"];
    assert_eq!(
        image.topic_by_id(orders.topic_id).map(|(n, _)| n),
        Some("orders")
    );
    for p in &orders.partitions {
        assert_eq!(p.leader, NODE);
        assert_eq!(p.replicas, vec![NODE]);
        assert_eq!(p.isr, vec![NODE]);
    }

    // Rejections come back as outcomes and change nothing.
    let outcome = propose(&c, create("orders", 1)).await;
    assert_eq!(
        outcome,
        MetadataOutcome::Rejected(MetadataError::TopicAlreadyExists("orders".into()))
    );
    let outcome = propose(
        &c,
        MetadataCommand::DeleteTopic {
            name: "nope".into(),
            topic_id: None,
        },
    )
    .await;
    assert_eq!(
        outcome,
        MetadataOutcome::Rejected(MetadataError::UnknownTopic("nope".into()))
    );
    let outcome = propose(
        &c,
        MetadataCommand::CreateTopic {
            name: "wide".into(),
            topic_id: Uuid::new_v4(),
            partitions: 1,
            replication_factor: 3,
            configs: BTreeMap::new(),
            assignments: None,
        },
    )
    .await;
    assert!(matches!(
        outcome,
        MetadataOutcome::Rejected(MetadataError::InvalidReplicationFactor(_))
    ));
    let image = c.image();
    assert_eq!(content(&image), content(&c.image()));

    c.shutdown().await.expect("shutdown");
    c.shutdown().await.expect("shutdown is idempotent");
    assert!(matches!(
        c.propose(create("late", 1)).await,
        Err(ControllerError::Stopped(StopCause::ShutDown))
    ));

    // A fresh controller over the same directory restores the exact image. Reopening appends
    // entries of its own (the new leader's entry, the broker registration), so the index moves.
    let started = Instant::now();
    let c = open(dir.path()).await;
    eprintln!("reopen took {:?}", started.elapsed());
    let reopened = c.image();
    assert_eq!(content(&reopened), content(&image));
    assert!(reopened.last_applied_index > image.last_applied_index);
    assert!(matches!(
        propose(&c, create("after-restart", 2)).await,
        MetadataOutcome::TopicCreated { .. }
    ));
    c.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn snapshot_and_purge_then_keep_going_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ControllerConfig {
        snapshot_every_entries: 10,
        log_entries_kept_after_snapshot: 0,
        ..ControllerConfig::default()
    };
    let c = Controller::open_with_config(dir.path(), NODE, endpoint(), config.clone())
        .await
        .expect("open");
    for i in 0..40 {
        propose(&c, create(&format!("t{i}"), 1)).await;
    }
    let log = dir.path().join("raft-log");
    let log_bytes_before = std::fs::metadata(&log).expect("log").len();
    // Snapshots and purges run in the background; wait for the log to be compacted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        propose(
            &c,
            MetadataCommand::AllocateProducerIds {
                node: NODE,
                count: 1,
            },
        )
        .await;
        let bytes = std::fs::metadata(&log).expect("log").len();
        if dir.path().join("snapshot").exists() && bytes < log_bytes_before {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot + purge within 10s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Proposing after a purge works and lands in the image.
    assert!(matches!(
        propose(&c, create("post-purge", 2)).await,
        MetadataOutcome::TopicCreated { .. }
    ));
    let image = c.image();
    assert_eq!(image.topics.len(), 41);
    c.shutdown().await.expect("shutdown");

    let c = Controller::open_with_config(dir.path(), NODE, endpoint(), config)
        .await
        .expect("reopen");
    assert_eq!(content(&c.image()), content(&image));
    assert!(c.image().last_applied_index > image.last_applied_index);
    c.shutdown().await.expect("shutdown");

    // And with the default config (no snapshot due) the snapshot + log still restore it.
    let c = open(dir.path()).await;
    assert_eq!(content(&c.image()), content(&image));
    c.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn torn_log_tail_is_dropped_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("raft-log");
    let c = open(dir.path()).await;
    let image = populate(&c).await;
    c.shutdown().await.expect("shutdown");

    // A crash in the middle of an append: a frame header promising more bytes than follow.
    let intact_len = std::fs::metadata(&log).expect("log").len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open log");
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"'])
            .expect("write torn tail");
    }
    let c = open(dir.path()).await;
    assert_eq!(
        content(&c.image()),
        content(&image),
        "the torn frame is dropped, nothing else"
    );
    let image = c.image().as_ref().clone();
    c.shutdown().await.expect("shutdown");
    assert!(std::fs::metadata(&log).expect("log").len() > intact_len);

    // Tear the last real record in half: whatever it held is lost, the rest opens cleanly.
    let len = std::fs::metadata(&log).expect("log").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .expect("open log")
        .set_len(len - 3)
        .expect("truncate");
    let c = open(dir.path()).await;
    let recovered = c.image();
    assert_eq!(content(&recovered).topics, content(&image).topics);
    assert_eq!(recovered.next_producer_id, image.next_producer_id);
    assert!(matches!(
        propose(&c, create("still-works", 1)).await,
        MetadataOutcome::TopicCreated { .. }
    ));
    c.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_directory_runs_one_controller_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path()).await;
    match Controller::open(dir.path(), NODE, endpoint()).await {
        Err(ControllerError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("second controller on the same dir must fail, got {other:?}"),
    }
    // The loser did not disturb the winner.
    assert!(matches!(
        propose(&first, create("t", 1)).await,
        MetadataOutcome::TopicCreated { .. }
    ));
    first.shutdown().await.expect("shutdown");
    let second = open(dir.path()).await;
    assert!(second.image().topics.contains_key("t"));
    second.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn negative_node_id_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    match Controller::open(dir.path(), NodeId(-1), endpoint()).await {
        Err(ControllerError::InvalidNodeId(NodeId(-1))) => {}
        other => panic!("expected InvalidNodeId, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_all_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = open(dir.path()).await;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                c.propose(MetadataCommand::AllocateProducerIds {
                    node: NODE,
                    count: 10,
                })
                .await
            })
        })
        .collect();
    let mut firsts = Vec::new();
    for t in tasks {
        match t.await.expect("join").expect("propose") {
            MetadataOutcome::ProducerIds { first, count: 10 } => firsts.push(first.0),
            other => panic!("unexpected {other:?}"),
        }
    }
    firsts.sort_unstable();
    assert_eq!(
        firsts,
        (0..32).map(|i| i * 10).collect::<Vec<_>>(),
        "blocks are disjoint and contiguous"
    );
    assert_eq!(c.image().next_producer_id, 320);
    c.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn dropping_the_last_handle_stops_raft_and_frees_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = open(dir.path()).await;
    propose(&c, create("kept", 1)).await;
    let image = c.image();
    drop(c);
    // The background stop releases the lock promptly; retry briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    let c = loop {
        match Controller::open(dir.path(), NODE, endpoint()).await {
            Ok(c) => break c,
            Err(ControllerError::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("reopen after drop: {e}"),
        }
    };
    assert_eq!(content(&c.image()), content(&image));
    c.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn reopening_under_another_node_id_fails_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    open(dir.path()).await.shutdown().await.expect("shutdown");
    let started = Instant::now();
    match Controller::open(dir.path(), NodeId(2), endpoint()).await {
        Err(ControllerError::NotAVoter {
            node: NodeId(2),
            voters,
        }) => assert_eq!(voters, vec![NODE]),
        other => panic!("expected NotAVoter, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "fails before the open timeout"
    );
    // The directory is usable again by its own node.
    open(dir.path()).await.shutdown().await.expect("shutdown");
}

/// Seams whose disk is `disk` (a clone shares its files), the rest the system's.
fn on_memory_disk(disk: &MemoryDisk) -> Seams {
    Seams {
        disk: Arc::new(disk.clone()),
        ..Seams::system()
    }
}

async fn open_on(
    disk: &MemoryDisk,
    dir: &Path,
    config: ControllerConfig,
) -> Result<Controller, ControllerError> {
    Controller::open_with_seams(dir, NODE, endpoint(), config, on_memory_disk(disk)).await
}

#[tokio::test]
async fn committed_metadata_survives_a_crash_of_a_memory_disk() {
    let disk = MemoryDisk::default();
    // Nothing exists yet: the controller creates the directory and its parent itself.
    let dir = Path::new("/data/metadata");
    let config = ControllerConfig {
        snapshot_every_entries: 10,
        log_entries_kept_after_snapshot: 0,
        ..ControllerConfig::default()
    };
    let c = open_on(&disk, dir, config.clone()).await.expect("open");

    tracing::info!("--- commit enough to snapshot and purge the log, then some more");
    let log = dir.join("raft-log");
    let snapshot = dir.join("snapshot");
    let mut log_bytes_max = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0.. {
        propose(&c, create(&format!("t{i}"), 1)).await;
        let bytes = disk.file_len(&log).expect("log");
        log_bytes_max = log_bytes_max.max(bytes);
        if disk.file_len(&snapshot).is_ok() && bytes < log_bytes_max {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot + purge within 10s");
    }
    let image = populate(&c).await;

    tracing::info!("--- kill the controller, then cut the power, tearing any unsynced tail");
    c.halt().await.expect("halt");
    disk.crash_keeping(&mut |_, tail| tail / 2);

    tracing::info!("--- reopen on the same disk: every committed change is there");
    let c = open_on(&disk, dir, config).await.expect("reopen");
    assert_eq!(content(&c.image()), content(&image));
    assert!(matches!(
        propose(&c, create("after-the-crash", 1)).await,
        MetadataOutcome::TopicCreated { .. }
    ));
    let image = c.image();
    c.shutdown().await.expect("shutdown");

    tracing::info!("--- and again after a clean shutdown and a plain crash");
    disk.crash();
    let c = open_on(&disk, dir, ControllerConfig::default())
        .await
        .expect("reopen");
    assert_eq!(content(&c.image()), content(&image));
    c.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_directory_of_a_memory_disk_runs_one_controller_at_a_time() {
    let disk = MemoryDisk::default();
    let dir = Path::new("/data/metadata");
    let first = open_on(&disk, dir, ControllerConfig::default())
        .await
        .expect("open");
    match open_on(&disk, dir, ControllerConfig::default()).await {
        Err(ControllerError::Locked { path }) => assert_eq!(path, dir),
        other => panic!("second controller on the same dir must fail, got {other:?}"),
    }
    assert!(matches!(
        propose(&first, create("t", 1)).await,
        MetadataOutcome::TopicCreated { .. }
    ));
    first.shutdown().await.expect("shutdown");
    let second = open_on(&disk, dir, ControllerConfig::default())
        .await
        .expect("the lock is free after a shutdown");
    assert!(second.image().topics.contains_key("t"));
    second.shutdown().await.expect("shutdown");
}
