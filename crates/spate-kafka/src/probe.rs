//! The Kafka front end's metrics. Every metric name the front end exports is in this file;
//! call sites use the verbs below.

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
        // Only implemented APIs reach the probe; anything else is dispatched to an error first.
        _ => "other",
    }
}
