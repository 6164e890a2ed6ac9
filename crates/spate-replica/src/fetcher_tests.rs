//! The follower fetcher against a scripted leader: what it asks (decoded requests) and what it
//! does to a real follower partition in a temporary directory. Tests synchronise on the
//! requests the leader receives, never on sleeps.

use super::disk::first_batch_straddles;
use super::fetch::whole_batches_len;
use super::truncate::{truncation_target, Truncation};
use super::*;
use crate::core::{LeaderAndIsr, ReplicaSettings};
use crate::partition::FlushPolicy;
use bytes::Bytes;
use kafka_protocol::messages::fetch_request::FetchPartition;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderPartition;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use spate_log::LogConfig;
use spate_test_broker::{Received, ScriptedBroker};
use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const LOCAL: NodeId = NodeId(1);
const LEADER: NodeId = NodeId(2);
const WAIT: Duration = Duration::from_secs(10);

fn settings() -> FetcherSettings {
    FetcherSettings {
        max_wait_ms: 100,
        partition_max_bytes: 1 << 20,
        response_max_bytes: 10 << 20,
        request_timeout_ms: 10_000,
        backoff_ms: 20,
        ..FetcherSettings::default()
    }
}

fn tp(partition: i32) -> TopicPartition {
    TopicPartition::new("t", partition)
}

/// One v2 batch of `count` records at offsets `base..base + count`, stamped with `epoch`.
fn batch(base: i64, epoch: i32, count: i64) -> Vec<u8> {
    let records: Vec<Record> = (base..base + count)
        .map(|offset| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: epoch,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            // The encoder starts a new batch unless offset - sequence stays the same; the
            // first record's -1 becomes the batch's base sequence (no producer id).
            sequence: i32::try_from(offset - base).expect("small") - 1,
            timestamp: 1_000,
            key: None,
            value: Some(Bytes::from(format!("value {offset}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode");
    buf.to_vec()
}

fn state(epoch: i32) -> LeaderAndIsr {
    LeaderAndIsr {
        leader: Some(LEADER),
        leader_epoch: LeaderEpoch(epoch),
        partition_epoch: epoch,
        replicas: vec![LOCAL, LEADER],
        isr: vec![LEADER, LOCAL],
    }
}

/// A follower of [`LEADER`] in `epoch`, with an empty log.
fn follower(dir: &Path, tp: TopicPartition, epoch: i32) -> Arc<Partition> {
    let settings = ReplicaSettings {
        local: LOCAL,
        replica_lag_time_max_ms: 10_000,
        min_insync_replicas: 1,
        fsync_required: true,
    };
    let p = Partition::open(
        Arc::new(spate_types::OsDisk),
        dir,
        tp,
        uuid::Uuid::from_u128(7),
        LogConfig::default(),
        settings,
        FlushPolicy::default(),
        crate::StorageHealth::default(),
        Arc::new(spate_types::SystemClock),
        0,
    )
    .expect("open");
    p.apply(state(epoch)).expect("apply");
    p
}

/// A follower in epoch 2 whose log holds offsets 0 and 1 written in epoch 0 and 2 and 3 in
/// epoch 1 (single-record batches), with high watermark 0.
fn follower_with_two_epochs(dir: &Path) -> Arc<Partition> {
    let p = follower(dir, tp(0), 1);
    let records = [
        batch(0, 0, 1),
        batch(1, 0, 1),
        batch(2, 1, 1),
        batch(3, 1, 1),
    ]
    .concat();
    p.append_from_leader(&records, Offset(0), 0)
        .expect("prefill");
    p.apply(state(2)).expect("epoch 2");
    p
}

/// Every batch in the log, read segment by segment (a follower rolls segments on the batches'
/// old timestamps).
fn log_bytes(p: &Partition) -> Vec<u8> {
    let position = p.follower_position().expect("position");
    let mut next = position.log_start;
    let mut out = Vec::new();
    while next < position.log_end {
        let bytes = p
            .with_log(|log| log.plan_read(next, 1 << 20, position.log_end, true))
            .expect("plan")
            .load()
            .expect("load");
        assert!(
            !bytes.is_empty(),
            "a read at {next} below the log end returns a batch"
        );
        let mut pos = 0;
        while pos < bytes.len() {
            let base = i64::from_be_bytes(bytes[pos..pos + 8].try_into().expect("8"));
            let length = i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().expect("4"));
            let delta = i32::from_be_bytes(bytes[pos + 23..pos + 27].try_into().expect("4"));
            next = Offset(base + i64::from(delta) + 1);
            pos += 12 + usize::try_from(length).expect("valid");
        }
        out.extend_from_slice(&bytes);
    }
    out
}

fn log_end(p: &Partition) -> Offset {
    p.follower_position().expect("position").log_end
}

/// A request the scripted leader received.
enum Seen {
    Fetch(FetchRequest, i16, Instant),
    Epochs(OffsetForLeaderEpochRequest, i16),
}

type Answer = Box<dyn FnOnce(&Received) -> Bytes + Send>;

/// A scripted leader: answers requests with the queued answers in order, then with defaults
/// (an empty fetch with high watermark 0, after 5 ms so that an idle follower does not spin;
/// OffsetForLeaderEpoch: "your epoch ends wherever your log does", so nothing is truncated).
struct Leader {
    broker: ScriptedBroker,
    seen: mpsc::UnboundedReceiver<Seen>,
    answers: Arc<Mutex<VecDeque<Answer>>>,
}

impl Leader {
    async fn start() -> Leader {
        Leader::start_on(
            &spate_types::TcpNetwork,
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await
    }

    async fn start_on(net: &dyn spate_types::Network, addr: std::net::SocketAddr) -> Leader {
        // Newer than the fetcher sends, to check its caps.
        Leader::start_offering(net, addr, 17).await
    }

    /// A leader without topic ids in Fetch (up to v12): a follower truncates by asking it
    /// OffsetForLeaderEpoch first.
    async fn start_v12() -> Leader {
        Leader::start_offering(
            &spate_types::TcpNetwork,
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            12,
        )
        .await
    }

    /// A leader offering Fetch up to `fetch_max`.
    async fn start_offering(
        net: &dyn spate_types::Network,
        addr: std::net::SocketAddr,
        fetch_max: i16,
    ) -> Leader {
        let (tx, seen) = mpsc::unbounded_channel();
        let answers: Arc<Mutex<VecDeque<Answer>>> = Arc::default();
        let queued = answers.clone();
        let versions = vec![
            (ApiKey::ApiVersions, 0, 3),
            (ApiKey::Fetch, 4, fetch_max),
            (ApiKey::OffsetForLeaderEpoch, 2, 4),
        ];
        let broker = ScriptedBroker::start_on(net, addr, versions, move |req| {
            match req.api_key {
                ApiKey::ApiVersions => return req.respond(&req.api_versions()),
                ApiKey::Fetch => {
                    let _ = tx.send(Seen::Fetch(req.decode(), req.version, Instant::now()));
                }
                ApiKey::OffsetForLeaderEpoch => {
                    let _ = tx.send(Seen::Epochs(req.decode(), req.version));
                }
                other => panic!("unexpected {other:?}"),
            }
            if let Some(answer) = lock(&queued).pop_front() {
                return answer(req);
            }
            match req.api_key {
                ApiKey::Fetch => {
                    std::thread::sleep(Duration::from_millis(5));
                    respond_fetch(req, |_, p| data(p))
                }
                _ => respond_epochs(req, |_, p| {
                    EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(p.leader_epoch)
                        .with_end_offset(i64::MAX)
                }),
            }
        })
        .await;
        Leader {
            broker,
            seen,
            answers,
        }
    }

    fn addr(&self) -> String {
        self.broker.addr.clone()
    }

    /// Queues the answer to the next request that has none queued yet.
    fn answer(&self, answer: impl FnOnce(&Received) -> Bytes + Send + 'static) {
        lock(&self.answers).push_back(Box::new(answer));
    }

    async fn next(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("a request in time")
            .expect("leader running")
    }

    async fn fetch(&mut self) -> (FetchRequest, i16) {
        let (request, version, _) = self.fetch_at().await;
        (request, version)
    }

    /// The next request, a Fetch, and when the leader received it.
    async fn fetch_at(&mut self) -> (FetchRequest, i16, Instant) {
        match self.next().await {
            Seen::Fetch(r, v, at) => (r, v, at),
            Seen::Epochs(r, _) => panic!("expected a Fetch, got {r:?}"),
        }
    }

    async fn epochs(&mut self) -> (OffsetForLeaderEpochRequest, i16) {
        match self.next().await {
            Seen::Epochs(r, v) => (r, v),
            Seen::Fetch(r, ..) => panic!("expected OffsetForLeaderEpoch, got {r:?}"),
        }
    }
}

/// A Fetch response with `part(topic, requested partition)` for every requested partition.
fn respond_fetch(
    req: &Received,
    part: impl FnMut(&str, &FetchPartition) -> PartitionData,
) -> Bytes {
    respond_fetch_as(req, None, part)
}

/// [`respond_fetch`], naming every topic by `topic_id` when given (else by the requested id).
fn respond_fetch_as(
    req: &Received,
    topic_id: Option<uuid::Uuid>,
    mut part: impl FnMut(&str, &FetchPartition) -> PartitionData,
) -> Bytes {
    let request: FetchRequest = req.decode();
    let responses = request
        .topics
        .iter()
        .map(|t| {
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_topic_id(topic_id.unwrap_or(t.topic_id))
                .with_partitions(t.partitions.iter().map(|p| part(&t.topic.0, p)).collect())
        })
        .collect();
    req.respond(&FetchResponse::default().with_responses(responses))
}

fn data(p: &FetchPartition) -> PartitionData {
    PartitionData::default()
        .with_partition_index(p.partition)
        .with_high_watermark(0)
        .with_log_start_offset(0)
        .with_records(None)
}

fn respond_epochs(
    req: &Received,
    mut part: impl FnMut(&str, &OffsetForLeaderPartition) -> EpochEndOffset,
) -> Bytes {
    let request: OffsetForLeaderEpochRequest = req.decode();
    let topics = request
        .topics
        .iter()
        .map(|t| {
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic.clone())
                .with_partitions(t.partitions.iter().map(|p| part(&t.topic.0, p)).collect())
        })
        .collect();
    req.respond(&OffsetForLeaderEpochResponse::default().with_topics(topics))
}

fn fetchers(leader_addr: &str) -> Fetchers {
    let fetchers = Fetchers::new(LOCAL, settings());
    fetchers.set_addresses(BTreeMap::from([(LEADER, leader_addr.to_owned())]));
    fetchers
}

async fn shut_down(fetchers: &Fetchers) {
    tokio::time::timeout(WAIT, fetchers.shutdown())
        .await
        .expect("fetchers stop in time");
}

/// The only partition of a single-topic Fetch request.
fn only_partition(request: &FetchRequest) -> &FetchPartition {
    assert_eq!(request.topics.len(), 1, "{request:?}");
    assert_eq!(request.topics[0].partitions.len(), 1, "{request:?}");
    &request.topics[0].partitions[0]
}

fn fetched_partitions(request: &FetchRequest) -> BTreeSet<i32> {
    request
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.partition))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_batches_are_appended_byte_for_byte_and_the_next_fetch_starts_at_the_new_log_end() {
    let mut leader = Leader::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower(dir.path(), tp(0), 0);
    let whole = [batch(0, 0, 1), batch(1, 0, 2)].concat();
    let mut records = whole.clone();
    // The leader cut its response inside a fourth batch.
    records.extend_from_slice(&batch(3, 0, 1)[..30]);
    leader.answer(move |req| {
        respond_fetch(req, |_, part| {
            data(part)
                .with_high_watermark(2)
                .with_records(Some(Bytes::from(records.clone())))
        })
    });
    let fetchers = fetchers(&leader.addr());
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(0));

    tracing::info!("--- an empty log has no epoch to check: the first request is a Fetch from 0");
    let (first, version) = leader.fetch().await;
    assert_eq!(
        version, FETCH_VERSION_MAX,
        "capped although the leader offers v17"
    );
    assert_eq!(first.replica_id, BrokerId(LOCAL.0));
    assert_eq!(
        (first.session_id, first.session_epoch),
        (0, -1),
        "no fetch session"
    );
    assert_eq!((first.min_bytes, first.max_wait_ms), (1, 100));
    assert_eq!(first.max_bytes, 10 << 20);
    assert_eq!(first.isolation_level, 0);
    assert_eq!(
        first.topics[0].topic_id,
        uuid::Uuid::from_u128(7),
        "v13 names the topic by its id"
    );
    let part = only_partition(&first);
    assert_eq!(part.partition, 0);
    assert_eq!(part.fetch_offset, 0);
    assert_eq!(part.current_leader_epoch, 0);
    assert_eq!(part.last_fetched_epoch, -1);
    assert_eq!(part.log_start_offset, 0);
    assert_eq!(part.partition_max_bytes, 1 << 20);

    tracing::info!("--- the whole batches are stored; the next Fetch starts after them");
    let (second, _) = leader.fetch().await;
    let part = only_partition(&second);
    assert_eq!(part.fetch_offset, 3);
    assert_eq!(part.last_fetched_epoch, 0);
    assert_eq!(
        &log_bytes(&p)[..],
        &whole[..],
        "byte for byte, partial batch dropped"
    );
    assert_eq!(p.high_watermark(), Offset(2), "the leader's high watermark");
    assert!(
        p.with_log(|l| Ok(l.flushed_offset())).expect("log") >= Offset(3),
        "fsynced before the next fetch"
    );
    shut_down(&fetchers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_replicates_over_an_in_process_network() {
    // The network seam: the leader listens on an address no socket holds, and the fetcher
    // reaches it through the `MemoryNetwork` it was given.
    let net = spate_types::MemoryNetwork::new();
    let addr: std::net::SocketAddr = "10.9.0.2:9092".parse().expect("addr");
    let mut leader = Leader::start_on(&net, addr).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower(dir.path(), tp(0), 0);
    let records = [batch(0, 0, 2), batch(2, 0, 1)].concat();
    let sent = records.clone();
    leader.answer(move |req| {
        respond_fetch(req, |_, part| {
            data(part)
                .with_high_watermark(3)
                .with_records(Some(Bytes::from(sent.clone())))
        })
    });
    let fetchers = Fetchers::new(
        LOCAL,
        FetcherSettings {
            net: Arc::new(net.clone()),
            ..settings()
        },
    );
    fetchers.set_addresses(BTreeMap::from([(LEADER, addr.to_string())]));
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(0));
    let (first, _) = leader.fetch().await;
    assert_eq!(only_partition(&first).fetch_offset, 0);
    let (second, _) = leader.fetch().await;
    assert_eq!(only_partition(&second).fetch_offset, 3);
    assert_eq!(&log_bytes(&p)[..], &records[..]);
    assert_eq!(p.high_watermark(), Offset(3));
    shut_down(&fetchers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_divergent_tail_is_truncated_to_the_leaders_epoch_end_before_fetching() {
    let mut leader = Leader::start_v12().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower_with_two_epochs(dir.path());
    // The leader never saw epoch 1: its epoch 0 ended at 2.
    leader.answer(|req| {
        respond_epochs(req, |_, part| {
            EpochEndOffset::default()
                .with_partition(part.partition)
                .with_leader_epoch(0)
                .with_end_offset(2)
        })
    });
    let fetchers = fetchers(&leader.addr());
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(2));

    let (request, version) = leader.epochs().await;
    assert_eq!(version, 4);
    assert_eq!(request.replica_id, BrokerId(LOCAL.0));
    let part = &request.topics[0].partitions[0];
    assert_eq!(request.topics[0].topic.0.as_str(), "t");
    assert_eq!(part.current_leader_epoch, 2, "the epoch followed");
    assert_eq!(part.leader_epoch, 1, "the latest epoch in the local log");

    let (fetch, _) = leader.fetch().await;
    let part = only_partition(&fetch);
    assert_eq!(part.fetch_offset, 2, "epoch 1's records are gone");
    assert_eq!(part.last_fetched_epoch, 0);
    assert_eq!(part.current_leader_epoch, 2);
    assert_eq!(log_end(&p), Offset(2));
    shut_down(&fetchers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_in_an_epoch_this_log_lacks_truncates_to_its_own_epoch_end_and_asks_again() {
    let mut leader = Leader::start_v12().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower_with_two_epochs(dir.path());
    // The leader's largest epoch ≤ 1 is one this log never had (KIP-279): say it was 0
    // ending at 3. This log's epoch 0 ends at 2, so it keeps only that and asks again.
    leader.answer(|req| {
        respond_epochs(req, |_, part| {
            EpochEndOffset::default()
                .with_partition(part.partition)
                .with_leader_epoch(0)
                .with_end_offset(3)
        })
    });
    let fetchers = fetchers(&leader.addr());
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(2));
    let (first, _) = leader.epochs().await;
    assert_eq!(first.topics[0].partitions[0].leader_epoch, 1);
    let (fetch, _) = leader.fetch().await;
    assert_eq!(
        only_partition(&fetch).fetch_offset,
        2,
        "min(leader's end 3, own end of epoch 0 = 2)"
    );
    assert_eq!(log_end(&p), Offset(2));
    shut_down(&fetchers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undefined_epoch_end_truncates_to_the_high_watermark() {
    let mut leader = Leader::start_v12().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower(dir.path(), tp(0), 1);
    let records = [batch(0, 1, 1), batch(1, 1, 1), batch(2, 1, 1)].concat();
    p.append_from_leader(&records, Offset(1), 0)
        .expect("prefill");
    p.apply(state(2)).expect("epoch 2");
    assert_eq!(p.high_watermark(), Offset(1));
    leader.answer(|req| {
        respond_epochs(req, |_, part| {
            EpochEndOffset::default()
                .with_partition(part.partition)
                .with_leader_epoch(-1)
                .with_end_offset(-1)
        })
    });
    let fetchers = fetchers(&leader.addr());
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(2));
    leader.epochs().await;
    let (fetch, _) = leader.fetch().await;
    assert_eq!(only_partition(&fetch).fetch_offset, 1);
    assert_eq!(log_end(&p), Offset(1));
    shut_down(&fetchers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_epoch_errors_keep_the_partition_truncating_and_retry() {
    let mut leader = Leader::start_v12().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower_with_two_epochs(dir.path());
    leader.answer(|req| {
        respond_epochs(req, |_, part| {
            EpochEndOffset::default()
                .with_partition(part.partition)
                .with_error_code(ResponseError::FencedLeaderEpoch.code())
        })
    });
    let fetchers = fetchers(&leader.addr());
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(2));
    leader.epochs().await;
    // After a backoff it asks again (the default answer truncates nothing), then fetches.
    let (again, _) = leader.epochs().await;
    assert_eq!(again.topics[0].partitions[0].leader_epoch, 1);
    let (fetch, _) = leader.fetch().await;
    assert_eq!(only_partition(&fetch).fetch_offset, 4);
    assert_eq!(log_end(&p), Offset(4), "nothing truncated on an error");
    shut_down(&fetchers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_out_of_range_below_the_leaders_log_start_restarts_the_log_there() {
    let mut leader = Leader::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower(dir.path(), tp(0), 0);
    leader.answer(|req| {
        respond_fetch(req, |_, part| {
            data(part)
                .with_error_code(ResponseError::OffsetOutOfRange.code())
                .with_log_start_offset(10)
        })
    });
    let fetchers = fetchers(&leader.addr());
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(0));
    assert_eq!(only_partition(&leader.fetch().await.0).fetch_offset, 0);
    let (fetch, _) = leader.fetch().await;
    let part = only_partition(&fetch);
    assert_eq!(part.fetch_offset, 10);
    assert_eq!(part.log_start_offset, 10);
    let position = p.follower_position().expect("position");
    assert_eq!(
        (position.log_start, position.log_end),
        (Offset(10), Offset(10))
    );
    shut_down(&fetchers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_batch_straddling_an_empty_logs_start_restarts_the_log_at_the_batch() {
    // DeleteRecords can put the leader's log start inside a batch: the follower restarted at
    // 5 gets the whole batch 3..=6.
    let mut leader = Leader::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower(dir.path(), tp(0), 0);
    leader.answer(|req| {
        respond_fetch(req, |_, part| {
            data(part)
                .with_error_code(ResponseError::OffsetOutOfRange.code())
                .with_log_start_offset(5)
        })
    });
    let straddling = batch(3, 0, 4);
    let sent = straddling.clone();
    leader.answer(move |req| {
        respond_fetch(req, |_, part| {
            data(part)
                .with_log_start_offset(5)
                .with_records(Some(Bytes::from(sent.clone())))
        })
    });
    let fetchers = fetchers(&leader.addr());
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(0));
    leader.fetch().await;
    assert_eq!(only_partition(&leader.fetch().await.0).fetch_offset, 5);
    assert_eq!(only_partition(&leader.fetch().await.0).fetch_offset, 7);
    assert_eq!(&log_bytes(&p)[..], &straddling[..]);
    shut_down(&fetchers).await;
}

/// From a leader that takes Fetch v13 a follower truncates on the Fetch response (Kafka's
/// truncation on fetch): after a new epoch it fetches at once, with the epoch of its last
/// batch, and never sends OffsetForLeaderEpoch, which names topics only by name (a leader
/// still holding a deleted topic of the same name would answer for that one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverging_epoch_in_a_fetch_response_truncates_and_fetching_goes_on() {
    let mut leader = Leader::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower_with_two_epochs(dir.path());
    // The leader says epoch 1 ended at 3 there.
    leader.answer(|req| {
        respond_fetch(req, |_, part| {
            let mut d = data(part);
            d.diverging_epoch.epoch = 1;
            d.diverging_epoch.end_offset = 3;
            d
        })
    });
    let fetchers = fetchers(&leader.addr());
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(2));
    let (first, version) = leader.fetch().await;
    assert_eq!(version, 13);
    assert_eq!(
        (
            only_partition(&first).fetch_offset,
            only_partition(&first).last_fetched_epoch,
            only_partition(&first).current_leader_epoch
        ),
        (4, 1, 2),
        "a Fetch first, no OffsetForLeaderEpoch"
    );
    let (second, _) = leader.fetch().await;
    assert_eq!(
        (
            only_partition(&second).fetch_offset,
            only_partition(&second).last_fetched_epoch
        ),
        (3, 1),
        "truncated and still fetching, no OffsetForLeaderEpoch in between"
    );
    assert_eq!(log_end(&p), Offset(3));
    shut_down(&fetchers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_do_not_follow_the_log_send_the_partition_back_to_truncating() {
    let mut leader = Leader::start_v12().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower_with_two_epochs(dir.path());
    let bytes = p.with_log(|l| Ok(l.size_bytes())).expect("size");
    // The default OffsetForLeaderEpoch answer truncates nothing; then the leader sends a
    // batch at offset 2 for a fetch at 4.
    leader.answer(|req| {
        respond_epochs(req, |_, part| {
            EpochEndOffset::default()
                .with_partition(part.partition)
                .with_leader_epoch(1)
                .with_end_offset(4)
        })
    });
    leader.answer(|req| {
        respond_fetch(req, |_, part| {
            data(part).with_records(Some(Bytes::from(batch(2, 1, 1))))
        })
    });
    let fetchers = fetchers(&leader.addr());
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(2));
    leader.epochs().await;
    assert_eq!(only_partition(&leader.fetch().await.0).fetch_offset, 4);
    let (again, _) = leader.epochs().await;
    assert_eq!(again.topics[0].partitions[0].leader_epoch, 1);
    assert_eq!(log_end(&p), Offset(4));
    assert_eq!(
        p.with_log(|l| Ok(l.size_bytes())).expect("size"),
        bytes,
        "nothing written"
    );
    shut_down(&fetchers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_and_storage_errors_in_a_fetch_delay_the_partition_which_keeps_fetching() {
    for error in [
        ResponseError::NotLeaderOrFollower,
        ResponseError::FencedLeaderEpoch,
        ResponseError::UnknownLeaderEpoch,
        ResponseError::UnknownTopicOrPartition,
        // The leader's replica is of another topic of the same name.
        ResponseError::UnknownTopicId,
        ResponseError::KafkaStorageError,
    ] {
        let mut leader = Leader::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = follower(dir.path(), tp(0), 0);
        leader.answer(move |req| {
            respond_fetch(req, |_, part| data(part).with_error_code(error.code()))
        });
        let fetchers = fetchers(&leader.addr());
        fetchers.follow(p.clone(), LEADER, LeaderEpoch(0));
        let (_, _, first) = leader.fetch_at().await;
        let (next, _, second) = leader.fetch_at().await;
        assert_eq!(only_partition(&next).fetch_offset, 0, "{error:?}");
        assert!(
            second - first >= Duration::from_millis(settings().backoff_ms),
            "{error:?}: the partition waits a backoff period"
        );
        shut_down(&fetchers).await;
    }
}

/// A leader holding another topic of the same name (deleted and created again, the leader not
/// caught up yet) must not have its records copied in: they are fetched by topic id, and a
/// response for another id is not applied (as a follower once copied a deleted topic's records
/// into its re-created namesake; tests/e2e/test_cluster_netns.py shows it on a real cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_answered_for_another_topic_id_are_not_appended() {
    let mut leader = Leader::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower(dir.path(), tp(0), 0);
    let other = batch(0, 0, 3);
    leader.answer(move |req| {
        respond_fetch_as(req, Some(uuid::Uuid::from_u128(8)), |_, part| {
            data(part)
                .with_high_watermark(3)
                .with_records(Some(Bytes::from(other.clone())))
        })
    });
    let fetchers = fetchers(&leader.addr());
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(0));
    let (first, version) = leader.fetch().await;
    assert_eq!(version, 13);
    assert_eq!(first.topics[0].topic_id, uuid::Uuid::from_u128(7));
    let (next, _) = leader.fetch().await;
    assert_eq!(
        only_partition(&next).fetch_offset,
        0,
        "the other topic's records were not appended"
    );
    assert_eq!(log_end(&p), Offset(0));
    shut_down(&fetchers).await;
}

/// A leader without topic ids in Fetch (before v13) is asked by topic name, and its answer is
/// matched by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_offering_fetch_v12_is_asked_by_topic_name() {
    let mut leader = Leader::start_v12().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower(dir.path(), tp(0), 0);
    let records = batch(0, 0, 2);
    let answer = records.clone();
    leader.answer(move |req| {
        respond_fetch(req, |_, part| {
            data(part)
                .with_high_watermark(2)
                .with_records(Some(Bytes::from(answer.clone())))
        })
    });
    let fetchers = fetchers(&leader.addr());
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(0));
    let (first, version) = leader.fetch().await;
    assert_eq!(version, 12);
    assert_eq!(first.topics[0].topic.0.as_str(), "t");
    let (next, _) = leader.fetch().await;
    assert_eq!(
        only_partition(&next).fetch_offset,
        2,
        "appended, matched by name"
    );
    assert_eq!(log_bytes(&p), records);
    shut_down(&fetchers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfollowed_partitions_leave_the_requests_and_a_task_without_partitions_ends() {
    let mut leader = Leader::start().await;
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let p0 = follower(dirs[0].path(), tp(0), 0);
    let p1 = follower(dirs[1].path(), tp(1), 0);
    let fetchers = fetchers(&leader.addr());
    fetchers.follow(p0.clone(), LEADER, LeaderEpoch(0));
    fetchers.follow(p1.clone(), LEADER, LeaderEpoch(0));
    assert_eq!(fetchers.leaders(), vec![LEADER], "one task per leader");
    while fetched_partitions(&leader.fetch().await.0) != BTreeSet::from([0, 1]) {}

    tracing::info!("--- unfollow t-0: once a request without it is seen, it never comes back");
    fetchers.unfollow(&tp(0));
    while fetched_partitions(&leader.fetch().await.0).contains(&0) {}
    for _ in 0..3 {
        assert_eq!(
            fetched_partitions(&leader.fetch().await.0),
            BTreeSet::from([1])
        );
    }

    tracing::info!("--- unfollow t-1: the task has nothing left and ends");
    fetchers.unfollow(&tp(1));
    assert!(fetchers.leaders().is_empty());

    tracing::info!("--- following again starts a new task");
    fetchers.follow(p1.clone(), LEADER, LeaderEpoch(0));
    assert_eq!(fetchers.leaders(), vec![LEADER]);
    loop {
        let partitions = fetched_partitions(&leader.fetch().await.0);
        if partitions == BTreeSet::from([1]) {
            break;
        }
        assert!(!partitions.contains(&0), "t-0 is not followed any more");
    }
    shut_down(&fetchers).await;
    assert!(fetchers.leaders().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_is_idempotent_a_new_epoch_truncates_again_and_a_new_leader_moves_the_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower(dir.path(), tp(0), 0);
    // No addresses: the task backs off and the partition stays as `follow` left it.
    let fetchers = Fetchers::new(LOCAL, settings());
    let followed = |leader: NodeId| {
        let reg = lock(&fetchers.registry);
        let state = lock(&reg.tasks[&leader].shared.state);
        let f = &state.partitions[&tp(0)];
        (f.generation, f.leader_epoch, f.phase)
    };
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(0));
    let first = followed(LEADER);
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(0));
    assert_eq!(
        followed(LEADER),
        first,
        "same leader and epoch: nothing changes"
    );

    p.apply(state(1)).expect("epoch 1");
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(1));
    let second = followed(LEADER);
    assert!(second.0 > first.0, "a new generation");
    assert_eq!((second.1, second.2), (LeaderEpoch(1), Phase::Truncating));

    let other = NodeId(3);
    fetchers.follow(p.clone(), other, LeaderEpoch(2));
    assert_eq!(
        fetchers.leaders(),
        vec![other],
        "the old leader's task had nothing left"
    );
    assert_eq!(followed(other).1, LeaderEpoch(2));
    shut_down(&fetchers).await;
}

/// Accepts connections, drops the first `drops` of them at once, and relays the rest to
/// `target`; reports when each was accepted.
async fn flaky_proxy(target: String, drops: usize) -> (String, mpsc::UnboundedReceiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = tx.send(Instant::now());
            accepted += 1;
            if accepted <= drops {
                drop(stream);
                continue;
            }
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut upstream) = TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_reset_connections_are_retried_after_a_backoff() {
    let mut leader = Leader::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower(dir.path(), tp(0), 0);

    tracing::info!("--- nothing listens at the leader's address: connecting is retried");
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    let fetchers = Fetchers::new(LOCAL, settings());
    let mut failures = fetchers.connection_failures();
    fetchers.set_addresses(BTreeMap::from([(LEADER, dead)]));
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(0));
    tokio::time::timeout(WAIT, failures.wait_for(|n| *n >= 2))
        .await
        .expect("a second attempt in time")
        .expect("fetchers alive");

    tracing::info!("--- the leader moves behind a proxy that resets the first two connections");
    let (proxy, mut accepted) = flaky_proxy(leader.addr(), 2).await;
    fetchers.set_addresses(BTreeMap::from([(LEADER, proxy)]));
    let (fetch, _) = leader.fetch().await;
    assert_eq!(only_partition(&fetch).fetch_offset, 0);
    let mut times = Vec::new();
    while let Ok(at) = accepted.try_recv() {
        times.push(at);
    }
    assert!(
        times.len() >= 3,
        "two resets, then the relayed connection: {times:?}"
    );
    let backoff = Duration::from_millis(settings().backoff_ms);
    assert!(times[1] - times[0] >= backoff, "{times:?}");
    assert!(times[2] - times[1] >= backoff, "{times:?}");
    assert!(*failures.borrow() >= 4);
    shut_down(&fetchers).await;
}

#[test]
fn truncation_follows_kafkas_rules() {
    let t = |offset: i64, complete: bool| Truncation {
        offset: Offset(offset),
        complete,
    };
    let end = Offset(10);
    let hw = Offset(4);
    // UNDEFINED: the high watermark.
    assert_eq!(truncation_target(end, hw, -1, -1, None), t(4, true));
    assert_eq!(
        truncation_target(Offset(3), hw, -1, -1, None),
        t(3, true),
        "never past the log end"
    );
    // No epoch in the answer (an old leader): its end offset.
    assert_eq!(truncation_target(end, hw, -1, 7, None), t(7, true));
    // Same epoch: the smaller of both ends.
    let ours = Some((LeaderEpoch(3), Offset(8)));
    assert_eq!(truncation_target(end, hw, 3, 6, ours), t(6, true));
    assert_eq!(truncation_target(end, hw, 3, 9, ours), t(8, true));
    assert_eq!(
        truncation_target(end, hw, 3, 20, Some((LeaderEpoch(3), end))),
        t(10, true)
    );
    // An epoch this log lacks: cut to our own end of the epoch below and ask again.
    assert_eq!(
        truncation_target(end, hw, 3, 9, Some((LeaderEpoch(2), Offset(5)))),
        t(5, false)
    );
    // ... unless that cuts nothing.
    assert_eq!(
        truncation_target(end, hw, 3, 9, Some((LeaderEpoch(2), end))),
        t(9, true)
    );
    // No epoch ≤ the leader's here: the leader's end.
    assert_eq!(truncation_target(end, hw, 3, 6, None), t(6, true));
}

#[test]
fn partial_trailing_batches_are_cut_off() {
    let one = batch(0, 0, 1);
    let two = batch(1, 0, 2);
    let both = [one.clone(), two.clone()].concat();
    assert_eq!(whole_batches_len(&both), both.len());
    assert_eq!(whole_batches_len(&both[..both.len() - 1]), one.len());
    assert_eq!(
        whole_batches_len(&both[..one.len() + 11]),
        one.len(),
        "a partial header"
    );
    assert_eq!(whole_batches_len(&[]), 0);
    let mut negative = both.clone();
    negative[one.len() + 8..one.len() + 12].copy_from_slice(&(-1i32).to_be_bytes());
    assert_eq!(
        whole_batches_len(&negative),
        negative.len(),
        "left for validation to refuse"
    );
}

#[test]
fn a_batch_straddles_an_offset_inside_it() {
    let b = batch(3, 0, 4);
    assert!(!first_batch_straddles(&b, Offset(3)));
    assert!(first_batch_straddles(&b, Offset(4)));
    assert!(first_batch_straddles(&b, Offset(6)));
    assert!(!first_batch_straddles(&b, Offset(7)));
    assert!(!first_batch_straddles(&b[..20], Offset(4)));
}

#[test]
fn default_settings_are_kafkas_except_the_shorter_backoff() {
    let s = FetcherSettings::default();
    assert_eq!(s.max_wait_ms, 500);
    assert_eq!(s.partition_max_bytes, 1 << 20);
    assert_eq!(s.response_max_bytes, 10 << 20);
    assert_eq!(s.request_timeout_ms, 30_000);
    assert_eq!(s.backoff_ms, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_log_start_offset_becomes_the_followers() {
    let mut leader = Leader::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower(dir.path(), tp(0), 0);
    let records = [batch(0, 0, 2), batch(2, 0, 2), batch(4, 0, 2)].concat();
    // First the records; then (an empty response) DeleteRecords on the leader moved its log
    // start to 3, then past this log's end, which waits for OFFSET_OUT_OF_RANGE instead.
    leader.answer(move |req| {
        respond_fetch(req, |_, part| {
            data(part)
                .with_high_watermark(6)
                .with_records(Some(Bytes::from(records.clone())))
        })
    });
    for log_start in [3, 3, 9, 9] {
        leader.answer(move |req| {
            respond_fetch(req, |_, part| {
                data(part)
                    .with_high_watermark(6)
                    .with_log_start_offset(log_start)
            })
        });
    }
    let fetchers = fetchers(&leader.addr());
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(0));
    leader.fetch().await;
    leader.fetch().await;
    let (third, _) = leader.fetch().await;
    assert_eq!(
        only_partition(&third).log_start_offset,
        3,
        "the follower reports the leader's log start as its own"
    );
    assert_eq!(p.log_start_offset().expect("log"), Offset(3));
    leader.fetch().await;
    assert_eq!(
        p.log_start_offset().expect("log"),
        Offset(3),
        "a leader log start past the local log end is not taken in"
    );
    assert_eq!(log_end(&p), Offset(6));
    shut_down(&fetchers).await;
}

/// The `*.log` segment files in `dir`.
fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter(|e| {
            e.as_ref()
                .expect("entry")
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_read_the_time_from_the_fetchers_clock() {
    // A time the system clock does not reach while this runs (the year 2096): a fetcher that
    // read the system clock would never see the active segment reach its `segment.ms`.
    const START_MS: i64 = 4_000_000_000_000;
    const SEGMENT_MS: i64 = 60_000;
    let clock = Arc::new(spate_types::ManualClock::new(START_MS));
    let mut leader = Leader::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Partition::open(
        Arc::new(spate_types::OsDisk),
        dir.path(),
        tp(0),
        uuid::Uuid::from_u128(7),
        LogConfig {
            segment_ms: SEGMENT_MS,
            ..LogConfig::default()
        },
        ReplicaSettings {
            local: LOCAL,
            replica_lag_time_max_ms: 10_000,
            min_insync_replicas: 1,
            fsync_required: true,
        },
        FlushPolicy::default(),
        crate::StorageHealth::default(),
        Arc::new(spate_types::SystemClock),
        START_MS,
    )
    .expect("open");
    p.apply(state(0)).expect("follower");
    let first = batch(0, 0, 1);
    leader.answer(move |req| {
        respond_fetch(req, |_, part| {
            data(part)
                .with_high_watermark(1)
                .with_records(Some(Bytes::from(first.clone())))
        })
    });
    let fetchers = Fetchers::new(
        LOCAL,
        FetcherSettings {
            clock: clock.clone(),
            ..settings()
        },
    );
    fetchers.set_addresses(BTreeMap::from([(LEADER, leader.addr())]));
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(0));

    tracing::info!("--- the first batch goes into the segment opened at the clock's start");
    leader.fetch().await;
    let (second, _) = leader.fetch().await;
    assert_eq!(only_partition(&second).fetch_offset, 1);
    assert_eq!(segment_files(dir.path()), 1);

    tracing::info!(
        "--- `segment.ms` passes on the fetcher's clock: the next batch rolls a segment"
    );
    clock.advance(Duration::from_millis(SEGMENT_MS as u64));
    let next = batch(1, 0, 1);
    leader.answer(move |req| {
        respond_fetch(req, |_, part| {
            data(part)
                .with_high_watermark(2)
                .with_records(Some(Bytes::from(next.clone())))
        })
    });
    for _ in 0..1_000 {
        let (request, _) = leader.fetch().await;
        if only_partition(&request).fetch_offset == 2 {
            break;
        }
    }
    assert_eq!(log_end(&p), Offset(2));
    assert_eq!(
        segment_files(dir.path()),
        2,
        "rolled at offset 1 by segment.ms on the injected clock"
    );
    shut_down(&fetchers).await;
}

/// A follower that led in epoch 3 without writing anything has epoch 3 start at its log end
/// (assigned when it became leader). The new leader (epoch 4) never had epoch 3: it reports
/// epoch 1 ending where the follower's log ends. No record is to go, but epoch 3 must, or
/// every Fetch would carry it and the leader would report the same divergence forever, the
/// partition never catching up (simulator seed 1378: acks=all writes failed until the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_led_without_writing_is_dropped_when_the_new_leader_never_had_it() {
    let mut leader = Leader::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = follower(dir.path(), tp(0), 1);
    p.append_from_leader(&[batch(0, 1, 2), batch(2, 1, 2)].concat(), Offset(0), 0)
        .expect("prefill");
    p.apply(LeaderAndIsr {
        leader: Some(LOCAL),
        ..state(3)
    })
    .expect("leader in epoch 3");
    p.apply(state(4)).expect("follower in epoch 4");
    assert_eq!(
        p.follower_position().expect("position").last_epoch,
        Some(LeaderEpoch(3))
    );
    leader.answer(|req| {
        respond_fetch(req, |_, part| {
            let mut d = data(part);
            d.diverging_epoch.epoch = 1;
            d.diverging_epoch.end_offset = 4;
            d
        })
    });
    let fetchers = fetchers(&leader.addr());
    fetchers.follow(p.clone(), LEADER, LeaderEpoch(4));
    let (first, _) = leader.fetch().await;
    assert_eq!(
        (
            only_partition(&first).fetch_offset,
            only_partition(&first).last_fetched_epoch
        ),
        (4, 3)
    );
    let (second, _) = leader.fetch().await;
    assert_eq!(
        (
            only_partition(&second).fetch_offset,
            only_partition(&second).last_fetched_epoch
        ),
        (4, 1),
        "epoch 3 is gone, no record with it"
    );
    assert_eq!(log_end(&p), Offset(4));
    shut_down(&fetchers).await;
}
