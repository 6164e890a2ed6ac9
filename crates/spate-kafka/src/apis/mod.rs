//! One module per Kafka API. Each states `VERSIONS`, the versions it implements, and a
//! `handle` function; [`SUPPORTED`] and [`dispatch`] are generated from that list, so
//! ApiVersions advertises exactly what is implemented.

use crate::broker::Broker;
use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, VersionRange};
use std::sync::Arc;

pub(crate) mod add_offsets_to_txn;
pub(crate) mod add_partitions_to_txn;
pub(crate) mod alter_configs;
pub(crate) mod api_versions;
pub(crate) mod create_partitions;
pub(crate) mod create_topics;
pub(crate) mod delete_groups;
pub(crate) mod delete_records;
pub(crate) mod delete_topics;
pub(crate) mod describe_cluster;
pub(crate) mod describe_configs;
pub(crate) mod describe_groups;
pub(crate) mod describe_producers;
pub(crate) mod describe_quorum;
pub(crate) mod describe_transactions;
pub(crate) mod end_txn;
pub(crate) mod fetch;
pub(crate) mod find_coordinator;
pub(crate) mod heartbeat;
pub(crate) mod incremental_alter_configs;
pub(crate) mod init_producer_id;
pub(crate) mod join_group;
pub(crate) mod leave_group;
pub(crate) mod list_groups;
pub(crate) mod list_offsets;
pub(crate) mod list_transactions;
pub(crate) mod metadata;
pub(crate) mod offset_commit;
pub(crate) mod offset_delete;
pub(crate) mod offset_fetch;
pub(crate) mod offset_for_leader_epoch;
pub(crate) mod produce;
pub(crate) mod sync_group;
pub(crate) mod txn_offset_commit;
pub(crate) mod write_txn_markers;

/// The encoded response frame (length prefix included), or why the connection must close.
pub(crate) type Encoded = Result<Bytes, DispatchError>;

/// A response as the connection queues it.
pub(crate) enum Response {
    /// Built already: its bytes count against the connection's queued-response budget.
    Ready(Encoded),
    /// Built when the writer reaches it (after an fsync, at the end of a long poll), so at most
    /// one such response per connection exists at a time.
    Waiting(BoxFuture<'static, Encoded>),
}

/// What a handler's immediate part returns.
pub(crate) enum Reply<R> {
    /// The response is ready.
    Now(R),
    /// The response is ready once this completes (fsync, long poll).
    Later(BoxFuture<'static, R>),
    /// No response is sent (`acks=0`).
    Silent,
    /// Close the connection without answering (Kafka does this for a failed `acks=0` produce,
    /// so that the client notices).
    Close(String),
}

/// Everything about the request a handler may need besides its body.
#[derive(Debug)]
pub(crate) struct RequestContext {
    pub header: RequestHeader,
    /// The client's address (Kafka reports it as the group member's host).
    pub peer: Option<std::net::SocketAddr>,
}

impl RequestContext {
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DispatchError {
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("{key:?} version {version} is not supported (supported: {supported})")]
    UnsupportedVersion {
        key: ApiKey,
        version: i16,
        supported: VersionRange,
    },
    #[error("malformed {key:?} v{version} request: {reason}")]
    Malformed {
        key: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("failed to encode {key:?} v{version} response: {reason}")]
    Encode {
        key: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("{0}")]
    Closed(String),
}

macro_rules! apis {
    ($($key:ident => $module:ident ($request:ty)),* $(,)?) => {
        /// The APIs this broker implements and their version ranges.
        pub(crate) const SUPPORTED: &[(ApiKey, VersionRange)] = &[$((ApiKey::$key, $module::VERSIONS)),*];

        async fn route(
            broker: &Arc<Broker>,
            key: ApiKey,
            ctx: RequestContext,
            mut body: Bytes,
        ) -> Result<Option<Response>, DispatchError> {
            let version = ctx.version();
            let started = std::time::Instant::now();
            match key {
                $(ApiKey::$key => {
                    let request = <$request as Decodable>::decode(&mut body, version).map_err(|e| {
                        DispatchError::Malformed { key, version, reason: e.to_string() }
                    })?;
                    let reply = $module::handle(broker, &ctx, request).await;
                    Ok(finish(reply, key, ctx.header.correlation_id, version, started))
                })*
                other => Err(unsupported(other, version)),
            }
        }

        /// Decodes a request body exactly as [`route`] does, without handling it.
        fn decode_body(key: ApiKey, version: i16, mut body: Bytes) -> Result<(), DispatchError> {
            match key {
                $(ApiKey::$key => <$request as Decodable>::decode(&mut body, version)
                    .map(drop)
                    .map_err(|e| DispatchError::Malformed { key, version, reason: e.to_string() }),)*
                other => Err(unsupported(other, version)),
            }
        }
    };
}

use kafka_protocol::messages as m;

apis! {
    Produce => produce(m::ProduceRequest),
    Fetch => fetch(m::FetchRequest),
    ListOffsets => list_offsets(m::ListOffsetsRequest),
    Metadata => metadata(m::MetadataRequest),
    ApiVersions => api_versions(m::ApiVersionsRequest),
    CreateTopics => create_topics(m::CreateTopicsRequest),
    DeleteTopics => delete_topics(m::DeleteTopicsRequest),
    DeleteRecords => delete_records(m::DeleteRecordsRequest),
    InitProducerId => init_producer_id(m::InitProducerIdRequest),
    DescribeConfigs => describe_configs(m::DescribeConfigsRequest),
    AlterConfigs => alter_configs(m::AlterConfigsRequest),
    CreatePartitions => create_partitions(m::CreatePartitionsRequest),
    IncrementalAlterConfigs => incremental_alter_configs(m::IncrementalAlterConfigsRequest),
    DescribeCluster => describe_cluster(m::DescribeClusterRequest),
    DescribeQuorum => describe_quorum(m::DescribeQuorumRequest),
    FindCoordinator => find_coordinator(m::FindCoordinatorRequest),
    JoinGroup => join_group(m::JoinGroupRequest),
    SyncGroup => sync_group(m::SyncGroupRequest),
    Heartbeat => heartbeat(m::HeartbeatRequest),
    LeaveGroup => leave_group(m::LeaveGroupRequest),
    OffsetCommit => offset_commit(m::OffsetCommitRequest),
    OffsetFetch => offset_fetch(m::OffsetFetchRequest),
    ListGroups => list_groups(m::ListGroupsRequest),
    DescribeGroups => describe_groups(m::DescribeGroupsRequest),
    DeleteGroups => delete_groups(m::DeleteGroupsRequest),
    OffsetDelete => offset_delete(m::OffsetDeleteRequest),
    OffsetForLeaderEpoch => offset_for_leader_epoch(m::OffsetForLeaderEpochRequest),
    AddPartitionsToTxn => add_partitions_to_txn(m::AddPartitionsToTxnRequest),
    AddOffsetsToTxn => add_offsets_to_txn(m::AddOffsetsToTxnRequest),
    EndTxn => end_txn(m::EndTxnRequest),
    WriteTxnMarkers => write_txn_markers(m::WriteTxnMarkersRequest),
    DescribeTransactions => describe_transactions(m::DescribeTransactionsRequest),
    ListTransactions => list_transactions(m::ListTransactionsRequest),
    TxnOffsetCommit => txn_offset_commit(m::TxnOffsetCommitRequest),
    DescribeProducers => describe_producers(m::DescribeProducersRequest),
}

fn unsupported(key: ApiKey, version: i16) -> DispatchError {
    DispatchError::UnsupportedVersion {
        key,
        version,
        supported: VersionRange { min: 0, max: -1 },
    }
}

pub(crate) fn supported_versions(key: ApiKey) -> Option<VersionRange> {
    SUPPORTED.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// What the fixed start of every request frame says.
struct Framing {
    key: ApiKey,
    version: i16,
}

/// Reads the api key, version and correlation id and checks the version is implemented.
/// `Ok(Err(correlation_id))` means: answer with ApiVersions' unsupported-version response.
fn check_framing(frame: &[u8]) -> Result<Result<Framing, i32>, DispatchError> {
    if frame.len() < 8 {
        return Err(DispatchError::Closed(format!(
            "frame of {} bytes has no request header",
            frame.len()
        )));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let key = ApiKey::try_from(raw_key).map_err(|_| DispatchError::UnknownApiKey(raw_key))?;
    let Some(supported) = supported_versions(key) else {
        return Err(unsupported(key, version));
    };
    if version < supported.min || version > supported.max {
        if key == ApiKey::ApiVersions {
            return Ok(Err(correlation_id));
        }
        return Err(DispatchError::UnsupportedVersion {
            key,
            version,
            supported,
        });
    }
    Ok(Ok(Framing { key, version }))
}

/// Decodes a frame's header, checks the version, and runs the handler's immediate part.
pub(crate) async fn dispatch(
    broker: &Arc<Broker>,
    frame: BytesMut,
    peer: std::net::SocketAddr,
) -> Result<Option<Response>, DispatchError> {
    let mut frame = frame.freeze();
    let Framing { key, version, .. } = match check_framing(&frame)? {
        Ok(framing) => framing,
        // Kafka answers an ApiVersions it cannot parse in v0 form, so that the client can
        // learn the supported range and retry (KIP-511).
        Err(correlation_id) => {
            return Ok(Some(api_versions::unsupported_version_response(
                correlation_id,
            )))
        }
    };
    let header =
        RequestHeader::decode(&mut frame, key.request_header_version(version)).map_err(|e| {
            DispatchError::Malformed {
                key,
                version,
                reason: e.to_string(),
            }
        })?;
    crate::probe::request_received(key);
    route(
        broker,
        key,
        RequestContext {
            header,
            peer: Some(peer),
        },
        frame,
    )
    .await
}

/// Decodes a request frame (without its length prefix) exactly as the broker would, without
/// handling it: for fuzzing and tests. Returns the API key on success.
pub fn decode_request(frame: Bytes) -> Result<ApiKey, String> {
    let mut frame = frame;
    let Framing { key, version, .. } = match check_framing(&frame).map_err(|e| e.to_string())? {
        Ok(framing) => framing,
        Err(_) => return Ok(ApiKey::ApiVersions),
    };
    RequestHeader::decode(&mut frame, key.request_header_version(version))
        .map_err(|e| e.to_string())?;
    decode_body(key, version, frame).map_err(|e| e.to_string())?;
    Ok(key)
}

fn finish<R: Encodable + Send + 'static>(
    reply: Reply<R>,
    key: ApiKey,
    correlation_id: i32,
    version: i16,
    started: std::time::Instant,
) -> Option<Response> {
    match reply {
        Reply::Now(response) => {
            crate::probe::request_completed(key, started.elapsed());
            Some(Response::Ready(encode_response(
                &response,
                key,
                correlation_id,
                version,
            )))
        }
        Reply::Later(future) => Some(Response::Waiting(Box::pin(async move {
            let response = future.await;
            crate::probe::request_completed(key, started.elapsed());
            encode_response(&response, key, correlation_id, version)
        }))),
        Reply::Silent => None,
        Reply::Close(reason) => Some(Response::Ready(Err(DispatchError::Closed(reason)))),
    }
}

/// Encodes a response frame: length prefix, response header, body.
pub(crate) fn encode_response<R: Encodable>(
    response: &R,
    key: ApiKey,
    correlation_id: i32,
    version: i16,
) -> Result<Bytes, DispatchError> {
    encode_with_header(
        response,
        correlation_id,
        key.response_header_version(version),
        version,
    )
    .map_err(|e| DispatchError::Encode {
        key,
        version,
        reason: e.to_string(),
    })
}

pub(crate) fn encode_with_header<R: Encodable>(
    response: &R,
    correlation_id: i32,
    header_version: i16,
    version: i16,
) -> anyhow::Result<Bytes> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let size = header.compute_size(header_version)? + response.compute_size(version)?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(i32::try_from(size)?);
    header.encode(&mut buf, header_version)?;
    response.encode(&mut buf, version)?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::Message;

    fn frame<R: Encodable>(key: ApiKey, version: i16, request: &R) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(kafka_protocol::protocol::StrBytes::from_static_str(
                "t",
            )));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, key.request_header_version(version))
            .expect("header");
        request.encode(&mut buf, version).expect("body");
        buf.freeze()
    }

    #[test]
    fn advertised_versions_lie_within_the_protocol_schemas() {
        // Every advertised range must be decodable by kafka-protocol, or ApiVersions would lie.
        for (key, range) in SUPPORTED {
            let schema = key.valid_versions();
            assert!(range.min <= range.max, "{key:?} has an empty range");
            assert!(
                range.min >= schema.min && range.max <= schema.max,
                "{key:?} advertises {range} outside the schema's {schema}"
            );
        }
        let keys: std::collections::BTreeSet<i16> =
            SUPPORTED.iter().map(|(k, _)| *k as i16).collect();
        assert_eq!(keys.len(), SUPPORTED.len(), "an API is listed twice");
    }

    #[test]
    fn every_advertised_version_decodes_a_default_request() {
        assert!(decode_request(frame(
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default()
        ))
        .is_ok());
        for version in MetadataRequest::VERSIONS.min..=MetadataRequest::VERSIONS.max {
            let key = decode_request(frame(
                ApiKey::Metadata,
                version,
                &MetadataRequest::default(),
            ));
            assert_eq!(key, Ok(ApiKey::Metadata), "Metadata v{version}");
        }
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        // Shorter than a request header.
        assert!(decode_request(Bytes::from_static(&[0, 3, 0])).is_err());
        // Unknown API key 999.
        let err = decode_request(Bytes::from_static(&[0x03, 0xe7, 0, 0, 0, 0, 0, 1])).unwrap_err();
        assert!(err.contains("unknown API key 999"), "{err}");
        // A known but unimplemented API (DescribeAcls, key 29).
        assert!(decode_request(Bytes::from_static(&[0, 29, 0, 2, 0, 0, 0, 1])).is_err());
        // Metadata v99 is not supported.
        assert!(decode_request(Bytes::from_static(&[0, 3, 0, 99, 0, 0, 0, 1])).is_err());
        // A valid header followed by a truncated body.
        let full = frame(
            ApiKey::Metadata,
            9,
            &MetadataRequest::default().with_topics(Some(vec![])),
        );
        assert!(decode_request(full.slice(..full.len() - 2)).is_err());
        // ApiVersions with an unsupported version is accepted for the v0 fallback answer.
        assert_eq!(
            decode_request(Bytes::from_static(&[0, 18, 0, 99, 0, 0, 0, 1])),
            Ok(ApiKey::ApiVersions)
        );
    }

    #[test]
    fn lying_array_lengths_are_errors_not_huge_allocations() {
        // Inputs the fuzzer found: each declares ~2^31 array elements in a few bytes, which
        // unpatched kafka-protocol preallocates (an abort on a 170 GB allocation).
        let regressions: [&[u8]; 4] = [
            include_bytes!(
                "../../../../fuzz/regressions/decode_request/fuzzer_list_offsets_v1_oom.bin"
            ),
            include_bytes!(
                "../../../../fuzz/regressions/decode_request/list_offsets_v1_topics_i32max.bin"
            ),
            include_bytes!(
                "../../../../fuzz/regressions/decode_request/metadata_v12_topics_compact_huge.bin"
            ),
            include_bytes!(
                "../../../../fuzz/regressions/decode_request/produce_v3_partitions_i32max.bin"
            ),
        ];
        for input in regressions {
            assert!(
                decode_request(Bytes::copy_from_slice(input)).is_err(),
                "{input:02x?}"
            );
        }
    }

    #[test]
    fn unsupported_api_versions_answers_in_v0_form() {
        let Response::Ready(encoded) = api_versions::unsupported_version_response(42) else {
            panic!("answered at once")
        };
        let bytes = encoded.expect("encode");
        let mut body = bytes.slice(4..);
        let size = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        assert_eq!(size, body.len());
        let header = ResponseHeader::decode(&mut body, 0).expect("header v0");
        assert_eq!(header.correlation_id, 42);
        let response =
            kafka_protocol::messages::ApiVersionsResponse::decode(&mut body, 0).expect("v0 body");
        assert_eq!(
            response.error_code,
            kafka_protocol::ResponseError::UnsupportedVersion.code()
        );
        assert!(response
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::ApiVersions as i16 && k.max_version == 4));
        assert!(body.is_empty(), "v0 form has no trailing tagged fields");
    }
}
