//! A node started in-process, driven over TCP with requests built from kafka-protocol's
//! messages: the paths every client depends on, checked byte-exactly, without a client
//! library in between. Real clients are exercised by tests/e2e.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;
use spate_server::{Node, ServerConfig};
use spate_types::{ManualClock, Seams};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::Client;

fn config(dir: &Path, settings: &[(&str, &str)]) -> ServerConfig {
    let overrides: Vec<(String, String)> = [
        ("data.dir", dir.to_str().expect("utf-8 path")),
        ("kafka.listen", "127.0.0.1:0"),
        ("http.listen", "127.0.0.1:0"),
    ]
    .iter()
    .chain(settings)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    ServerConfig::load(None, std::iter::empty(), &overrides).expect("config")
}

async fn start(dir: &Path) -> Node {
    Node::start(config(dir, &[]), None)
        .await
        .expect("node starts")
}

/// A wall-clock time the system clock does not reach while these tests run (the year 2096):
/// a component that reads the system clock instead of the node's gives itself away.
const FUTURE_MS: i64 = 4_000_000_000_000;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// A node whose seams read the time from `clock` (the rest are the system's).
async fn start_on_clock(dir: &Path, clock: &Arc<ManualClock>, settings: &[(&str, &str)]) -> Node {
    let seams = Seams {
        clock: clock.clone(),
        ..Seams::system()
    };
    Node::start_with_seams(config(dir, settings), None, seams)
        .await
        .expect("node starts")
}

/// Bounds a polling loop: 10 s in all, a check every 20 ms.
struct Patience(Instant);

impl Patience {
    fn new() -> Patience {
        Patience(Instant::now() + Duration::from_secs(10))
    }

    /// Waits before the next check; fails the test once the time is up.
    async fn next(&self, what: &str) {
        assert!(Instant::now() < self.0, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn records(values: &[&str], producer: Option<(i64, i16, i32)>) -> Bytes {
    records_at(values, producer, 1_700_000_000_000)
}

/// One batch of `values`, the record at index `i` stamped `first_timestamp_ms + i`.
fn records_at(
    values: &[&str],
    producer: Option<(i64, i16, i32)>,
    first_timestamp_ms: i64,
) -> Bytes {
    let (producer_id, producer_epoch, base_sequence) = producer.unwrap_or((-1, -1, -1));
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: if base_sequence < 0 {
                -1
            } else {
                base_sequence + i as i32
            },
            timestamp: first_timestamp_ms + i as i64,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode records");
    buf.freeze()
}

fn produce_request(topic: &str, acks: i16, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])])
}

fn fetch_request(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
}

fn values_of(records: &Bytes) -> Vec<(i64, String)> {
    let mut buf = records.clone();
    let mut out = Vec::new();
    while !buf.is_empty() {
        let set = RecordBatchDecoder::decode(&mut buf).expect("stored batches decode");
        for r in set.records {
            out.push((
                r.offset,
                String::from_utf8(r.value.expect("value").to_vec()).expect("utf-8"),
            ));
        }
    }
    out
}

async fn create_by_metadata(client: &mut Client, topic: &str) -> MetadataResponse {
    let request = MetadataRequest::default()
        .with_allow_auto_topic_creation(true)
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_owned())),
        ))]));
    client.call(ApiKey::Metadata, 12, &request).await
}

fn partition_response(r: &ProduceResponse) -> &produce_response::PartitionProduceResponse {
    &r.responses[0].partition_responses[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_fetch_idempotence_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    let mut client = Client::connect(&node).await;

    // --- auto-create through Metadata
    let metadata = create_by_metadata(&mut client, "orders").await;
    assert_eq!(metadata.topics[0].error_code, 0);
    assert_eq!(metadata.topics[0].partitions.len(), 1);
    assert_eq!(metadata.brokers[0].port, i32::from(node.kafka_addr.port()));

    // --- idempotent producer: first batch, duplicate retry, sequence gap
    let init: InitProducerIdResponse = client
        .call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000),
        )
        .await;
    assert_eq!(init.error_code, 0);
    let pid = init.producer_id.0;
    let first = records(&["a", "b", "c"], Some((pid, 0, 0)));
    let r: ProduceResponse = client
        .call(
            ApiKey::Produce,
            9,
            &produce_request("orders", -1, first.clone()),
        )
        .await;
    assert_eq!(partition_response(&r).error_code, 0);
    assert_eq!(partition_response(&r).base_offset, 0);
    let r: ProduceResponse = client
        .call(
            ApiKey::Produce,
            9,
            &produce_request("orders", -1, first.clone()),
        )
        .await;
    assert_eq!(
        partition_response(&r).error_code,
        0,
        "a retried batch is acknowledged"
    );
    assert_eq!(
        partition_response(&r).base_offset,
        0,
        "with its original offset"
    );
    let gap = records(&["x"], Some((pid, 0, 7)));
    let r: ProduceResponse = client
        .call(ApiKey::Produce, 9, &produce_request("orders", -1, gap))
        .await;
    assert_eq!(
        partition_response(&r).error_code,
        ResponseError::OutOfOrderSequenceNumber.code()
    );

    // --- fetch reads back exactly what was acknowledged, once
    let f: FetchResponse = client
        .call(ApiKey::Fetch, 12, &fetch_request("orders", 0, 0))
        .await;
    let p = &f.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert_eq!(p.high_watermark, 3);
    let got = values_of(p.records.as_ref().expect("records"));
    assert_eq!(got, vec![(0, "a".into()), (1, "b".into()), (2, "c".into())]);

    // --- fetching from inside a batch returns the whole batch
    let f: FetchResponse = client
        .call(ApiKey::Fetch, 12, &fetch_request("orders", 1, 0))
        .await;
    assert_eq!(
        values_of(
            f.responses[0].partitions[0]
                .records
                .as_ref()
                .expect("records")
        )
        .len(),
        3
    );

    // --- a fetch waiting in long poll is answered when data arrives
    let mut waiter = Client::connect(&node).await;
    let long_poll = tokio::spawn(async move {
        let f: FetchResponse = waiter
            .call(ApiKey::Fetch, 12, &fetch_request("orders", 3, 30_000))
            .await;
        f
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r: ProduceResponse = client
        .call(
            ApiKey::Produce,
            9,
            &produce_request("orders", 1, records(&["d"], None)),
        )
        .await;
    assert_eq!(partition_response(&r).base_offset, 3);
    let f = tokio::time::timeout(Duration::from_secs(20), long_poll)
        .await
        .expect("long poll woke before its 30 s wait")
        .expect("task");
    assert_eq!(
        values_of(
            f.responses[0].partitions[0]
                .records
                .as_ref()
                .expect("records")
        ),
        vec![(3, "d".into())]
    );

    // --- out of range
    let f: FetchResponse = client
        .call(ApiKey::Fetch, 12, &fetch_request("orders", 99, 0))
        .await;
    assert_eq!(
        f.responses[0].partitions[0].error_code,
        ResponseError::OffsetOutOfRange.code()
    );

    // --- restart: data and producer state survive
    drop(client);
    node.shutdown().await.expect("clean shutdown");
    let node = start(dir.path()).await;
    let mut client = Client::connect(&node).await;
    let f: FetchResponse = client
        .call(ApiKey::Fetch, 12, &fetch_request("orders", 0, 0))
        .await;
    let got = values_of(
        f.responses[0].partitions[0]
            .records
            .as_ref()
            .expect("records"),
    );
    assert_eq!(
        got.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c", "d"]
    );
    let r: ProduceResponse = client
        .call(ApiKey::Produce, 9, &produce_request("orders", -1, first))
        .await;
    assert_eq!(
        partition_response(&r).base_offset,
        0,
        "duplicate recognised after restart"
    );
    let next = records(&["e"], Some((pid, 0, 3)));
    let r: ProduceResponse = client
        .call(ApiKey::Produce, 9, &produce_request("orders", -1, next))
        .await;
    assert_eq!(
        partition_response(&r).error_code,
        0,
        "sequence continues after restart"
    );
    assert_eq!(partition_response(&r).base_offset, 4);
    let init: InitProducerIdResponse = client
        .call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000),
        )
        .await;
    assert!(
        init.producer_id.0 > pid,
        "producer ids are never reused across restarts"
    );
    node.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_kafka_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    let mut client = Client::connect(&node).await;

    // ApiVersions v99: answered in v0 form with UNSUPPORTED_VERSION.
    client.send_raw(&[0, 18, 0, 99, 0, 0, 0, 5]).await;
    let mut response = client.read_raw().await;
    let header = ResponseHeader::decode(&mut response, 0).expect("header");
    assert_eq!(header.correlation_id, 5);
    let versions = ApiVersionsResponse::decode(&mut response, 0).expect("v0 body");
    assert_eq!(
        versions.error_code,
        ResponseError::UnsupportedVersion.code()
    );

    // The same connection still works, and advertises what is implemented.
    let versions: ApiVersionsResponse = client
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .await;
    assert_eq!(versions.error_code, 0);
    let produce = versions
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Produce as i16)
        .expect("Produce");
    // Advertised from v0 like Kafka 4 (KAFKA-18659), implemented from v3.
    assert_eq!((produce.min_version, produce.max_version), (0, 13));
    assert!(
        versions
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::JoinGroup as i16 && k.max_version == 9),
        "consumer groups are advertised"
    );
    assert!(
        versions
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::EndTxn as i16 && k.max_version == 5),
        "transactions are advertised, transaction version 2 included"
    );
    // KIP-584 features (v3+): transaction.version 2 is finalized, as on Kafka 4.
    let finalized: Vec<(String, i16)> = versions
        .finalized_features
        .iter()
        .map(|f| (f.name.to_string(), f.max_version_level))
        .collect();
    assert_eq!(finalized, vec![("transaction.version".to_owned(), 2)]);

    // Produce v2 is advertised for old librdkafka's feature detection but not implemented:
    // the connection is closed (as Kafka 4 does).
    let mut old = Client::connect(&node).await;
    old.send_raw(&[0, 0, 0, 2, 0, 0, 0, 9, 0xff, 0xff]).await;
    let mut one = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), old.stream.read(&mut one))
        .await
        .expect("closed promptly");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "Produce v2 closes the connection"
    );

    // Invalid topic name.
    let m = create_by_metadata(&mut client, "bad/name").await;
    assert_eq!(
        m.topics[0].error_code,
        ResponseError::InvalidTopicException.code()
    );

    // A corrupt batch (flipped CRC byte) is refused and nothing is written.
    create_by_metadata(&mut client, "crc").await;
    let mut bad = BytesMut::from(&records(&["v"], None)[..]);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let r: ProduceResponse = client
        .call(ApiKey::Produce, 9, &produce_request("crc", 1, bad.freeze()))
        .await;
    assert_eq!(
        partition_response(&r).error_code,
        ResponseError::CorruptMessage.code()
    );
    let f: FetchResponse = client
        .call(ApiKey::Fetch, 12, &fetch_request("crc", 0, 0))
        .await;
    assert_eq!(f.responses[0].partitions[0].high_watermark, 0);

    // Unknown API key: the connection is closed; a new one is served.
    client.send_raw(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1]).await;
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), client.stream.read(&mut buf))
        .await
        .expect("closed promptly");
    assert!(matches!(n, Ok(0) | Err(_)), "connection closed");
    // Oversized frame: refused from its length alone.
    let mut big = Client::connect(&node).await;
    big.stream
        .write_all(&(200 * 1024 * 1024i32).to_be_bytes())
        .await
        .expect("write");
    let n = tokio::time::timeout(Duration::from_secs(5), big.stream.read(&mut buf))
        .await
        .expect("closed promptly");
    assert!(matches!(n, Ok(0) | Err(_)), "connection closed");
    let mut fresh = Client::connect(&node).await;
    let versions: ApiVersionsResponse = fresh
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .await;
    assert_eq!(versions.error_code, 0);
    node.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_front_end_reads_the_nodes_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(FUTURE_MS));
    let node = start_on_clock(dir.path(), &clock, &[]).await;
    let mut client = Client::connect(&node).await;

    tracing::info!("--- a topic that refuses records more than a minute from the broker's time");
    let created: CreateTopicsResponse = client
        .call(
            ApiKey::CreateTopics,
            7,
            &CreateTopicsRequest::default()
                .with_timeout_ms(10_000)
                .with_topics(vec![create_topics_request::CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("stamped")))
                    .with_num_partitions(1)
                    .with_replication_factor(1)
                    .with_configs(vec![
                        create_topics_request::CreatableTopicConfig::default()
                            .with_name(StrBytes::from_static_str(
                                "message.timestamp.difference.max.ms",
                            ))
                            .with_value(Some(StrBytes::from_static_str("60000"))),
                    ])]),
        )
        .await;
    assert_eq!(created.topics[0].error_code, 0, "{created:?}");

    tracing::info!("--- Produce checks timestamps against the node's clock, not the system's");
    let r: ProduceResponse = client
        .call(
            ApiKey::Produce,
            9,
            &produce_request("stamped", 1, records_at(&["now"], None, FUTURE_MS)),
        )
        .await;
    assert_eq!(partition_response(&r).error_code, 0, "{r:?}");
    let r: ProduceResponse = client
        .call(
            ApiKey::Produce,
            9,
            &produce_request("stamped", 1, records_at(&["then"], None, 1_700_000_000_000)),
        )
        .await;
    assert_eq!(
        partition_response(&r).error_code,
        ResponseError::InvalidTimestamp.code(),
        "a record from the system's present is decades before the node's clock"
    );

    tracing::info!("--- DescribeQuorum reports the leader's own timestamps from the node's clock");
    let quorum: DescribeQuorumResponse = client
        .call(
            ApiKey::DescribeQuorum,
            1,
            &DescribeQuorumRequest::default().with_topics(vec![
                describe_quorum_request::TopicData::default()
                    .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
                    .with_partitions(vec![
                        describe_quorum_request::PartitionData::default().with_partition_index(0)
                    ]),
            ]),
        )
        .await;
    let leader = &quorum.topics[0].partitions[0].current_voters[0];
    assert_eq!(
        (leader.last_fetch_timestamp, leader.last_caught_up_timestamp),
        (FUTURE_MS, FUTURE_MS),
        "{quorum:?}"
    );
    node.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_expire_on_the_nodes_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(FUTURE_MS));
    let node = start_on_clock(
        dir.path(),
        &clock,
        &[
            ("offsets.topic.num.partitions", "1"),
            ("offsets.retention.minutes", "1440"),
            ("offsets.retention.check.interval.ms", "20"),
        ],
    )
    .await;
    let mut client = Client::connect(&node).await;
    create_by_metadata(&mut client, "orders").await;

    tracing::info!("--- a standalone consumer commits offset 5 (stamped with the node's clock)");
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("standalone")))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(5)
                        .with_committed_leader_epoch(-1),
                ]),
        ]);
    let patience = Patience::new();
    loop {
        let r: OffsetCommitResponse = client.call(ApiKey::OffsetCommit, 8, &commit).await;
        if r.topics[0].partitions[0].error_code == 0 {
            break;
        }
        patience
            .next("the commit is accepted once the coordinator has loaded")
            .await;
    }
    let fetch = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("standalone")))
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_partition_indexes(vec![0]),
        ]));
    let committed = |r: &OffsetFetchResponse| r.topics[0].partitions[0].committed_offset;
    let r: OffsetFetchResponse = client.call(ApiKey::OffsetFetch, 7, &fetch).await;
    assert_eq!((r.error_code, committed(&r)), (0, 5));

    tracing::info!("--- half the retention passes on the node's clock: the offset stays");
    clock.set_now_ms(FUTURE_MS + DAY_MS / 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r: OffsetFetchResponse = client.call(ApiKey::OffsetFetch, 7, &fetch).await;
    assert_eq!(committed(&r), 5);

    tracing::info!(
        "--- a day passes on the node's clock (its wall clock only): the offset expires"
    );
    clock.set_now_ms(FUTURE_MS + DAY_MS + 1);
    let patience = Patience::new();
    loop {
        let r: OffsetFetchResponse = client.call(ApiKey::OffsetFetch, 7, &fetch).await;
        if committed(&r) == -1 {
            break;
        }
        patience.next("the committed offset expires").await;
    }
    node.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_on_the_nodes_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(FUTURE_MS));
    let node = start_on_clock(
        dir.path(),
        &clock,
        &[
            // A day.
            ("log.retention.ms", "86400000"),
            ("log.retention.check.interval.ms", "20"),
        ],
    )
    .await;
    let mut client = Client::connect(&node).await;
    create_by_metadata(&mut client, "aging").await;
    let r: ProduceResponse = client
        .call(
            ApiKey::Produce,
            9,
            &produce_request("aging", -1, records_at(&["a", "b", "c"], None, FUTURE_MS)),
        )
        .await;
    assert_eq!(partition_response(&r).error_code, 0, "{r:?}");
    let log_start = |f: &FetchResponse| f.responses[0].partitions[0].log_start_offset;

    tracing::info!("--- within retention on the node's clock: nothing is deleted");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let f: FetchResponse = client
        .call(ApiKey::Fetch, 12, &fetch_request("aging", 3, 0))
        .await;
    assert_eq!(log_start(&f), 0);

    tracing::info!("--- past retention on the node's clock: the segment goes");
    clock.set_now_ms(FUTURE_MS + DAY_MS + 1_000);
    let patience = Patience::new();
    loop {
        let f: FetchResponse = client
            .call(ApiKey::Fetch, 12, &fetch_request("aging", 3, 0))
            .await;
        if log_start(&f) == 3 {
            break;
        }
        patience.next("the expired segment is deleted").await;
    }
    node.shutdown().await.expect("clean shutdown");
}

/// A request that arrives at a member's session deadline sees the member gone, as Kafka's
/// timer would have removed it at the deadline, however late the coordinator's own timer
/// fires. librdkafka's 0081_admin deletes a group exactly one session timeout after its
/// static members stopped and expects success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_request_at_a_session_deadline_sees_the_member_expired() {
    const SESSION_MS: i32 = 300_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(FUTURE_MS));
    let node = start_on_clock(
        dir.path(),
        &clock,
        &[
            ("offsets.topic.num.partitions", "1"),
            ("group.initial.rebalance.delay.ms", "0"),
        ],
    )
    .await;
    let mut client = Client::connect(&node).await;
    let group = || GroupId(StrBytes::from_static_str("expiring"));
    let instance = Some(StrBytes::from_static_str("static-1"));

    tracing::info!("--- a static member joins (retried while the coordinator loads) and syncs");
    let join = JoinGroupRequest::default()
        .with_group_id(group())
        .with_session_timeout_ms(SESSION_MS)
        .with_rebalance_timeout_ms(SESSION_MS)
        .with_group_instance_id(instance.clone())
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
        )
        .with_name(StrBytes::from_static_str("range"))
        .with_metadata(Bytes::from_static(b"m"))]);
    let patience = Patience::new();
    let joined: JoinGroupResponse = loop {
        let r: JoinGroupResponse = client.call(ApiKey::JoinGroup, 5, &join).await;
        if r.error_code == 0 {
            break r;
        }
        patience
            .next(&format!("the join succeeds (error {})", r.error_code))
            .await;
    };
    assert_eq!(joined.leader, joined.member_id);
    let sync = SyncGroupRequest::default()
        .with_group_id(group())
        .with_generation_id(joined.generation_id)
        .with_member_id(joined.member_id.clone())
        .with_group_instance_id(instance)
        .with_assignments(vec![
            sync_group_request::SyncGroupRequestAssignment::default()
                .with_member_id(joined.member_id.clone())
                .with_assignment(Bytes::from_static(b"a")),
        ]);
    let r: SyncGroupResponse = client.call(ApiKey::SyncGroup, 3, &sync).await;
    assert_eq!(r.error_code, 0);

    // The coordinator's timer now waits (in real time) far past anything this test does, so
    // only the deadline check at the request itself can expire the member.
    let delete = DeleteGroupsRequest::default().with_groups_names(vec![group()]);
    let non_empty = ResponseError::NonEmptyGroup.code();

    // Any request makes the coordinator re-arm its timer for the next deadline, capped at a
    // minute: the check before the deadline stays more than that away from it, so the timer
    // cannot fire during this test.
    tracing::info!("--- well before the deadline the member is alive");
    clock.set_now_ms(FUTURE_MS + i64::from(SESSION_MS) - 100_000);
    let r: DeleteGroupsResponse = client.call(ApiKey::DeleteGroups, 2, &delete).await;
    assert_eq!(r.results[0].error_code, non_empty);

    tracing::info!("--- at the deadline it is gone, and the empty group can be deleted");
    clock.set_now_ms(FUTURE_MS + i64::from(SESSION_MS));
    let r: DeleteGroupsResponse = client.call(ApiKey::DeleteGroups, 2, &delete).await;
    assert_eq!(r.results[0].error_code, 0, "{r:?}");
    node.shutdown().await.expect("clean shutdown");
}

/// A failed fsync halts the node (Kafka halts when its only log directory fails): the write
/// it could not make durable is not acknowledged, `Node::halted` names the failure, and after
/// a power cut and a restart on a healthy disk every acknowledged record is there and new
/// writes succeed. Before this, the partition stayed leader with a sticky fsync failure and
/// refused every `acks=all` write forever (found by the simulator, seed 2 on 3 nodes).
#[test]
fn a_failed_fsync_halts_the_node_and_a_restart_recovers_what_was_acknowledged() {
    use spate_types::disk::{DiskError, DiskFault, DiskOp};
    let disk = spate_types::MemoryDisk::default();
    let data = Path::new("/data");
    let seams = || Seams {
        disk: Arc::new(disk.clone()),
        ..Seams::system()
    };
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    };

    let first = runtime();
    first.block_on(async {
        let node = Node::start_with_seams(config(data, &[]), None, seams())
            .await
            .expect("node starts");
        let mut client = Client::connect(&node).await;
        assert_eq!(
            create_by_metadata(&mut client, "t").await.topics[0].error_code,
            0
        );
        let r: ProduceResponse = client
            .call(
                ApiKey::Produce,
                9,
                &produce_request("t", -1, records(&["kept"], None)),
            )
            .await;
        assert_eq!(
            partition_response(&r).error_code,
            0,
            "acknowledged before the fault"
        );

        disk.inject(DiskFault {
            op: DiskOp::Sync,
            under: data.join("logs"),
            error: DiskError::Io,
            times: None,
        });
        let r: ProduceResponse = client
            .call(
                ApiKey::Produce,
                9,
                &produce_request("t", -1, records(&["lost"], None)),
            )
            .await;
        assert_ne!(
            partition_response(&r).error_code,
            0,
            "a write whose fsync failed is not acknowledged"
        );
        let reason = tokio::time::timeout(Duration::from_secs(10), node.halted())
            .await
            .expect("the node halts on a failed fsync");
        assert!(
            reason.contains("fsync") && reason.contains("t-0"),
            "{reason}"
        );
        // The process exits here: nothing shuts down cleanly.
        std::mem::forget(node);
    });
    first.shutdown_background();

    // Power cut (what was not fsynced is gone), then a restart on a healthy disk.
    disk.crash();
    disk.clear_faults();
    let second = runtime();
    second.block_on(async {
        let node = Node::start_with_seams(config(data, &[]), None, seams())
            .await
            .expect("node restarts");
        let mut client = Client::connect(&node).await;
        let patience = Patience::new();
        let values = loop {
            let f: FetchResponse = client
                .call(ApiKey::Fetch, 12, &fetch_request("t", 0, 0))
                .await;
            let p = &f.responses[0].partitions[0];
            if p.error_code == 0 {
                break values_of(p.records.as_ref().expect("records"));
            }
            patience.next("the partition to come back").await;
        };
        assert_eq!(values.first(), Some(&(0, "kept".to_owned())), "{values:?}");
        let r: ProduceResponse = client
            .call(
                ApiKey::Produce,
                9,
                &produce_request("t", -1, records(&["after"], None)),
            )
            .await;
        assert_eq!(partition_response(&r).error_code, 0, "writes succeed again");
        node.shutdown().await.expect("clean shutdown");
    });
}
