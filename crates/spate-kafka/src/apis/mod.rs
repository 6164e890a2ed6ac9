//! One module per Kafka API. Each states `VERSIONS`, the versions it implements, and a
//! `handle` function; [`SUPPORTED`] and [`dispatch`] are generated from that list, so
//! ApiVersions advertises exactly what is implemented.

use crate::broker::Broker;
use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, VersionRange};
use std::sync::Arc;

pub(crate) mod api_versions;
pub(crate) mod create_partitions;
pub(crate) mod create_topics;
pub(crate) mod delete_records;
pub(crate) mod delete_topics;
pub(crate) mod describe_cluster;
pub(crate) mod describe_configs;
pub(crate) mod alter_configs;
pub(crate) mod incremental_alter_configs;
pub(crate) mod fetch;
pub(crate) mod init_producer_id;
pub(crate) mod list_offsets;
pub(crate) mod metadata;
pub(crate) mod produce;

/// The encoded response frame (length prefix included), or why the connection must close.
pub(crate) type Pending = BoxFuture<'static, Result<Bytes, DispatchError>>;

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
    UnsupportedVersion { key: ApiKey, version: i16, supported: VersionRange },
    #[error("malformed {key:?} v{version} request: {reason}")]
    Malformed { key: ApiKey, version: i16, reason: String },
    #[error("failed to encode {key:?} v{version} response: {reason}")]
    Encode { key: ApiKey, version: i16, reason: String },
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
        ) -> Result<Option<Pending>, DispatchError> {
            let version = ctx.version();
            match key {
                $(ApiKey::$key => {
                    let request = <$request as Decodable>::decode(&mut body, version).map_err(|e| {
                        DispatchError::Malformed { key, version, reason: e.to_string() }
                    })?;
                    let reply = $module::handle(broker, &ctx, request).await;
                    Ok(finish(reply, key, ctx.header.correlation_id, version))
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
}

fn unsupported(key: ApiKey, version: i16) -> DispatchError {
    DispatchError::UnsupportedVersion { key, version, supported: VersionRange { min: 0, max: -1 } }
}

pub(crate) fn supported_versions(key: ApiKey) -> Option<VersionRange> {
    SUPPORTED.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// What the fixed start of every request frame says.
struct Framing {
    key: ApiKey,
    version: i16,
    correlation_id: i32,
}

/// Reads the api key, version and correlation id and checks the version is implemented.
/// `Ok(Err(correlation_id))` means: answer with ApiVersions' unsupported-version response.
fn check_framing(frame: &[u8]) -> Result<Result<Framing, i32>, DispatchError> {
    if frame.len() < 8 {
        return Err(DispatchError::Closed(format!("frame of {} bytes has no request header", frame.len())));
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
        return Err(DispatchError::UnsupportedVersion { key, version, supported });
    }
    Ok(Ok(Framing { key, version, correlation_id }))
}

/// Decodes a frame's header, checks the version, and runs the handler's immediate part.
pub(crate) async fn dispatch(
    broker: &Arc<Broker>,
    frame: BytesMut,
) -> Result<Option<Pending>, DispatchError> {
    let mut frame = frame.freeze();
    let Framing { key, version, .. } = match check_framing(&frame)? {
        Ok(framing) => framing,
        // Kafka answers an ApiVersions it cannot parse in v0 form, so that the client can
        // learn the supported range and retry (KIP-511).
        Err(correlation_id) => return Ok(Some(api_versions::unsupported_version_response(correlation_id))),
    };
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version))
        .map_err(|e| DispatchError::Malformed { key, version, reason: e.to_string() })?;
    metrics::counter!("spate_kafka_requests_total", "api" => format!("{key:?}")).increment(1);
    route(broker, key, RequestContext { header }, frame).await
}

/// Decodes a request frame (without its length prefix) exactly as the broker would, without
/// handling it: for fuzzing and tests. Returns the API key on success.
pub fn decode_request(frame: Bytes) -> Result<ApiKey, String> {
    let mut frame = frame;
    let Framing { key, version, .. } = match check_framing(&frame).map_err(|e| e.to_string())? {
        Ok(framing) => framing,
        Err(_) => return Ok(ApiKey::ApiVersions),
    };
    RequestHeader::decode(&mut frame, key.request_header_version(version)).map_err(|e| e.to_string())?;
    decode_body(key, version, frame).map_err(|e| e.to_string())?;
    Ok(key)
}

fn finish<R: Encodable + Send + 'static>(
    reply: Reply<R>,
    key: ApiKey,
    correlation_id: i32,
    version: i16,
) -> Option<Pending> {
    match reply {
        Reply::Now(response) => {
            let encoded = encode_response(&response, key, correlation_id, version);
            Some(Box::pin(async move { encoded }))
        }
        Reply::Later(future) => Some(Box::pin(async move {
            let response = future.await;
            encode_response(&response, key, correlation_id, version)
        })),
        Reply::Silent => None,
        Reply::Close(reason) => Some(Box::pin(async move { Err(DispatchError::Closed(reason)) })),
    }
}

/// Encodes a response frame: length prefix, response header, body.
pub(crate) fn encode_response<R: Encodable>(
    response: &R,
    key: ApiKey,
    correlation_id: i32,
    version: i16,
) -> Result<Bytes, DispatchError> {
    encode_with_header(response, correlation_id, key.response_header_version(version), version)
        .map_err(|e| DispatchError::Encode { key, version, reason: e.to_string() })
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
