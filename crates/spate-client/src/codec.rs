//! Framing without I/O: request frames encoded into a caller's buffer, response frames checked
//! and decoded, and the choice of a version both sides support.
//!
//! A Kafka frame is a big-endian `i32` length, then that many bytes: a header (whose version
//! depends on the API key and version) and the message body.

use crate::error::{ClientError, ProtocolError};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, Message, Request, StrBytes, VersionRange,
};

/// The largest response frame (after the length prefix) this client accepts. Nothing is
/// allocated for a frame before its length has been checked against this; a Fetch caller keeps
/// its `max_bytes` (plus the response's framing) under it.
pub const RESPONSE_BYTES_MAX: usize = 100 * 1024 * 1024;
/// The largest request frame (after the length prefix) this client sends. Admin requests and
/// Fetch requests are small: this is enough for a Fetch naming tens of thousands of partitions.
pub const REQUEST_BYTES_MAX: usize = 1024 * 1024;
/// A connection keeps its read buffer between responses (it is reused once the previous
/// response is dropped) unless the last frame was larger than this, so an idle connection
/// holds at most this much after one large response.
pub const READ_BUFFER_RETAIN_BYTES_MAX: usize = 1024 * 1024;

const _: () = assert!(RESPONSE_BYTES_MAX <= i32::MAX as usize);
// Whatever this client sends, a spate broker reads (its own limit may only be lower).
const _: () = assert!(REQUEST_BYTES_MAX <= spate_types::limits::FRAME_BYTES_MAX);
const _: () = assert!(READ_BUFFER_RETAIN_BYTES_MAX <= RESPONSE_BYTES_MAX);

/// The API key of a request type.
///
/// # Panics
///
/// If `kafka-protocol` defines a request whose key is not in its own [`ApiKey`] list (a bug in
/// that crate).
pub fn api_key<R: Request>() -> ApiKey {
    ApiKey::try_from(R::KEY).expect("kafka-protocol request types have known API keys")
}

/// The versions of a request this client can send and read the response of.
pub fn client_versions<R: Request>() -> VersionRange {
    let request = R::VERSIONS;
    let response = <R::Response as Message>::VERSIONS;
    VersionRange {
        min: request.min.max(response.min),
        max: request.max.min(response.max),
    }
}

/// The highest version in both ranges, if they overlap.
pub fn pick_version(client: VersionRange, broker: VersionRange) -> Option<i16> {
    let max = client.max.min(broker.max);
    let min = client.min.max(broker.min);
    (min <= max).then_some(max)
}

/// Checks a response frame's length prefix before anything is allocated for it: the length,
/// or what the prefix claimed if it is negative or over [`RESPONSE_BYTES_MAX`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, i64> {
    let len = i32::from_be_bytes(prefix);
    match usize::try_from(len) {
        Ok(n) if n <= RESPONSE_BYTES_MAX => Ok(n),
        _ => Err(i64::from(len)),
    }
}

/// Appends a request frame (length prefix, request header, body) to `buf`. On error nothing
/// useful is in `buf`.
pub fn encode_request<R: Request>(
    buf: &mut BytesMut,
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
) -> Result<(), ClientError> {
    let api_key = api_key::<R>();
    let encode_error = |error| ClientError::Encode {
        api_key,
        version,
        error,
    };
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(client_id.clone()));
    let header_version = R::header_version(version);
    let size = header
        .compute_size(header_version)
        .and_then(|h| Ok(h + request.compute_size(version)?))
        .map_err(encode_error)?;
    if size > REQUEST_BYTES_MAX {
        return Err(ClientError::RequestTooLarge { api_key, size });
    }
    buf.reserve(4 + size);
    buf.put_i32(i32::try_from(size).expect("REQUEST_BYTES_MAX fits in an i32"));
    header
        .encode(buf, header_version)
        .and_then(|()| request.encode(buf, version))
        .map_err(encode_error)
}

/// Decodes a response frame (without its length prefix) sent in answer to `correlation_id`.
pub fn decode_response<R: Request>(
    mut frame: Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<R::Response, ProtocolError> {
    let header = ResponseHeader::decode(
        &mut frame,
        <R::Response as HeaderVersion>::header_version(version),
    )
    .map_err(ProtocolError::Decode)?;
    if header.correlation_id != correlation_id {
        return Err(ProtocolError::CorrelationMismatch {
            expected: correlation_id,
            received: header.correlation_id,
        });
    }
    <R::Response as Decodable>::decode(&mut frame, version).map_err(ProtocolError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ListGroupsRequest, ListGroupsResponse, OffsetFetchRequest};

    #[test]
    fn picks_the_highest_common_version() {
        let client = VersionRange { min: 1, max: 9 };
        assert_eq!(
            pick_version(client, VersionRange { min: 0, max: 13 }),
            Some(9)
        );
        assert_eq!(
            pick_version(client, VersionRange { min: 0, max: 4 }),
            Some(4)
        );
        assert_eq!(
            pick_version(client, VersionRange { min: 9, max: 12 }),
            Some(9)
        );
        assert_eq!(pick_version(client, VersionRange { min: 0, max: 0 }), None);
        assert_eq!(
            pick_version(client, VersionRange { min: 10, max: 12 }),
            None
        );
    }

    #[test]
    fn client_versions_are_those_of_request_and_response() {
        // OffsetFetch's response schema knows v10, its request only v9.
        let v = client_versions::<OffsetFetchRequest>();
        assert_eq!((v.min, v.max), (1, 9));
    }

    #[test]
    fn frame_length_is_checked_before_allocation() {
        assert_eq!(frame_len(0i32.to_be_bytes()), Ok(0));
        assert_eq!(frame_len(17i32.to_be_bytes()), Ok(17));
        let max = i32::try_from(RESPONSE_BYTES_MAX).expect("fits");
        assert_eq!(frame_len(max.to_be_bytes()), Ok(RESPONSE_BYTES_MAX));
        assert_eq!(frame_len((max + 1).to_be_bytes()), Err(i64::from(max) + 1));
        assert_eq!(frame_len((-1i32).to_be_bytes()), Err(-1));
        assert_eq!(frame_len(i32::MAX.to_be_bytes()), Err(i64::from(i32::MAX)));
    }

    #[test]
    fn request_frame_round_trips_through_the_broker_side_decoder() {
        let request = ListGroupsRequest::default()
            .with_states_filter(vec![StrBytes::from_static_str("Stable")]);
        let client_id = StrBytes::from_static_str("spate-test");
        for version in 4..=5 {
            let mut buf = BytesMut::new();
            encode_request(&mut buf, &request, version, 42, &client_id).expect("encodes");
            let mut frame = buf.freeze();
            let len = i32::from_be_bytes(frame[..4].try_into().expect("prefix"));
            assert_eq!(usize::try_from(len).expect("positive"), frame.len() - 4);
            let mut frame = frame.split_off(4);
            let header =
                RequestHeader::decode(&mut frame, ListGroupsRequest::header_version(version))
                    .expect("header");
            assert_eq!(header.request_api_key, ApiKey::ListGroups as i16);
            assert_eq!(header.request_api_version, version);
            assert_eq!(header.correlation_id, 42);
            assert_eq!(header.client_id.as_deref(), Some("spate-test"));
            let decoded = ListGroupsRequest::decode(&mut frame, version).expect("body");
            assert_eq!(decoded, request);
        }
    }

    #[test]
    fn a_field_the_version_lacks_is_an_encode_error() {
        // The states filter arrived in ListGroups v4.
        let request = ListGroupsRequest::default()
            .with_states_filter(vec![StrBytes::from_static_str("Stable")]);
        let mut buf = BytesMut::new();
        let err = encode_request(&mut buf, &request, 3, 1, &StrBytes::from_static_str("c"))
            .expect_err("v3 has no states filter");
        assert!(
            matches!(
                err,
                ClientError::Encode {
                    api_key: ApiKey::ListGroups,
                    version: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn an_oversized_request_is_refused_before_it_is_encoded() {
        let huge = StrBytes::from_string("s".repeat(REQUEST_BYTES_MAX));
        let request = ListGroupsRequest::default().with_states_filter(vec![huge]);
        let mut buf = BytesMut::new();
        let err = encode_request(&mut buf, &request, 4, 1, &StrBytes::from_static_str("c"))
            .expect_err("too large");
        assert!(
            matches!(err, ClientError::RequestTooLarge { size, .. } if size > REQUEST_BYTES_MAX),
            "{err}"
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn response_with_wrong_correlation_id_is_refused() {
        let response = ListGroupsResponse::default();
        let version = 4;
        let header_version = ListGroupsResponse::header_version(version);
        let mut buf = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(7)
            .encode(&mut buf, header_version)
            .expect("header");
        response.encode(&mut buf, version).expect("body");
        let frame = buf.freeze();
        assert!(decode_response::<ListGroupsRequest>(frame.clone(), version, 7).is_ok());
        let err = decode_response::<ListGroupsRequest>(frame, version, 8).expect_err("mismatch");
        assert!(
            matches!(
                err,
                ProtocolError::CorrelationMismatch {
                    expected: 8,
                    received: 7
                }
            ),
            "{err}"
        );
    }
}
