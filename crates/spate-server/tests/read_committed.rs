//! Transactions as consumers and tools see them over the wire, on a node started in-process:
//! Fetch and ListOffsets in both isolation levels around an open and an aborted transaction,
//! and DescribeProducers (the transactional batch and the marker written through the
//! partition's replica directly, so that test depends on the read paths only); bad
//! transactional requests; the verification of a request's partitions; and transaction
//! version 2 end to end (no Kafka client here speaks it: librdkafka, kafka-python and kafkajs
//! use version 1).

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use spate_log::{BatchHeader, TxnMarker};
use spate_replica::{Partition, Role};
use spate_server::{Node, ServerConfig};
use spate_types::{ProducerEpoch, ProducerId as Pid, TopicPartition};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::Client;

const TOPIC: &str = "txns";
const PID: i64 = 1_000;
const READ_UNCOMMITTED: i8 = 0;
const READ_COMMITTED: i8 = 1;

fn topic_name() -> TopicName {
    TopicName(StrBytes::from_static_str(TOPIC))
}

/// One batch of `values` stamped `timestamp_ms`; transactional of [`PID`] from `sequence` if
/// given.
fn batch(values: &[&str], txn_sequence: Option<i32>, timestamp_ms: i64) -> Vec<u8> {
    txn_batch(values, txn_sequence.map(|s| (PID, 0, s)), timestamp_ms)
}

/// One batch of `values` stamped `timestamp_ms`; transactional of the producer (id, epoch,
/// first sequence) if given.
fn txn_batch(values: &[&str], producer: Option<(i64, i16, i32)>, timestamp_ms: i64) -> Vec<u8> {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: producer.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: producer.map_or(-1, |(id, _, _)| id),
            producer_epoch: producer.map_or(-1, |(_, e, _)| e),
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: producer.map_or(-1, |(_, _, s)| s + i as i32),
            timestamp: timestamp_ms,
            key: None,
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
    buf.to_vec()
}

/// This node's leader replica of the topic, once the reconciler made it one.
async fn leader(node: &Node) -> Arc<Partition> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tp = TopicPartition::new(TOPIC, 0);
        if let Some(p) = node
            .broker
            .replicas
            .get(&tp)
            .filter(|p| p.role() == Role::Leader)
        {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn append(p: &Partition, mut records: Vec<u8>, now_ms: i64) {
    let receipt = p.append(&mut records, true, now_ms).expect("append");
    p.wait_acks_all(receipt.last_offset)
        .await
        .expect("acks=all");
}

/// The partition answer of a fetch from 0 (topics by name: v4 to v12).
async fn fetch(client: &mut Client, version: i16, isolation: i8) -> fetch_response::PartitionData {
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_isolation_level(isolation)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name())
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let response: FetchResponse = client.call(ApiKey::Fetch, version, &request).await;
    let data = response.responses[0].partitions[0].clone();
    assert_eq!(data.error_code, 0, "v{version}");
    data
}

/// The `(base, last)` offsets of the batches of a fetch answer.
fn batches(data: &fetch_response::PartitionData) -> Vec<(i64, i64)> {
    let bytes = data.records.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(Ok(h)) = bytes.get(pos..).map(BatchHeader::parse) {
        pos += h.total_bytes();
        out.push((h.base_offset.0, h.last_offset().0));
    }
    out
}

fn aborted(data: &fetch_response::PartitionData) -> Option<Vec<(i64, i64)>> {
    data.aborted_transactions.as_ref().map(|a| {
        a.iter()
            .map(|t| (t.producer_id.0, t.first_offset))
            .collect()
    })
}

async fn latest(client: &mut Client, version: i16, isolation: i8) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(isolation)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name())
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_current_leader_epoch(-1)
                .with_timestamp(-1)])]);
    let response: ListOffsetsResponse = client.call(ApiKey::ListOffsets, version, &request).await;
    let p = &response.topics[0].partitions[0];
    assert_eq!(p.error_code, 0, "v{version}");
    p.offset
}

/// DescribeProducers of partitions 0 (the topic's one) and 7 (none).
async fn describe(client: &mut Client) -> Vec<describe_producers_response::PartitionResponse> {
    let request = DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
        .with_name(topic_name())
        .with_partition_indexes(vec![0, 7])]);
    let r: DescribeProducersResponse = client.call(ApiKey::DescribeProducers, 0, &request).await;
    r.topics[0].partitions.clone()
}

/// A node on free loopback ports with its data in `dir`, a client connected to it, and
/// [`TOPIC`] created by a Metadata request.
async fn start_with_topic(dir: &std::path::Path) -> (Node, Client) {
    start_with_partitions(dir, 1).await
}

/// A node whose auto-created topic [`TOPIC`] has `partitions` partitions.
async fn start_with_partitions(dir: &std::path::Path, partitions: u32) -> (Node, Client) {
    let partitions = partitions.to_string();
    let overrides: Vec<(String, String)> = [
        ("data.dir", dir.to_str().expect("utf-8 path")),
        ("kafka.listen", "127.0.0.1:0"),
        ("http.listen", "127.0.0.1:0"),
        ("num.partitions", partitions.as_str()),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let config = ServerConfig::load(None, std::iter::empty(), &overrides).expect("config");
    let node = Node::start(config, None).await.expect("node starts");
    let mut client = Client::connect(&node).await;
    let metadata: MetadataResponse = client
        .call(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default()
                .with_allow_auto_topic_creation(true)
                .with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(topic_name()))
                ])),
        )
        .await;
    assert_eq!(metadata.topics[0].error_code, 0);
    (node, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_consumers_and_tools_see_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, mut client) = start_with_topic(dir.path()).await;
    let p = leader(&node).await;
    let now_ms = node.broker.now_ms();

    tracing::info!("--- a plain record at 0, then a transaction opens at 1");
    append(&p, batch(&["a"], None, now_ms), now_ms).await;
    append(&p, batch(&["t1", "t2"], Some(0), now_ms), now_ms).await;
    for version in [4, 12] {
        let all = fetch(&mut client, version, READ_UNCOMMITTED).await;
        assert_eq!(batches(&all), [(0, 0), (1, 2)], "v{version}");
        assert_eq!((all.high_watermark, all.last_stable_offset), (3, 1));
        assert_eq!(aborted(&all), None, "v{version}");
        let committed = fetch(&mut client, version, READ_COMMITTED).await;
        assert_eq!(batches(&committed), [(0, 0)], "v{version}");
        assert_eq!(
            (committed.high_watermark, committed.last_stable_offset),
            (3, 1)
        );
        assert_eq!(aborted(&committed), Some(vec![]), "v{version}");
    }
    for version in [2, 9] {
        assert_eq!(latest(&mut client, version, READ_UNCOMMITTED).await, 3);
        assert_eq!(latest(&mut client, version, READ_COMMITTED).await, 1);
    }

    let partitions = describe(&mut client).await;
    assert_eq!(partitions[0].error_code, 0);
    assert_eq!(
        partitions[1].error_code,
        kafka_protocol::ResponseError::UnknownTopicOrPartition.code()
    );
    let producer = &partitions[0].active_producers[..];
    assert_eq!(producer.len(), 1);
    assert_eq!(
        (
            producer[0].producer_id.0,
            producer[0].producer_epoch,
            producer[0].last_sequence,
            producer[0].last_timestamp,
            producer[0].coordinator_epoch,
            producer[0].current_txn_start_offset,
        ),
        (PID, 0, 1, now_ms, -1, 1)
    );

    tracing::info!("--- ABORT at 3: read_committed gets everything, the abort listed");
    let marker = TxnMarker {
        producer_id: Pid(PID),
        producer_epoch: ProducerEpoch(0),
        coordinator_epoch: 4,
        commit: false,
    };
    let receipt = p.append_marker(marker, now_ms).expect("marker");
    p.wait_acks_all(receipt.last_offset)
        .await
        .expect("acks=all");
    let committed = fetch(&mut client, 12, READ_COMMITTED).await;
    assert_eq!(batches(&committed), [(0, 0), (1, 2), (3, 3)]);
    assert_eq!(committed.last_stable_offset, 4);
    assert_eq!(aborted(&committed), Some(vec![(PID, 1)]));
    assert_eq!(latest(&mut client, 9, READ_COMMITTED).await, 4);
    let partitions = describe(&mut client).await;
    let producer = &partitions[0].active_producers[0];
    assert_eq!(
        (
            producer.coordinator_epoch,
            producer.current_txn_start_offset
        ),
        (4, -1)
    );
    node.shutdown().await.expect("clean shutdown");
}

/// InitProducerId for `id` until the transaction coordinator has loaded (the first request
/// creates `__transaction_state`): the answer.
async fn init_producer_id(client: &mut Client, id: &str) -> InitProducerIdResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r: InitProducerIdResponse = client
            .call(
                ApiKey::InitProducerId,
                4,
                &InitProducerIdRequest::default()
                    .with_transactional_id(Some(TransactionalId(StrBytes::from_string(
                        id.to_owned(),
                    ))))
                    .with_transaction_timeout_ms(60_000)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            )
            .await;
        let retriable = [
            kafka_protocol::ResponseError::CoordinatorLoadInProgress.code(),
            kafka_protocol::ResponseError::NotCoordinator.code(),
            kafka_protocol::ResponseError::CoordinatorNotAvailable.code(),
        ];
        if !retriable.contains(&r.error_code) || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transactional_requests_get_kafka_errors_and_lose_nothing() {
    use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    use kafka_protocol::messages::write_txn_markers_request::{
        WritableTxnMarker, WritableTxnMarkerTopic,
    };
    use kafka_protocol::ResponseError as E;
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, mut client) = start_with_topic(dir.path()).await;
    let p = leader(&node).await;
    let now_ms = node.broker.now_ms();
    append(&p, batch(&["before"], None, now_ms), now_ms).await;

    tracing::info!("--- a transactional id over the length limit");
    let first = init_producer_id(&mut client, "valid").await;
    assert_eq!(first.error_code, 0, "{first:?}");
    let long = init_producer_id(
        &mut client,
        &"x".repeat(spate_coordinator::txn::TRANSACTIONAL_ID_BYTES_MAX + 1),
    )
    .await;
    assert_eq!(long.error_code, E::InvalidRequest.code());

    tracing::info!("--- AddPartitionsToTxn naming an unknown topic: nothing is added");
    let (pid, epoch) = (first.producer_id, first.producer_epoch);
    let add = |topics: Vec<(&'static str, i32)>| {
        AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_static_str("valid")))
            .with_v3_and_below_producer_id(pid)
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(
                topics
                    .into_iter()
                    .map(|(t, n)| {
                        AddPartitionsToTxnTopic::default()
                            .with_name(TopicName(StrBytes::from_static_str(t)))
                            .with_partitions(vec![n])
                    })
                    .collect(),
            )
    };
    let r: AddPartitionsToTxnResponse = client
        .call(
            ApiKey::AddPartitionsToTxn,
            3,
            &add(vec![("no-such-topic", 0), (TOPIC, 0), (TOPIC, 7)]),
        )
        .await;
    let mut codes: Vec<(String, i32, i16)> = r
        .results_by_topic_v3_and_below
        .iter()
        .flat_map(|t| {
            t.results_by_partition.iter().map(move |p| {
                (
                    t.name.to_string(),
                    p.partition_index,
                    p.partition_error_code,
                )
            })
        })
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![
            ("no-such-topic".into(), 0, E::UnknownTopicOrPartition.code()),
            (TOPIC.into(), 0, E::OperationNotAttempted.code()),
            (TOPIC.into(), 7, E::UnknownTopicOrPartition.code()),
        ]
    );
    let described = node.broker.image().topics.contains_key("no-such-topic");
    assert!(!described, "AddPartitionsToTxn creates no topic");

    tracing::info!("--- EndTxn with a stale epoch: the producer was fenced by a new one");
    let again = init_producer_id(&mut client, "valid").await;
    assert_eq!((again.error_code, again.producer_epoch), (0, epoch + 1));
    for (version, want) in [(1, E::InvalidProducerEpoch), (2, E::ProducerFenced)] {
        let r = end_txn(&mut client, version, "valid", (pid.0, epoch), true).await;
        assert_eq!(r.error_code, want.code(), "EndTxn v{version}");
    }

    tracing::info!(
        "--- WriteTxnMarkers for a producer the partition never saw, and an unknown topic"
    );
    let marker = |topic: &'static str| {
        WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
            .with_producer_id(ProducerId(424_242))
            .with_producer_epoch(0)
            .with_transaction_result(false)
            .with_coordinator_epoch(0)
            .with_topics(vec![WritableTxnMarkerTopic::default()
                .with_name(TopicName(StrBytes::from_static_str(topic)))
                .with_partition_indexes(vec![0])])])
    };
    let r: WriteTxnMarkersResponse = client
        .call(ApiKey::WriteTxnMarkers, 1, &marker(TOPIC))
        .await;
    let code = r.markers[0].topics[0].partitions[0].error_code;
    assert_eq!(
        code, 0,
        "a marker for an unknown producer is written (as in Kafka)"
    );
    let r: WriteTxnMarkersResponse = client
        .call(ApiKey::WriteTxnMarkers, 1, &marker("no-such-topic"))
        .await;
    assert_eq!(
        r.markers[0].topics[0].partitions[0].error_code,
        E::UnknownTopicOrPartition.code()
    );

    tracing::info!("--- nothing was lost, nothing left open");
    append(&p, batch(&["after"], None, now_ms), now_ms).await;
    let hw = p.high_watermark().0;
    for isolation in [READ_UNCOMMITTED, READ_COMMITTED] {
        assert_eq!(
            latest(&mut client, 9, isolation).await,
            hw,
            "isolation {isolation}"
        );
    }
    let committed = fetch(&mut client, 12, READ_COMMITTED).await;
    assert_eq!(
        aborted(&committed),
        Some(vec![]),
        "the stray abort marker spans nothing"
    );
    assert_eq!(
        batches(&committed),
        vec![(0, 0), (1, 1), (2, 2)],
        "before, the marker and after, at their offsets"
    );
    node.shutdown().await.expect("shutdown");
}

/// A Produce of `records` to partition 0 as transactional producer `id`: the partition's error.
async fn produce_txn(client: &mut Client, version: i16, id: &str, records: Vec<u8>) -> i16 {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let request = ProduceRequest::default()
        .with_transactional_id(Some(TransactionalId(StrBytes::from_string(id.to_owned()))))
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(records)))])]);
    let r: ProduceResponse = client.call(ApiKey::Produce, version, &request).await;
    r.responses[0].partition_responses[0].error_code
}

async fn end_txn(
    client: &mut Client,
    version: i16,
    id: &str,
    (pid, epoch): (i64, i16),
    commit: bool,
) -> EndTxnResponse {
    client
        .call(
            ApiKey::EndTxn,
            version,
            &EndTxnRequest::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(id.to_owned())))
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_committed(commit),
        )
        .await
}

/// A read_committed fetch once no transaction holds the partition back (the markers are
/// written after EndTxn is answered).
async fn stable(client: &mut Client) -> fetch_response::PartitionData {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let data = fetch(client, 12, READ_COMMITTED).await;
        if data.last_stable_offset == data.high_watermark {
            return data;
        }
        assert!(
            Instant::now() < deadline,
            "the markers were not written: {data:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Transaction version 2 (KIP-890 part 2) over the wire, as a Kafka 4 client uses it: no
/// AddPartitionsToTxn (the leader adds the partition at the first Produce v12), and every
/// EndTxn v5 bumps the epoch, so a late write of an ended transaction is fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_version_2_adds_partitions_at_produce_and_fences_late_writes() {
    use kafka_protocol::ResponseError as E;
    const ID: &str = "tv2";
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, mut client) = start_with_topic(dir.path()).await;
    let now_ms = node.broker.now_ms();
    let init = init_producer_id(&mut client, ID).await;
    assert_eq!(init.error_code, 0, "{init:?}");
    let (pid, e0) = (init.producer_id.0, init.producer_epoch);

    tracing::info!("--- a version 1 producer (Produce v11) must add the partition first");
    let refused = produce_txn(
        &mut client,
        11,
        ID,
        txn_batch(&["v1"], Some((pid, e0, 0)), now_ms),
    )
    .await;
    assert_eq!(
        refused,
        E::InvalidTxnState.code(),
        "written without AddPartitionsToTxn"
    );

    tracing::info!("--- Produce v12 adds it; EndTxn v5 commits and bumps the epoch");
    let first = txn_batch(&["c1", "c2"], Some((pid, e0, 0)), now_ms);
    assert_eq!(produce_txn(&mut client, 12, ID, first).await, 0);
    let open = fetch(&mut client, 12, READ_COMMITTED).await;
    assert_eq!(
        (open.high_watermark, open.last_stable_offset),
        (2, 0),
        "open until the marker"
    );
    let ended = end_txn(&mut client, 5, ID, (pid, e0), true).await;
    assert_eq!(ended.error_code, 0, "{ended:?}");
    let e1 = e0 + 1;
    assert_eq!((ended.producer_id.0, ended.producer_epoch), (pid, e1));
    let committed = stable(&mut client).await;
    assert_eq!(
        batches(&committed),
        [(0, 1), (2, 2)],
        "the records, then the COMMIT marker"
    );
    assert_eq!(aborted(&committed), Some(vec![]));

    tracing::info!("--- a late write of the ended transaction (its epoch) is fenced");
    let late = txn_batch(&["late"], Some((pid, e0, 2)), now_ms);
    assert_eq!(
        produce_txn(&mut client, 12, ID, late).await,
        E::InvalidProducerEpoch.code()
    );
    let retried = end_txn(&mut client, 5, ID, (pid, e0), true).await;
    assert_eq!(
        (retried.error_code, retried.producer_epoch),
        (0, e1),
        "a retried EndTxn (its answer lost) gets the same answer"
    );

    tracing::info!("--- the next transaction at the bumped epoch, aborted");
    let next = txn_batch(&["a1"], Some((pid, e1, 0)), now_ms);
    assert_eq!(produce_txn(&mut client, 12, ID, next).await, 0);
    let ended = end_txn(&mut client, 5, ID, (pid, e1), false).await;
    assert_eq!((ended.error_code, ended.producer_epoch), (0, e1 + 1));
    let after = stable(&mut client).await;
    assert_eq!(batches(&after), [(0, 1), (2, 2), (3, 3), (4, 4)]);
    assert_eq!(
        aborted(&after),
        Some(vec![(pid, 3)]),
        "read_committed drops the abort"
    );
    assert_eq!(latest(&mut client, 9, READ_COMMITTED).await, 5);
    node.shutdown().await.expect("clean shutdown");
}

/// Sets `transaction.partition.verification.enable` cluster-wide (IncrementalAlterConfigs, as
/// `kafka-configs --entity-default --entity-type brokers` does) and waits until the node's
/// metadata has it.
async fn set_verification(client: &mut Client, node: &Node, value: &str) {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    const NAME: &str = "transaction.partition.verification.enable";
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(4) // BROKER; "" names the cluster-wide default
            .with_resource_name(StrBytes::from_static_str(""))
            .with_configs(vec![AlterableConfig::default()
                .with_name(StrBytes::from_static_str(NAME))
                .with_config_operation(0) // SET
                .with_value(Some(StrBytes::from_string(value.to_owned())))]),
    ]);
    let r: IncrementalAlterConfigsResponse = client
        .call(ApiKey::IncrementalAlterConfigs, 1, &request)
        .await;
    assert_eq!(r.responses[0].error_code, 0, "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while node
        .broker
        .image()
        .resource_configs
        .broker(None)
        .get(NAME)
        .map(String::as_str)
        != Some(value)
    {
        assert!(
            Instant::now() < deadline,
            "{NAME}={value} never reached the metadata"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `transaction.partition.verification.enable=false` skips KIP-890's question, as in Kafka: a
/// version 1 producer's write to a partition it never added goes in (and, the coordinator
/// knowing nothing of it, holds read_committed consumers back: the hanging transaction the
/// defence exists for). Set back to true, the same write from another producer is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_off_lets_an_unadded_partition_in_and_on_again_refuses_it() {
    use kafka_protocol::ResponseError as E;
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, mut client) = start_with_topic(dir.path()).await;
    let now_ms = node.broker.now_ms();

    set_verification(&mut client, &node, "false").await;
    let init = init_producer_id(&mut client, "unchecked").await;
    assert_eq!(init.error_code, 0, "{init:?}");
    let batch = txn_batch(
        &["u"],
        Some((init.producer_id.0, init.producer_epoch, 0)),
        now_ms,
    );
    assert_eq!(
        produce_txn(&mut client, 11, "unchecked", batch).await,
        0,
        "written without AddPartitionsToTxn, unchecked"
    );
    let open = fetch(&mut client, 12, READ_COMMITTED).await;
    assert_eq!(
        (open.high_watermark, open.last_stable_offset),
        (1, 0),
        "in the log, its transaction open"
    );

    set_verification(&mut client, &node, "true").await;
    let init = init_producer_id(&mut client, "checked").await;
    assert_eq!(init.error_code, 0, "{init:?}");
    let batch = txn_batch(
        &["c"],
        Some((init.producer_id.0, init.producer_epoch, 0)),
        now_ms,
    );
    assert_eq!(
        produce_txn(&mut client, 11, "checked", batch).await,
        E::InvalidTxnState.code(),
        "verified again: refused without AddPartitionsToTxn"
    );
    let after = fetch(&mut client, 12, READ_UNCOMMITTED).await;
    assert_eq!(
        after.high_watermark, 1,
        "nothing of the refused write was stored"
    );
    node.shutdown().await.expect("shutdown");
}

/// One Produce request carrying a transaction's first write to three partitions, two of them
/// added with AddPartitionsToTxn. The partitions are verified at once (how long that takes is
/// not asserted here); each still gets its own answer, in request order: the added ones are
/// written, the other is refused with INVALID_TXN_STATE and holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partitions_of_one_produce_request_are_verified_each_on_its_own() {
    use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::ResponseError as E;
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, mut client) = start_with_partitions(dir.path(), 3).await;
    let now_ms = node.broker.now_ms();
    let init = init_producer_id(&mut client, "multi").await;
    assert_eq!(init.error_code, 0, "{init:?}");
    let (pid, epoch) = (init.producer_id, init.producer_epoch);

    let add = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_static_str("multi")))
        .with_v3_and_below_producer_id(pid)
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
            .with_name(topic_name())
            .with_partitions(vec![0, 1])]);
    let r: AddPartitionsToTxnResponse = client.call(ApiKey::AddPartitionsToTxn, 3, &add).await;
    let added: Vec<i16> = r.results_by_topic_v3_and_below[0]
        .results_by_partition
        .iter()
        .map(|p| p.partition_error_code)
        .collect();
    assert_eq!(added, [0, 0], "{r:?}");

    let data = |partition: i32| {
        PartitionProduceData::default()
            .with_index(partition)
            .with_records(Some(Bytes::from(txn_batch(
                &["v"],
                Some((pid.0, epoch, 0)),
                now_ms,
            ))))
    };
    let request = ProduceRequest::default()
        .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("multi"))))
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name())
            .with_partition_data(vec![data(0), data(2), data(1)])]);
    let r: ProduceResponse = client.call(ApiKey::Produce, 11, &request).await;
    let codes: Vec<(i32, i16, i64)> = r.responses[0]
        .partition_responses
        .iter()
        .map(|p| (p.index, p.error_code, p.base_offset))
        .collect();
    assert_eq!(
        codes,
        [(0, 0, 0), (2, E::InvalidTxnState.code(), -1), (1, 0, 0)],
        "each partition answered in request order, the unadded one refused"
    );
    let refused = node
        .broker
        .replicas
        .get(&TopicPartition::new(TOPIC, 2))
        .expect("partition 2 is hosted");
    let end = refused.log_end_offset().expect("log end");
    assert_eq!(end.0, 0, "nothing of the refused write was stored");
    node.shutdown().await.expect("shutdown");
}
