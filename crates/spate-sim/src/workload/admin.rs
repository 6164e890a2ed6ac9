//! Topic changes under faults: partitions added to the workload's topic, and a second topic
//! ([`SCRATCH`]) deleted and re-created under the same name.
//!
//! The scratch topic (one partition, three replicas) takes acks=all writes `s1-<n>` until it is
//! deleted, then, once it exists again, `s2-<n>` until the producers stop. At the end its
//! final log must hold every acknowledged `s2-` write at its offset (invariant 1 for the new
//! topic) and no `s1-` value at all: a re-created topic never revives the deleted one's data,
//! whichever nodes were down while it was deleted. The replicas' copies are checked the same
//! way off their disks (`replicas.rs`).

use super::{
    batch, create_topic, drain_partition, node_addr, now_ms, produce_once, topic_name, Attempt,
    Client, Plan, NONE, REQUEST_TIMEOUT_MS, RETRY_BACKOFF,
};
use crate::history::History;
use crate::Rng;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::{CreatePartitionsRequest, DeleteTopicsRequest};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

pub const SCRATCH: &str = "sim-scratch";
/// The values written before the deletion start with this.
pub const DELETED_PREFIX: &str = "s1-";
const INVALID_PARTITIONS: i16 = 37;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// The last DeleteTopics version that names topics by name only.
const DELETE_TOPICS_VERSION_MAX: i16 = 5;

/// When the scratch topic is deleted and re-created.
#[derive(Clone, Debug)]
pub struct Scratch {
    pub delete_at: Duration,
    /// After the deletion is acknowledged.
    pub recreate_after: Duration,
}

impl Scratch {
    /// A deletion somewhere in `faults` (start, end), re-created 0-3 s later.
    pub fn plan(rng: &mut Rng, faults: (Duration, Duration)) -> Scratch {
        let span = faults.1.saturating_sub(faults.0).as_millis() as u64;
        Scratch {
            delete_at: faults.0 + rng.millis(0, span),
            recreate_after: rng.millis(0, 3_000),
        }
    }
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// At `at`, grows the workload's topic to `count` partitions (CreatePartitions, retried until
/// acknowledged, or refused because an earlier attempt whose answer was lost did it), then
/// tells the producers and the consumer.
pub(super) async fn grow(
    mut client: Client,
    at: Duration,
    count: i32,
    partitions: Rc<Cell<i32>>,
    history: Rc<RefCell<History>>,
) {
    tokio::time::sleep(at.saturating_sub(now())).await;
    let mut node = 0;
    let mut last_failure = None;
    loop {
        node = node % client.nodes + 1;
        let addr = node_addr(node);
        let request = CreatePartitionsRequest::default()
            .with_timeout_ms(5_000)
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(topic_name(client.topic))
                .with_count(count)
                .with_assignments(None)]);
        match client
            .call(&addr, &request, i16::MAX, REQUEST_TIMEOUT_MS * 2)
            .await
        {
            Ok(r) => match r.results.first().map(|t| t.error_code) {
                Some(NONE) => break,
                Some(INVALID_PARTITIONS) if metadata_count(&mut client).await == Some(count) => {
                    break
                }
                code => trace_once(
                    &history,
                    &mut last_failure,
                    format!("adding partitions failed: {addr}: error {code:?}"),
                ),
            },
            Err(e) => {
                trace_once(
                    &history,
                    &mut last_failure,
                    format!("adding partitions failed: {addr}: {e}"),
                );
                client.forget(&addr);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    history.borrow_mut().event(format!(
        "topic {} grown to {count} partitions",
        client.topic
    ));
    history.borrow_mut().set_partitions(count);
    partitions.set(count);
}

/// Traces `why` unless it is the last failure traced: a long outage stays one line.
fn trace_once(history: &RefCell<History>, last: &mut Option<String>, why: String) {
    if last.as_ref() != Some(&why) {
        history.borrow_mut().event(why.clone());
        *last = Some(why);
    }
}

/// How many partitions Metadata says the client's topic has.
async fn metadata_count(client: &mut Client) -> Option<i32> {
    client.refresh().await.ok()?;
    i32::try_from(client.leaders.len()).ok()
}

/// The scratch topic's whole life: created, written, deleted, re-created, written, drained and
/// checked.
pub(super) async fn scratch(s: Scratch, plan: Rc<Plan>, history: Rc<RefCell<History>>) {
    let mut client = Client::new("sim-scratch".into(), plan.nodes).on(SCRATCH);
    create_topic(&mut client, 1, plan.replication_factor, &history).await;
    let deleted = write_until(&mut client, 1, s.delete_at).await;
    delete_topic(&mut client, &history).await;
    tokio::time::sleep(s.recreate_after).await;
    create_topic(&mut client, 1, plan.replication_factor, &history).await;
    let acked = write_until(&mut client, 2, plan.produce_until).await;
    let (log, high_watermark) = drain_partition(&mut client, 0).await;
    let mut h = history.borrow_mut();
    h.event(format!(
        "drained {SCRATCH}: {} records, high watermark {high_watermark} ({} acknowledged before the deletion, {} after)",
        log.len(),
        deleted.len(),
        acked.len()
    ));
    for (offset, value) in &log {
        if value.starts_with(DELETED_PREFIX) {
            h.violation(format!(
                "{SCRATCH} re-created holds {value} at offset {offset}, written before its deletion"
            ));
        }
    }
    for (value, offset) in &acked {
        let found = log.iter().find(|(o, _)| o == offset).map(|(_, v)| v);
        if found != Some(value) {
            h.violation(format!(
                "invariant 1: {value} acknowledged (acks=all) at {SCRATCH} offset {offset}, which holds {found:?}"
            ));
        }
    }
    h.scratch_drained(log, high_watermark);
}

/// Writes `s<generation>-<n>` with acks=all until `until`; returns what was acknowledged, with
/// its offset.
async fn write_until(client: &mut Client, generation: u32, until: Duration) -> Vec<(String, i64)> {
    let mut acked = Vec::new();
    let mut n = 0u64;
    while now() < until {
        let value = format!("s{generation}-{n}");
        loop {
            match produce_once(client, 0, -1, batch(&value, None, false, now_ms()), None).await {
                Attempt::Acked(offset) => {
                    acked.push((value, offset));
                    break;
                }
                Attempt::Retry(_) | Attempt::Refused(..) => {
                    if now() >= until {
                        return acked;
                    }
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
            }
        }
        n += 1;
    }
    acked
}

/// Deletes the client's topic, retrying until acknowledged, or until the topic is unknown (an
/// earlier attempt whose answer was lost deleted it).
async fn delete_topic(client: &mut Client, history: &Rc<RefCell<History>>) {
    let mut node = 0;
    let mut last_failure = None;
    loop {
        node = node % client.nodes + 1;
        let addr = node_addr(node);
        let request = DeleteTopicsRequest::default()
            .with_timeout_ms(5_000)
            .with_topic_names(vec![topic_name(client.topic)]);
        match client
            .call(
                &addr,
                &request,
                DELETE_TOPICS_VERSION_MAX,
                REQUEST_TIMEOUT_MS * 2,
            )
            .await
        {
            Ok(r) => match r.responses.first().map(|t| t.error_code) {
                Some(NONE | UNKNOWN_TOPIC_OR_PARTITION) => break,
                code => trace_once(
                    history,
                    &mut last_failure,
                    format!("deleting {} failed: {addr}: error {code:?}", client.topic),
                ),
            },
            Err(e) => {
                trace_once(
                    history,
                    &mut last_failure,
                    format!("deleting {} failed: {addr}: {e}", client.topic),
                );
                client.forget(&addr);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    history
        .borrow_mut()
        .event(format!("topic {} deleted", client.topic));
    client.leaders.clear();
}
