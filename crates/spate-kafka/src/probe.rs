//! The Kafka front end's metrics. Every metric name the front end exports is in this file;
//! call sites use the verbs below.
//!
//! Labels: per-request metrics carry `api`, the Kafka name of the request's API
//! (`api="JoinGroup"`). The `node` label is reserved: the `/metrics` endpoint adds
//! `node="<node.id>"` to every sample, so no metric sets it itself.

use kafka_protocol::messages::ApiKey;
use std::time::Duration;

pub(crate) fn connection_opened() {
    metrics::gauge!("spate_kafka_connections").increment(1.0);
    metrics::counter!("spate_kafka_connections_accepted_total").increment(1);
}

pub(crate) fn connection_closed() {
    metrics::gauge!("spate_kafka_connections").decrement(1.0);
}

/// A connection was closed because of what the client sent.
pub(crate) fn bad_request() {
    metrics::counter!("spate_kafka_bad_requests_total").increment(1);
}

pub(crate) fn request_received(api: ApiKey) {
    metrics::counter!("spate_kafka_requests_total", "api" => api_name(api)).increment(1);
}

/// From the frame being read to the response being ready (fsync and long poll included).
pub(crate) fn request_completed(api: ApiKey, elapsed: Duration) {
    metrics::histogram!("spate_kafka_request_duration_seconds", "api" => api_name(api))
        .record(elapsed.as_secs_f64());
}

pub(crate) fn produced(bytes: usize) {
    metrics::counter!("spate_kafka_produce_bytes_total").increment(bytes as u64);
}

pub(crate) fn fetched(bytes: usize) {
    metrics::counter!("spate_kafka_fetch_bytes_total").increment(bytes as u64);
}

/// Who sent a parked Fetch (Kafka's `fetcherType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fetcher {
    Consumer,
    Follower,
}

/// A request parked until something happens (Kafka's purgatory), counted in its gauge for as
/// long as this lives: an `acks=all` Produce waiting for the in-sync replicas
/// (`spate_kafka_delayed_produces`), a Fetch long-polling for data
/// (`spate_kafka_delayed_fetches{fetcher}`). Taken once the request's waits are in place, so a
/// change after the gauge moved wakes it; dropped with the reply or with the connection.
#[derive(Debug)]
#[must_use = "the request counts as delayed only while this lives"]
pub(crate) struct Delayed(metrics::Gauge);

impl Drop for Delayed {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn delayed(gauge: metrics::Gauge) -> Delayed {
    gauge.increment(1.0);
    Delayed(gauge)
}

pub(crate) fn delayed_produce() -> Delayed {
    delayed(metrics::gauge!("spate_kafka_delayed_produces"))
}

pub(crate) fn delayed_fetch(fetcher: Fetcher) -> Delayed {
    let label = match fetcher {
        Fetcher::Consumer => "consumer",
        Fetcher::Follower => "follower",
    };
    delayed(metrics::gauge!("spate_kafka_delayed_fetches", "fetcher" => label))
}

/// The `api` label: the Kafka name of every API the broker implements (the list
/// [`crate::apis::SUPPORTED`] advertises in ApiVersions). Only implemented APIs reach the probe
/// (anything else is answered with an error first), so "unknown" never shows in practice; a
/// unit test fails when an API is added to `SUPPORTED` without a name here.
fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::DescribeQuorum => "DescribeQuorum",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::OffsetDelete => "OffsetDelete",
        ApiKey::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        ApiKey::DescribeProducers => "DescribeProducers",
        ApiKey::AddPartitionsToTxn => "AddPartitionsToTxn",
        ApiKey::AddOffsetsToTxn => "AddOffsetsToTxn",
        ApiKey::EndTxn => "EndTxn",
        ApiKey::WriteTxnMarkers => "WriteTxnMarkers",
        ApiKey::TxnOffsetCommit => "TxnOffsetCommit",
        ApiKey::DescribeTransactions => "DescribeTransactions",
        ApiKey::ListTransactions => "ListTransactions",
        _ => UNKNOWN_API,
    }
}

/// The `api` label of an API the broker does not implement.
const UNKNOWN_API: &str = "unknown";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apis::SUPPORTED;
    use std::collections::BTreeMap;

    #[test]
    fn every_supported_api_has_its_own_kafka_name() {
        let mut seen: BTreeMap<&str, ApiKey> = BTreeMap::new();
        for (key, _) in SUPPORTED {
            let name = api_name(*key);
            assert_ne!(
                name, UNKNOWN_API,
                "{key:?} is supported but has no api label"
            );
            // kafka-protocol's variant names are Kafka's API names.
            assert_eq!(name, format!("{key:?}"), "{key:?} is labelled {name:?}");
            if let Some(other) = seen.insert(name, *key) {
                panic!("{key:?} and {other:?} share the api label {name:?}");
            }
        }
        assert_eq!(seen.len(), SUPPORTED.len());
    }

    #[test]
    fn unsupported_apis_are_unknown() {
        for key in ApiKey::iter() {
            if crate::apis::supported_versions(key).is_none() {
                assert_eq!(api_name(key), UNKNOWN_API, "{key:?} is not supported");
            }
        }
    }
}
