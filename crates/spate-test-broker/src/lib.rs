//! A scripted Kafka broker for tests (of `spate-client`, the follower fetcher, the CLI): a
//! dev-dependency only, never part of the product.
//!
//! It listens on a free loopback port (or an address of an in-process network), reads request
//! frames, and checks each request's version
//! against the ranges it was started with: an ApiVersions request above its own range is
//! refused as KIP-511 says (UNSUPPORTED_VERSION, body in v0 form, with the ranges), and any
//! other request outside what was offered fails the test (the broker panics and drops the
//! connection). Everything else goes to the test's handler, which answers with
//! [`Received::respond`] (or with raw bytes, or nothing at all, to play a broken broker).
//!
//! Test code: it panics on anything unexpected and has no limits.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request};
use spate_types::net::{BoxConn, Network, TcpNetwork};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Kafka's UNSUPPORTED_VERSION.
const UNSUPPORTED_VERSION: i16 = 35;

/// One request as the scripted broker received it.
pub struct Received {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    /// The request body, after the header.
    pub body: Bytes,
    /// The port the broker listens on (to name itself in Metadata or FindCoordinator).
    pub broker_port: i32,
    versions: Arc<[(ApiKey, i16, i16)]>,
}

impl Received {
    /// The request body decoded as `R`.
    ///
    /// # Panics
    ///
    /// If it does not decode.
    pub fn decode<R: Request>(&self) -> R {
        R::decode(&mut self.body.clone(), self.version).expect("client sent a decodable request")
    }

    /// A response frame answering this request at its version.
    pub fn respond<M: Encodable + HeaderVersion>(&self, response: &M) -> Bytes {
        response_frame(response, self.header.correlation_id, self.version)
    }

    /// The ApiVersions answer for the ranges the broker was started with.
    pub fn api_versions(&self) -> ApiVersionsResponse {
        api_versions(&self.versions)
    }
}

/// A running scripted broker; it stops with the test's runtime.
pub struct ScriptedBroker {
    /// `127.0.0.1:port`.
    pub addr: String,
}

impl ScriptedBroker {
    /// Starts a broker offering `versions` (`(key, min, max)`) whose answers `handler` writes:
    /// the bytes it returns are sent as they are (empty: no answer).
    pub async fn start<F>(versions: Vec<(ApiKey, i16, i16)>, handler: F) -> ScriptedBroker
    where
        F: FnMut(&Received) -> Bytes + Send + 'static,
    {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        ScriptedBroker::start_on(&TcpNetwork, loopback, versions, handler).await
    }

    /// [`ScriptedBroker::start`] listening on `addr` of `net` (an in-process network, say).
    pub async fn start_on<F>(
        net: &dyn Network,
        addr: SocketAddr,
        versions: Vec<(ApiKey, i16, i16)>,
        handler: F,
    ) -> ScriptedBroker
    where
        F: FnMut(&Received) -> Bytes + Send + 'static,
    {
        let listener = net.bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let versions: Arc<[(ApiKey, i16, i16)]> = versions.into();
        let handler = Arc::new(Mutex::new(handler));
        let port = i32::from(addr.port());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, port, versions.clone(), handler.clone()));
            }
        });
        ScriptedBroker {
            addr: addr.to_string(),
        }
    }
}

async fn serve<F>(
    mut stream: BoxConn,
    port: i32,
    versions: Arc<[(ApiKey, i16, i16)]>,
    handler: Arc<Mutex<F>>,
) where
    F: FnMut(&Received) -> Bytes + Send + 'static,
{
    loop {
        let mut prefix = [0u8; 4];
        if stream.read_exact(&mut prefix).await.is_err() {
            return;
        }
        let len = usize::try_from(i32::from_be_bytes(prefix)).expect("sane length");
        let mut frame = vec![0u8; len];
        if stream.read_exact(&mut frame).await.is_err() {
            return;
        }
        let response = answer(Bytes::from(frame), port, &versions, &handler);
        if stream.write_all(&response).await.is_err() {
            return;
        }
    }
}

fn answer<F>(
    mut body: Bytes,
    port: i32,
    versions: &Arc<[(ApiKey, i16, i16)]>,
    handler: &Mutex<F>,
) -> Bytes
where
    F: FnMut(&Received) -> Bytes,
{
    let api_key = ApiKey::try_from(i16::from_be_bytes([body[0], body[1]])).expect("known key");
    let version = i16::from_be_bytes([body[2], body[3]]);
    let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    let offered = versions.iter().find(|(k, _, _)| *k == api_key);
    if api_key == ApiKey::ApiVersions && offered.is_none_or(|(_, _, max)| version > *max) {
        let refusal = api_versions(versions).with_error_code(UNSUPPORTED_VERSION);
        return response_frame(&refusal, correlation_id, 0);
    }
    assert!(
        offered.is_some_and(|(_, min, max)| (*min..=*max).contains(&version)),
        "client sent {api_key:?} v{version}, beyond what was offered"
    );
    let header = RequestHeader::decode(&mut body, api_key.request_header_version(version))
        .expect("header decodes");
    let received = Received {
        api_key,
        version,
        header,
        body,
        broker_port: port,
        versions: versions.clone(),
    };
    let mut handler = handler.lock().expect("a handler panicked");
    handler(&received)
}

fn api_versions(versions: &[(ApiKey, i16, i16)]) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(
        versions
            .iter()
            .map(|(k, min, max)| {
                ApiVersion::default()
                    .with_api_key(*k as i16)
                    .with_min_version(*min)
                    .with_max_version(*max)
            })
            .collect(),
    )
}

/// A length-prefixed response frame.
pub fn response_frame<M: Encodable + HeaderVersion>(
    response: &M,
    correlation_id: i32,
    version: i16,
) -> Bytes {
    let mut body = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut body, M::header_version(version))
        .expect("header");
    response.encode(&mut body, version).expect("body");
    let mut out = BytesMut::with_capacity(4 + body.len());
    out.put_i32(i32::try_from(body.len()).expect("small"));
    out.put(body);
    out.freeze()
}
