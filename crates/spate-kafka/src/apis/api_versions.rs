//! ApiVersions: advertises exactly the APIs and versions in [`super::SUPPORTED`], with one
//! deliberate exception that Apache Kafka makes too (KAFKA-18659): Produce is advertised from
//! v0 although only v3+ is implemented. librdkafka before 2.8 (Debian's kcat, for one) enables
//! gzip, snappy and lz4 only when the broker advertises Produce v2 and otherwise silently sends
//! uncompressed batches. A client that really sends Produce v0-v2 gets its connection closed,
//! as Kafka 4 does.
//!
//! From v3 the answer also names the features the broker supports and the cluster has
//! finalized (KIP-584). Spate finalizes `transaction.version` 2 (KIP-890 part 2), as a Kafka 4
//! cluster does: clients that know it bump the producer epoch at every transaction end and let
//! partition leaders add partitions to their transactions (Produce v12+, EndTxn v5+,
//! TxnOffsetCommit v5+); others keep transaction version 1 behaviour, which stays supported.

use super::{encode_with_header, Reply, RequestContext, Response, SUPPORTED};
use crate::broker::Broker;
use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 4 };

/// See the module docs: what Kafka 4 advertises for Produce, for old librdkafka's sake.
const PRODUCE_ADVERTISED_MIN: i16 = 0;

/// KIP-890's feature flag, the levels supported and the level finalized.
const TRANSACTION_VERSION: &str = "transaction.version";
const TRANSACTION_VERSION_MAX: i16 = 2;
/// The epoch of the finalized feature levels; they never change, so neither does it.
const FINALIZED_FEATURES_EPOCH: i64 = 1;

pub(crate) async fn handle(
    _broker: &Arc<Broker>,
    _ctx: &RequestContext,
    _request: ApiVersionsRequest,
) -> Reply<ApiVersionsResponse> {
    Reply::Now(response(0))
}

fn response(error_code: i16) -> ApiVersionsResponse {
    let api_keys = SUPPORTED
        .iter()
        .map(|(key, range)| {
            let min = if *key == ApiKey::Produce {
                PRODUCE_ADVERTISED_MIN
            } else {
                range.min
            };
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(min)
                .with_max_version(range.max)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(api_keys)
        .with_supported_features(vec![SupportedFeatureKey::default()
            .with_name(TRANSACTION_VERSION.into())
            .with_min_version(0)
            .with_max_version(TRANSACTION_VERSION_MAX)])
        .with_finalized_features_epoch(FINALIZED_FEATURES_EPOCH)
        .with_finalized_features(vec![FinalizedFeatureKey::default()
            .with_name(TRANSACTION_VERSION.into())
            .with_min_version_level(TRANSACTION_VERSION_MAX)
            .with_max_version_level(TRANSACTION_VERSION_MAX)])
}

/// The v0-form answer to an ApiVersions request whose version is not supported.
pub(crate) fn unsupported_version_response(correlation_id: i32) -> Response {
    let encoded = encode_with_header(
        &response(ResponseError::UnsupportedVersion.code()),
        correlation_id,
        0,
        0,
    )
    .map_err(|e| super::DispatchError::Encode {
        key: kafka_protocol::messages::ApiKey::ApiVersions,
        version: 0,
        reason: e.to_string(),
    });
    Response::Ready(encoded)
}
