//! The workload's Kafka client: connections to the brokers over the simulated network, the
//! leaders and leader epochs Metadata named, one-record batches, one produce attempt, and a
//! fetch at either isolation level.

use super::{NONE, REQUEST_TIMEOUT_MS, TOPIC};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    FetchRequest, MetadataRequest, ProduceRequest, TopicName, TransactionalId,
};
use kafka_protocol::protocol::{Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use spate_client::{ClientConfig, Connection, Deadline};
use std::collections::BTreeMap;

/// Highest versions used: the last that name topics (not ids) in Fetch, and in Produce the last
/// before transaction version 2 (a transaction version 2 producer sends 12, the last that names
/// topics).
pub(super) const PRODUCE_VERSION_MAX: i16 = 9;
pub(super) const PRODUCE_TV2_VERSION: i16 = 12;
pub(super) const FETCH_VERSION_MAX: i16 = 12;

/// Connections to the cluster's brokers and what the last Metadata said.
pub(super) struct Client {
    pub(super) name: String,
    /// The topic whose leaders Metadata asks for.
    pub(super) topic: &'static str,
    pub(super) nodes: usize,
    pub(super) connections: BTreeMap<String, Connection>,
    /// Partition → leader address.
    pub(super) leaders: BTreeMap<i32, String>,
    /// Partition → the highest leader epoch any Metadata answer named (KIP-320, as librdkafka
    /// and the Java client keep it): older answers are ignored, and fetches carry it, so a
    /// deposed leader that has not heard of its successor refuses them.
    pub(super) leader_epochs: BTreeMap<i32, i32>,
    /// The topic's id as Metadata last named it: a new id (the topic was deleted and created
    /// again) starts its leader epochs afresh, as clients do.
    pub(super) topic_id: Option<u128>,
    /// The highest Produce version this client sends (12 for transaction version 2).
    pub(super) produce_version_max: i16,
    pub(super) next_bootstrap: usize,
}

pub(super) fn node_addr(node: usize) -> String {
    format!("{}:{}", crate::host_name(node), crate::KAFKA_PORT)
}

pub(super) fn topic_name(topic: &'static str) -> TopicName {
    TopicName(StrBytes::from_static_str(topic))
}

impl Client {
    pub(super) fn new(name: String, nodes: usize) -> Client {
        Client {
            name,
            topic: TOPIC,
            nodes,
            connections: BTreeMap::new(),
            leaders: BTreeMap::new(),
            leader_epochs: BTreeMap::new(),
            topic_id: None,
            produce_version_max: PRODUCE_VERSION_MAX,
            next_bootstrap: 0,
        }
    }

    /// The same client, for `topic`.
    pub(super) fn on(mut self, topic: &'static str) -> Client {
        self.topic = topic;
        self
    }

    pub(super) async fn connection(&mut self, addr: &str) -> Result<&mut Connection, String> {
        if !self
            .connections
            .get(addr)
            .is_some_and(Connection::is_usable)
        {
            let config = ClientConfig::new(self.name.clone());
            let conn = Connection::connect_via(
                &crate::seams::SimNetwork,
                addr,
                &config,
                Deadline::after_ms(REQUEST_TIMEOUT_MS),
            )
            .await
            .map_err(|e| e.to_string())?;
            self.connections.insert(addr.to_owned(), conn);
        }
        self.connections
            .get_mut(addr)
            .ok_or_else(|| "connection vanished".to_owned())
    }

    /// Sends `request` to `addr` at the highest version both sides support, up to
    /// `version_max`, within the request timeout.
    pub(super) async fn call<R: Request>(
        &mut self,
        addr: &str,
        request: &R,
        version_max: i16,
        timeout_ms: u64,
    ) -> Result<R::Response, String> {
        let conn = self.connection(addr).await?;
        let version = conn
            .version_at_most::<R>(version_max)
            .map_err(|e| e.to_string())?;
        conn.send_at(request, version, Deadline::after_ms(timeout_ms))
            .await
            .map_err(|e| e.to_string())
    }

    /// Forgets a broker after a failure: the next call reconnects and re-reads leaders.
    pub(super) fn forget(&mut self, addr: &str) {
        self.connections.remove(addr);
        self.leaders.clear();
    }

    /// Asks the brokers in turn for the topic's leaders.
    pub(super) async fn refresh(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..self.nodes {
            self.next_bootstrap = self.next_bootstrap % self.nodes + 1;
            let addr = node_addr(self.next_bootstrap);
            let request = MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(self.topic))),
            ]));
            let response = self
                .call(&addr, &request, i16::MAX, REQUEST_TIMEOUT_MS)
                .await;
            let response = match response {
                Ok(r) => r,
                Err(e) => {
                    self.connections.remove(&addr);
                    last = e;
                    continue;
                }
            };
            let brokers: BTreeMap<i32, String> = response
                .brokers
                .iter()
                .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
                .collect();
            let Some(topic) = response.topics.first().filter(|t| t.error_code == NONE) else {
                last = format!("{addr}: topic not known yet");
                continue;
            };
            if self.topic_id != Some(topic.topic_id.as_u128()) {
                self.topic_id = Some(topic.topic_id.as_u128());
                self.leader_epochs.clear();
            }
            let mut leaders = BTreeMap::new();
            for p in topic.partitions.iter().filter(|p| p.error_code == NONE) {
                let known = self.leader_epochs.get(&p.partition_index).copied();
                if known.is_some_and(|epoch| p.leader_epoch < epoch) {
                    continue;
                }
                if let Some(leader) = brokers.get(&p.leader_id.0) {
                    leaders.insert(p.partition_index, leader.clone());
                    self.leader_epochs.insert(p.partition_index, p.leader_epoch);
                }
            }
            if leaders.is_empty() {
                last = format!("{addr}: no leader newer than known");
                continue;
            }
            self.leaders = leaders;
            return Ok(());
        }
        Err(last)
    }

    pub(super) async fn leader(&mut self, partition: i32) -> Result<String, String> {
        if !self.leaders.contains_key(&partition) {
            self.refresh().await?;
        }
        self.leaders
            .get(&partition)
            .cloned()
            .ok_or_else(|| format!("no leader for partition {partition}"))
    }
}

/// One record holding `value`, as a batch of its own; `producer` is (id, epoch, sequence) for
/// an idempotent or transactional producer.
pub(super) fn batch(
    value: &str,
    producer: Option<(i64, i16, i32)>,
    transactional: bool,
    timestamp_ms: i64,
) -> Bytes {
    let (producer_id, producer_epoch, sequence) = producer.unwrap_or((-1, -1, -1));
    let record = Record {
        transactional,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence,
        timestamp: timestamp_ms,
        key: None,
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    // A single small record always encodes.
    let _ = RecordBatchEncoder::encode(
        &mut buf,
        std::slice::from_ref(&record),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    );
    buf.freeze()
}

/// The wall-clock time (ms since the Unix epoch) in the simulation.
pub(super) fn now_ms() -> i64 {
    crate::seams::EPOCH_MS
        + i64::try_from(turmoil::sim_elapsed().unwrap_or_default().as_millis()).unwrap_or(0)
}

/// The outcome of one produce attempt.
pub(super) enum Attempt {
    Acked(i64),
    /// No answer, or no leader known: retry the same batch (sequence) later; why.
    Retry(String),
    /// The leader refused the batch with this error code (the leaders are looked up again).
    Refused(i16, String),
}

/// One produce request of `records` to `partition`'s leader; a transactional producer's names
/// its `transactional_id`.
pub(super) async fn produce_once(
    client: &mut Client,
    partition: i32,
    acks: i16,
    records: Bytes,
    transactional_id: Option<TransactionalId>,
) -> Attempt {
    let leader = match client.leader(partition).await {
        Ok(l) => l,
        Err(e) => return Attempt::Retry(e),
    };
    let request = ProduceRequest::default()
        .with_transactional_id(transactional_id)
        .with_acks(acks)
        .with_timeout_ms(i32::try_from(REQUEST_TIMEOUT_MS).unwrap_or(i32::MAX) - 500)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(client.topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])]);
    let response = client
        .call(
            &leader,
            &request,
            client.produce_version_max,
            REQUEST_TIMEOUT_MS,
        )
        .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            client.forget(&leader);
            return Attempt::Retry(format!("{leader}: {e}"));
        }
    };
    let Some(p) = response
        .responses
        .first()
        .and_then(|t| t.partition_responses.first())
    else {
        return Attempt::Retry(format!("{leader}: empty produce response"));
    };
    match p.error_code {
        NONE => Attempt::Acked(p.base_offset),
        code => {
            client.leaders.clear();
            Attempt::Refused(code, format!("{leader}: error {code}"))
        }
    }
}

/// One record as a fetch returned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub offset: i64,
    pub value: String,
    /// A transaction marker (its value is the marker's bytes).
    pub control: bool,
    pub transactional: bool,
    pub producer_id: i64,
}

/// What a leader answered to one fetch of one partition.
pub struct FetchAnswer {
    /// The records from `from` on (a batch's records below `from` are left out).
    pub records: Vec<Fetched>,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    /// (producer id, first offset) of each aborted transaction in the range (read_committed).
    pub aborted: Vec<(i64, i64)>,
    /// The node that answered.
    pub leader: String,
}

/// `isolation_level`s.
pub const READ_UNCOMMITTED: i8 = 0;
pub const READ_COMMITTED: i8 = 1;

/// Reads `partition` from its leader from `from`: the records, the high watermark and the
/// node that answered.
pub(super) async fn fetch(
    client: &mut Client,
    partition: i32,
    from: i64,
) -> Result<(Vec<(i64, String)>, i64, String), String> {
    let answer = fetch_at(client, partition, from, READ_UNCOMMITTED).await?;
    let records = answer
        .records
        .into_iter()
        .map(|r| (r.offset, r.value))
        .collect();
    Ok((records, answer.high_watermark, answer.leader))
}

/// Reads `partition` of the client's topic from its leader from `from`, at `isolation`.
pub(super) async fn fetch_at(
    client: &mut Client,
    partition: i32,
    from: i64,
    isolation: i8,
) -> Result<FetchAnswer, String> {
    let leader = client.leader(partition).await?;
    let epoch = client.leader_epochs.get(&partition).copied().unwrap_or(-1);
    let request = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(200)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_isolation_level(isolation)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(client.topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(epoch)
                .with_fetch_offset(from)
                .with_partition_max_bytes(1 << 20)])]);
    let response = client
        .call(&leader, &request, FETCH_VERSION_MAX, REQUEST_TIMEOUT_MS)
        .await;
    let response = response.inspect_err(|_| client.forget(&leader))?;
    let p = response
        .responses
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or("empty fetch response")?;
    if p.error_code != NONE {
        client.leaders.clear();
        return Err(format!("fetch error {}", p.error_code));
    }
    let mut records = Vec::new();
    if let Some(bytes) = &p.records {
        let mut buf = bytes.clone();
        while !buf.is_empty() {
            let Ok(set) = RecordBatchDecoder::decode(&mut buf) else {
                break;
            };
            for r in set.records {
                if r.offset < from {
                    continue;
                }
                records.push(Fetched {
                    offset: r.offset,
                    value: r
                        .value
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                        .unwrap_or_default(),
                    control: r.control,
                    transactional: r.transactional,
                    producer_id: r.producer_id,
                });
            }
        }
    }
    let aborted = p
        .aborted_transactions
        .iter()
        .flatten()
        .map(|a| (a.producer_id.0, a.first_offset))
        .collect();
    Ok(FetchAnswer {
        records,
        high_watermark: p.high_watermark,
        last_stable_offset: p.last_stable_offset,
        aborted,
        leader,
    })
}
