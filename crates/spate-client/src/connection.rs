//! One TCP connection to one broker: version negotiation with ApiVersions, then requests of
//! any type, each answered before the next is sent.
//!
//! Guarantees:
//! - a request is sent at a version both this client (the `kafka-protocol` crate's messages)
//!   and the broker (its ApiVersions answer) support, or not at all;
//! - no response frame longer than [`RESPONSE_BYTES_MAX`](crate::RESPONSE_BYTES_MAX) is read,
//!   and nothing is allocated for a frame before its length has been checked;
//! - every call ends by the [`Deadline`] it is given;
//! - the read and write buffers are reused from one request to the next (the read buffer once
//!   the previous response has been dropped); what a connection keeps between requests is
//!   bounded by [`READ_BUFFER_RETAIN_BYTES_MAX`] and
//!   [`REQUEST_BYTES_MAX`](crate::REQUEST_BYTES_MAX).
//!
//! Requests are strictly sequential (one in flight), so a response that does not carry the
//! expected correlation id is a protocol error.
//!
//! Cancel safety: none of the async methods are cancel safe in the sense that a cancelled (or
//! failed, or timed out) call may leave half a frame on the socket. The connection notices:
//! from then on every call returns [`ClientError::Poisoned`] and [`Connection::is_usable`] is
//! false, so the caller drops it and connects again.

use crate::codec::{
    api_key, client_versions, decode_response, encode_request, frame_len, pick_version,
    READ_BUFFER_RETAIN_BYTES_MAX,
};
use crate::error::{check, ClientError, ProtocolError, Waiting};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::{Request, StrBytes, VersionRange};
use spate_types::net::{BoxConn, Network, TcpNetwork};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// The ApiVersions software name (KIP-511): this library, whatever the client id.
pub const SOFTWARE_NAME: &str = "spate-client";
/// The ApiVersions software version (KIP-511).
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The ApiVersions version that brought the software name and version (KIP-511).
const API_VERSIONS_SOFTWARE_VERSION: i16 = 3;
/// Kafka's UNSUPPORTED_VERSION: in an ApiVersions response, the body is in v0 form (KIP-511).
const UNSUPPORTED_VERSION: i16 = 35;

/// How a client presents itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Sent in every request header; brokers log it and use it for quotas (e.g. `spate-cli`,
    /// `spate-replica-fetcher-1`).
    pub client_id: String,
}

impl ClientConfig {
    pub fn new(client_id: impl Into<String>) -> ClientConfig {
        ClientConfig {
            client_id: client_id.into(),
        }
    }
}

/// The instant a call must end by, with the budget it was made from (for error messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
    timeout_ms: u64,
}

impl Deadline {
    /// `timeout_ms` from now.
    pub fn after_ms(timeout_ms: u64) -> Deadline {
        Deadline {
            at: Instant::now() + Duration::from_millis(timeout_ms),
            timeout_ms,
        }
    }

    pub fn at(self) -> Instant {
        self.at
    }

    /// The budget this deadline was made from.
    pub fn timeout_ms(self) -> u64 {
        self.timeout_ms
    }

    /// Time left, zero once passed.
    pub fn remaining(self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Time left in whole milliseconds, for a request's own `timeout_ms` field.
    pub fn remaining_ms_i32(self) -> i32 {
        i32::try_from(self.remaining().as_millis()).unwrap_or(i32::MAX)
    }
}

/// One connection to one broker, with the versions it supports.
pub struct Connection {
    addr: String,
    stream: BoxConn,
    client_id: StrBytes,
    next_correlation_id: i32,
    /// Broker-supported version range per API key.
    broker_versions: BTreeMap<i16, VersionRange>,
    /// Request frames are encoded here; it never holds more than one request.
    write_buf: BytesMut,
    /// Response frames are read here and split off; see [`READ_BUFFER_RETAIN_BYTES_MAX`].
    read_buf: BytesMut,
    /// Set when a request starts and cleared when its whole response has been read, so a
    /// call that failed or was dropped part way leaves it set.
    poisoned: bool,
}

impl Connection {
    /// Connects over TCP and negotiates versions; all of it ends by `deadline`.
    pub async fn connect(
        addr: &str,
        config: &ClientConfig,
        deadline: Deadline,
    ) -> Result<Connection, ClientError> {
        Connection::connect_via(&TcpNetwork, addr, config, deadline).await
    }

    /// [`Connection::connect`] over `net` (the network seam: TCP, or an in-process network).
    pub async fn connect_via(
        net: &dyn Network,
        addr: &str,
        config: &ClientConfig,
        deadline: Deadline,
    ) -> Result<Connection, ClientError> {
        let stream = match tokio::time::timeout_at(deadline.at(), net.connect(addr)).await {
            Err(_) => {
                return Err(ClientError::TimedOut {
                    addr: addr.to_owned(),
                    waiting: Waiting::Connect,
                    timeout_ms: deadline.timeout_ms(),
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
        let mut connection = Connection {
            addr: addr.to_owned(),
            stream,
            client_id: StrBytes::from_string(config.client_id.clone()),
            next_correlation_id: 1,
            broker_versions: BTreeMap::new(),
            write_buf: BytesMut::new(),
            read_buf: BytesMut::new(),
            poisoned: false,
        };
        connection.negotiate(deadline).await?;
        Ok(connection)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// False once a call failed or was cancelled part way through a request.
    pub fn is_usable(&self) -> bool {
        !self.poisoned
    }

    /// The versions of `api_key` the broker offered, if any.
    pub fn broker_versions(&self, api_key: ApiKey) -> Option<VersionRange> {
        self.broker_versions.get(&(api_key as i16)).copied()
    }

    /// The version to send `R` at: the highest both sides support.
    pub fn version<R: Request>(&self) -> Result<i16, ClientError> {
        self.negotiated::<R>(client_versions::<R>())
    }

    /// The highest version of `R` both sides support, but no higher than `max` (a caller that
    /// has only been tested up to some version pins it here).
    pub fn version_at_most<R: Request>(&self, max: i16) -> Result<i16, ClientError> {
        let client = client_versions::<R>();
        self.negotiated::<R>(VersionRange {
            min: client.min,
            max: client.max.min(max),
        })
    }

    fn negotiated<R: Request>(&self, client: VersionRange) -> Result<i16, ClientError> {
        let api_key = api_key::<R>();
        let broker = self.broker_versions(api_key);
        broker
            .and_then(|b| pick_version(client, b))
            .ok_or_else(|| ClientError::Unsupported {
                addr: self.addr.clone(),
                api_key,
                client,
                broker,
            })
    }

    /// Sends `request` at [`Connection::version`] and reads the response.
    pub async fn send<R: Request>(
        &mut self,
        request: &R,
        deadline: Deadline,
    ) -> Result<R::Response, ClientError> {
        let version = self.version::<R>()?;
        self.send_at(request, version, deadline).await
    }

    /// Sends `request` at `version`, which both sides must support (see
    /// [`Connection::version_at_most`]), and reads the response.
    pub async fn send_at<R: Request>(
        &mut self,
        request: &R,
        version: i16,
        deadline: Deadline,
    ) -> Result<R::Response, ClientError> {
        let api_key = api_key::<R>();
        let client = client_versions::<R>();
        let broker = self.broker_versions(api_key);
        let within = |r: VersionRange| r.min <= version && version <= r.max;
        if !within(client) || !broker.is_some_and(within) {
            return Err(ClientError::VersionNotSupported {
                addr: self.addr.clone(),
                api_key,
                version,
                client,
                broker,
            });
        }
        let (correlation_id, frame) = self.round_trip(request, version, deadline).await?;
        decode_response::<R>(frame, version, correlation_id)
            .map_err(|error| self.protocol_error(api_key, version, error))
    }

    /// ApiVersions at this client's highest version; if the broker does not know it, it answers
    /// in v0 form with its own range (KIP-511), and the request is repeated at a version it knows.
    async fn negotiate(&mut self, deadline: Deadline) -> Result<(), ClientError> {
        let client = client_versions::<ApiVersionsRequest>();
        let mut version = client.max;
        for _attempt in 0..2 {
            let mut request = ApiVersionsRequest::default();
            if version >= API_VERSIONS_SOFTWARE_VERSION {
                request = request
                    .with_client_software_name(StrBytes::from_static_str(SOFTWARE_NAME))
                    .with_client_software_version(StrBytes::from_static_str(SOFTWARE_VERSION));
            }
            let (correlation_id, frame) = self.round_trip(&request, version, deadline).await?;
            let response =
                decode_response::<ApiVersionsRequest>(frame.clone(), version, correlation_id)
                    .ok()
                    .filter(|r| r.error_code != UNSUPPORTED_VERSION);
            let response = match response {
                Some(response) => response,
                None => {
                    let fallback: ApiVersionsResponse =
                        decode_response::<ApiVersionsRequest>(frame, 0, correlation_id).map_err(
                            |error| self.protocol_error(ApiKey::ApiVersions, version, error),
                        )?;
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
                                    api_key: ApiKey::ApiVersions,
                                    client,
                                    broker,
                                })
                            }
                        }
                    }
                    fallback
                }
            };
            let addr = &self.addr;
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
            tracing::debug!(addr = %self.addr, apis, version, "negotiated versions");
            return Ok(());
        }
        Err(self.protocol_error(
            ApiKey::ApiVersions,
            version,
            ProtocolError::VersionsNotSettled,
        ))
    }

    /// Writes one request frame and reads one response frame (without its length prefix).
    async fn round_trip<R: Request>(
        &mut self,
        request: &R,
        version: i16,
        deadline: Deadline,
    ) -> Result<(i32, Bytes), ClientError> {
        if self.poisoned {
            return Err(ClientError::Poisoned {
                addr: self.addr.clone(),
            });
        }
        let api_key = api_key::<R>();
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        self.write_buf.clear();
        encode_request(
            &mut self.write_buf,
            request,
            version,
            correlation_id,
            &self.client_id,
        )?;
        self.poisoned = true;
        let (stream, write_buf, read_buf) = (&mut self.stream, &self.write_buf, &mut self.read_buf);
        let io = async {
            stream.write_all(write_buf).await?;
            read_frame(stream, read_buf).await
        };
        let frame = match tokio::time::timeout_at(deadline.at(), io).await {
            Err(_) => {
                return Err(ClientError::TimedOut {
                    addr: self.addr.clone(),
                    waiting: Waiting::Response(api_key),
                    timeout_ms: deadline.timeout_ms(),
                })
            }
            Ok(Err(error)) => {
                return Err(ClientError::Io {
                    addr: self.addr.clone(),
                    error,
                })
            }
            Ok(Ok(Err(len))) => {
                return Err(ClientError::FrameTooLarge {
                    addr: self.addr.clone(),
                    len,
                })
            }
            Ok(Ok(Ok(frame))) => frame,
        };
        self.poisoned = false;
        Ok((correlation_id, frame))
    }

    /// A response that does not fit its request also leaves the stream in doubt.
    fn protocol_error(
        &mut self,
        api_key: ApiKey,
        version: i16,
        error: ProtocolError,
    ) -> ClientError {
        self.poisoned = true;
        ClientError::Protocol {
            addr: self.addr.clone(),
            api_key,
            version,
            error,
        }
    }
}

/// Reads one response frame into `buf` and splits it off: `Ok(Err(len))` if the length prefix
/// is out of bounds (nothing is read past it then).
///
/// `buf` is reserved before reading, which reuses its allocation when every frame split off
/// it earlier has been dropped; after a frame longer than [`READ_BUFFER_RETAIN_BYTES_MAX`] the
/// buffer lets go of that allocation (the frame keeps it alive as long as it is needed).
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> std::io::Result<Result<Bytes, i64>> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await?;
    let len = match frame_len(prefix) {
        Ok(len) => len,
        Err(len) => return Ok(Err(len)),
    };
    buf.clear();
    buf.reserve(len);
    while buf.len() < len {
        let want = len - buf.len();
        if stream.read_buf(&mut (&mut *buf).limit(want)).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let frame = buf.split_to(len).freeze();
    if len > READ_BUFFER_RETAIN_BYTES_MAX {
        *buf = BytesMut::new();
    }
    Ok(Ok(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = i32::try_from(body.len())
            .expect("small")
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn the_read_buffer_is_reused_once_the_last_response_is_dropped() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let mut buf = BytesMut::new();
        server
            .write_all(&framed(&[1u8; 1000]))
            .await
            .expect("write");
        server.write_all(&framed(&[2u8; 900])).await.expect("write");
        server.write_all(&framed(&[3u8; 800])).await.expect("write");

        let first = read_frame(&mut client, &mut buf)
            .await
            .expect("io")
            .expect("len");
        assert_eq!(&first[..], &[1u8; 1000][..]);
        let first_at = first.as_ptr();
        drop(first);
        let second = read_frame(&mut client, &mut buf)
            .await
            .expect("io")
            .expect("len");
        assert_eq!(&second[..], &[2u8; 900][..]);
        assert_eq!(second.as_ptr(), first_at, "the allocation was reused");
        // Still held: the next frame goes elsewhere and the held one is untouched.
        let third = read_frame(&mut client, &mut buf)
            .await
            .expect("io")
            .expect("len");
        assert_ne!(third.as_ptr(), first_at);
        assert_eq!(&second[..], &[2u8; 900][..]);
        assert_eq!(&third[..], &[3u8; 800][..]);
    }

    #[tokio::test]
    async fn a_large_frame_is_not_retained_and_a_bad_prefix_reads_nothing_more() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let len = READ_BUFFER_RETAIN_BYTES_MAX + 1;
        let writer = tokio::spawn(async move {
            server.write_all(&framed(&vec![7u8; len])).await?;
            server.write_all(&(-5i32).to_be_bytes()).await?;
            server.write_all(b"rest").await?;
            Ok::<_, std::io::Error>(server)
        });
        let mut buf = BytesMut::new();
        let frame = read_frame(&mut client, &mut buf)
            .await
            .expect("io")
            .expect("len");
        assert_eq!(frame.len(), len);
        assert_eq!(buf.capacity(), 0, "the large allocation is not kept");
        assert_eq!(
            read_frame(&mut client, &mut buf).await.expect("io"),
            Err(-5)
        );
        let _server = writer.await.expect("join").expect("write");
        let mut rest = [0u8; 4];
        client.read_exact(&mut rest).await.expect("rest");
        assert_eq!(&rest, b"rest");
    }

    #[tokio::test]
    async fn a_short_frame_is_an_unexpected_eof() {
        let (mut client, mut server) = tokio::io::duplex(64);
        server.write_all(&10i32.to_be_bytes()).await.expect("write");
        server.write_all(b"abc").await.expect("write");
        drop(server);
        let err = read_frame(&mut client, &mut BytesMut::new())
            .await
            .expect_err("eof");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
