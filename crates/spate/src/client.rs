//! A minimal Kafka admin client: one TCP connection per broker, request/response framing,
//! and version negotiation with ApiVersions.
//!
//! Guarantees:
//! - every request is sent at the highest version both this client (the `kafka-protocol`
//!   crate's messages) and the broker (its ApiVersions answer) support, or not at all;
//! - no response frame longer than [`FRAME_BYTES_MAX`] is read, and nothing is allocated for
//!   it before its length has been checked;
//! - every network operation ends by the caller's deadline.
//!
//! Requests are strictly sequential on a connection (one in flight), so a response that does
//! not carry the expected correlation id is a protocol error.
//!
//! Cancel safety: none of the async methods are cancel safe. A cancelled (or timed out) call may
//! leave half a frame on the socket; the [`Connection`] must then be dropped, which every caller
//! here does by returning the error.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, Message, Request, StrBytes, VersionRange,
};
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The largest response frame (after the length prefix) this client accepts.
pub const FRAME_BYTES_MAX: usize = 100 * 1024 * 1024;
/// The largest request frame this client sends; admin requests are small.
pub const REQUEST_BYTES_MAX: usize = 1024 * 1024;
const _: () = assert!(REQUEST_BYTES_MAX <= FRAME_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_MAX <= i32::MAX as usize);

/// The client id sent in every request header, and the ApiVersions software name (KIP-511).
pub const CLIENT_ID: &str = "spate-cli";

/// Kafka's UNSUPPORTED_VERSION: in an ApiVersions response, the body is in v0 form (KIP-511).
const UNSUPPORTED_VERSION: i16 = 35;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to broker {addr}: {error}")]
    Unreachable { addr: String, error: std::io::Error },
    #[error("timed out after {timeout_ms} ms waiting for {what} ({addr})")]
    TimedOut {
        addr: String,
        what: String,
        timeout_ms: u64,
    },
    #[error("connection to {addr} failed: {error}")]
    Io { addr: String, error: std::io::Error },
    #[error("broker {addr} sent a response frame of {len} bytes (limit {FRAME_BYTES_MAX}); is it a Kafka listener?")]
    FrameTooLarge { addr: String, len: i64 },
    #[error("protocol error talking to {addr}: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("broker {addr} does not support {key:?} at any version this client knows (client {client}, broker {broker})")]
    Unsupported {
        addr: String,
        key: ApiKey,
        client: VersionRange,
        broker: String,
    },
    #[error("{context}: {} ({error})", error_name(*.error))]
    Kafka {
        context: String,
        error: ResponseError,
    },
}

impl ClientError {
    /// Errors that go away by asking again (possibly after finding the coordinator again).
    pub fn is_coordinator_retriable(&self) -> bool {
        matches!(
            self,
            ClientError::Kafka {
                error: ResponseError::CoordinatorNotAvailable
                    | ResponseError::CoordinatorLoadInProgress
                    | ResponseError::NotCoordinator,
                ..
            }
        )
    }
}

/// Kafka's name for an error, e.g. `COORDINATOR_NOT_AVAILABLE`.
pub fn error_name(error: ResponseError) -> String {
    let camel = format!("{error:?}");
    if let ResponseError::Unknown(code) = error {
        return format!("UNKNOWN_ERROR_CODE_{code}");
    }
    let mut name = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// `Ok(())` for error code 0, else the error with `context`.
pub fn check(code: i16, context: impl FnOnce() -> String) -> Result<(), ClientError> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(error) => Err(ClientError::Kafka {
            context: context(),
            error,
        }),
    }
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

/// Checks a response frame's length prefix before anything is allocated for it.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, i64> {
    let len = i32::from_be_bytes(prefix);
    match usize::try_from(len) {
        Ok(n) if n <= FRAME_BYTES_MAX => Ok(n),
        _ => Err(i64::from(len)),
    }
}

/// Encodes a request frame: length prefix, request header, body.
pub fn encode_request<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
) -> anyhow::Result<Bytes> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let header_version = R::header_version(version);
    let size = header.compute_size(header_version)? + request.compute_size(version)?;
    anyhow::ensure!(
        size <= REQUEST_BYTES_MAX,
        "request of {size} bytes exceeds the limit of {REQUEST_BYTES_MAX}"
    );
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(i32::try_from(size)?);
    header.encode(&mut buf, header_version)?;
    request.encode(&mut buf, version)?;
    Ok(buf.freeze())
}

/// Decodes a response frame (without its length prefix) sent in answer to `correlation_id`.
pub fn decode_response<R: Request>(
    mut frame: Bytes,
    version: i16,
    correlation_id: i32,
) -> anyhow::Result<R::Response> {
    let header = ResponseHeader::decode(
        &mut frame,
        <R::Response as HeaderVersion>::header_version(version),
    )?;
    anyhow::ensure!(
        header.correlation_id == correlation_id,
        "response has correlation id {}, expected {correlation_id}",
        header.correlation_id
    );
    let response = <R::Response as Decodable>::decode(&mut frame, version)?;
    Ok(response)
}

/// One connection to one broker, with the versions it supports.
pub struct Connection {
    addr: String,
    stream: TcpStream,
    deadline: Instant,
    timeout_ms: u64,
    next_correlation_id: i32,
    /// Broker-supported version range per API key.
    broker_versions: BTreeMap<i16, VersionRange>,
}

impl Connection {
    /// Connects and negotiates versions; all of it ends by `deadline`.
    pub async fn connect(
        addr: &str,
        deadline: Instant,
        timeout_ms: u64,
    ) -> Result<Connection, ClientError> {
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(ClientError::TimedOut {
                    addr: addr.to_owned(),
                    what: "a TCP connection".to_owned(),
                    timeout_ms,
                })
            }
            Ok(Err(error)) => {
                return Err(ClientError::Unreachable {
                    addr: addr.to_owned(),
                    error,
                })
            }
            Ok(Ok(stream)) => stream,
        };
        stream.set_nodelay(true).map_err(|error| ClientError::Io {
            addr: addr.to_owned(),
            error,
        })?;
        let mut connection = Connection {
            addr: addr.to_owned(),
            stream,
            deadline,
            timeout_ms,
            next_correlation_id: 1,
            broker_versions: BTreeMap::new(),
        };
        connection.negotiate().await?;
        Ok(connection)
    }

    /// ApiVersions at this client's highest version; if the broker does not know it, it answers
    /// in v0 form with its own range (KIP-511), and the request is repeated at a version it knows.
    async fn negotiate(&mut self) -> Result<(), ClientError> {
        let client = client_versions::<ApiVersionsRequest>();
        let mut version = client.max;
        for _attempt in 0..2 {
            let mut request = ApiVersionsRequest::default();
            if version >= 3 {
                request = request
                    .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
                    .with_client_software_version(StrBytes::from_static_str(env!(
                        "CARGO_PKG_VERSION"
                    )));
            }
            let frame = self
                .round_trip::<ApiVersionsRequest>(&request, version)
                .await?;
            let (correlation_id, body) = frame;
            let response =
                decode_response::<ApiVersionsRequest>(body.clone(), version, correlation_id)
                    .ok()
                    .filter(|r| r.error_code != UNSUPPORTED_VERSION);
            let response = match response {
                Some(response) => response,
                None => {
                    let fallback: ApiVersionsResponse =
                        decode_response::<ApiVersionsRequest>(body, 0, correlation_id)
                            .map_err(|e| self.protocol(format!("ApiVersions response: {e:#}")))?;
                    if fallback.error_code == UNSUPPORTED_VERSION {
                        let broker = fallback
                            .api_keys
                            .iter()
                            .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                            .map(|k| VersionRange {
                                min: k.min_version,
                                max: k.max_version,
                            });
                        match broker.and_then(|b| pick_version(client, b)) {
                            Some(v) if v < version => {
                                version = v;
                                continue;
                            }
                            _ => {
                                return Err(ClientError::Unsupported {
                                    addr: self.addr.clone(),
                                    key: ApiKey::ApiVersions,
                                    client,
                                    broker: broker.map_or("none".to_owned(), |b| b.to_string()),
                                })
                            }
                        }
                    }
                    fallback
                }
            };
            let addr = self.addr.clone();
            check(response.error_code, || format!("ApiVersions from {addr}"))?;
            self.broker_versions = response
                .api_keys
                .iter()
                .map(|k| {
                    (
                        k.api_key,
                        VersionRange {
                            min: k.min_version,
                            max: k.max_version,
                        },
                    )
                })
                .collect();
            let apis = self.broker_versions.len();
            tracing::debug!(addr = %self.addr, apis, "negotiated versions");
            return Ok(());
        }
        Err(self.protocol("ApiVersions did not settle on a version".to_owned()))
    }

    /// The version to send `R` at: the highest both sides support.
    pub fn version<R: Request>(&self) -> Result<i16, ClientError> {
        let client = client_versions::<R>();
        let key =
            ApiKey::try_from(R::KEY).map_err(|_| self.protocol(format!("API key {}", R::KEY)))?;
        let broker = self.broker_versions.get(&R::KEY).copied();
        broker
            .and_then(|b| pick_version(client, b))
            .ok_or_else(|| ClientError::Unsupported {
                addr: self.addr.clone(),
                key,
                client,
                broker: broker.map_or("not offered".to_owned(), |b| b.to_string()),
            })
    }

    /// Sends `request` at `version`, which the caller has negotiated.
    pub async fn send_at<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, ClientError> {
        let (correlation_id, body) = self.round_trip::<R>(request, version).await?;
        decode_response::<R>(body, version, correlation_id).map_err(|e| {
            self.protocol(format!(
                "{:?} v{version} response: {e:#}",
                ApiKey::try_from(R::KEY).unwrap_or(ApiKey::ApiVersions)
            ))
        })
    }

    /// Writes one request frame and reads one response frame (without its length prefix).
    async fn round_trip<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<(i32, Bytes), ClientError> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let frame = encode_request(request, version, correlation_id)
            .map_err(|e| self.protocol(format!("cannot encode request: {e:#}")))?;
        let what = format!(
            "the {:?} response",
            ApiKey::try_from(R::KEY).unwrap_or(ApiKey::ApiVersions)
        );
        let io = async {
            self.stream.write_all(&frame).await?;
            let mut prefix = [0u8; 4];
            self.stream.read_exact(&mut prefix).await?;
            let len = match frame_len(prefix) {
                Ok(len) => len,
                Err(len) => return Ok(Err(len)),
            };
            let mut body = BytesMut::zeroed(len);
            self.stream.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(Ok(body.freeze()))
        };
        match tokio::time::timeout_at(self.deadline, io).await {
            Err(_) => Err(ClientError::TimedOut {
                addr: self.addr.clone(),
                what,
                timeout_ms: self.timeout_ms,
            }),
            Ok(Err(error)) => Err(ClientError::Io {
                addr: self.addr.clone(),
                error,
            }),
            Ok(Ok(Err(len))) => Err(ClientError::FrameTooLarge {
                addr: self.addr.clone(),
                len,
            }),
            Ok(Ok(Ok(body))) => Ok((correlation_id, body)),
        }
    }

    fn protocol(&self, reason: String) -> ClientError {
        ClientError::Protocol {
            addr: self.addr.clone(),
            reason,
        }
    }
}

/// Connections to the brokers of one cluster, by address, all sharing one deadline.
pub struct Cluster {
    bootstrap: String,
    deadline: Instant,
    timeout_ms: u64,
    connections: BTreeMap<String, Connection>,
}

impl Cluster {
    pub fn new(bootstrap: &str, timeout_ms: u64) -> Cluster {
        Cluster {
            bootstrap: bootstrap.to_owned(),
            deadline: Instant::now() + std::time::Duration::from_millis(timeout_ms),
            timeout_ms,
            connections: BTreeMap::new(),
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The connection to `addr`, opened if needed.
    pub async fn connection(&mut self, addr: &str) -> Result<&mut Connection, ClientError> {
        if !self.connections.contains_key(addr) {
            let connection = Connection::connect(addr, self.deadline, self.timeout_ms).await?;
            self.connections.insert(addr.to_owned(), connection);
        }
        Ok(self.connections.get_mut(addr).expect("inserted just above"))
    }

    /// Closes the connection to `addr` (after an error left it in an unknown state).
    pub fn forget(&mut self, addr: &str) {
        self.connections.remove(addr);
    }

    /// Sends the request `build` makes for the negotiated version to `addr`; returns the version
    /// and the response. On an I/O or protocol error the connection is dropped.
    pub async fn send<R: Request>(
        &mut self,
        addr: &str,
        build: impl FnOnce(i16) -> R,
    ) -> Result<(i16, R::Response), ClientError> {
        let connection = self.connection(addr).await?;
        let version = connection.version::<R>()?;
        let result = connection.send_at(&build(version), version).await;
        if matches!(
            result,
            Err(ClientError::Io { .. }
                | ClientError::Protocol { .. }
                | ClientError::TimedOut { .. }
                | ClientError::FrameTooLarge { .. })
        ) {
            self.forget(addr);
        }
        result.map(|response| (version, response))
    }

    /// The negotiated version of `R` on `addr` (connecting if needed).
    pub async fn version<R: Request>(&mut self, addr: &str) -> Result<i16, ClientError> {
        self.connection(addr).await?.version::<R>()
    }
}

/// `host:port` as a connect address (IPv6 literals get brackets).
pub fn address(host: &str, port: i32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
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
        let max = i32::try_from(FRAME_BYTES_MAX).expect("fits");
        assert_eq!(frame_len(max.to_be_bytes()), Ok(FRAME_BYTES_MAX));
        assert_eq!(frame_len((max + 1).to_be_bytes()), Err(i64::from(max) + 1));
        assert_eq!(frame_len((-1i32).to_be_bytes()), Err(-1));
        assert_eq!(frame_len(i32::MAX.to_be_bytes()), Err(i64::from(i32::MAX)));
    }

    #[test]
    fn request_frame_round_trips_through_the_broker_side_decoder() {
        let request = ListGroupsRequest::default()
            .with_states_filter(vec![StrBytes::from_static_str("Stable")]);
        for version in 4..=5 {
            let frame = encode_request(&request, version, 42).expect("encodes");
            let mut frame = frame.slice(4..);
            let header =
                RequestHeader::decode(&mut frame, ListGroupsRequest::header_version(version))
                    .expect("header");
            assert_eq!(header.request_api_key, ApiKey::ListGroups as i16);
            assert_eq!(header.request_api_version, version);
            assert_eq!(header.correlation_id, 42);
            assert_eq!(header.client_id.as_deref(), Some(CLIENT_ID));
            let decoded = ListGroupsRequest::decode(&mut frame, version).expect("body");
            assert_eq!(decoded, request);
        }
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
        assert!(err.to_string().contains("correlation id 7"), "{err}");
    }

    #[test]
    fn kafka_error_names() {
        assert_eq!(
            error_name(ResponseError::CoordinatorNotAvailable),
            "COORDINATOR_NOT_AVAILABLE"
        );
        assert_eq!(
            error_name(ResponseError::Unknown(999)),
            "UNKNOWN_ERROR_CODE_999"
        );
        let err = check(14, || "DescribeGroups g1".to_owned()).expect_err("error");
        assert!(err.is_coordinator_retriable());
        assert!(err
            .to_string()
            .starts_with("DescribeGroups g1: COORDINATOR_LOAD_IN_PROGRESS"));
        assert!(check(0, || unreachable!()).is_ok());
    }

    #[test]
    fn addresses() {
        assert_eq!(address("127.0.0.1", 9092), "127.0.0.1:9092");
        assert_eq!(address("::1", 9092), "[::1]:9092");
    }
}
