//! [`Connection`] and [`Cluster`] against the scripted broker: negotiation, version caps, the
//! client id, deadlines, and connections poisoned by a failure part way through a request.

use crate::{ClientConfig, ClientError, Cluster, Connection, Deadline, ProtocolError, Waiting};
use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerId, FetchRequest, FetchResponse, MetadataRequest,
    MetadataResponse,
};
use kafka_protocol::protocol::VersionRange;
use spate_test_broker::{response_frame, Received, ScriptedBroker};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CLIENT_ID: &str = "spate-replica-fetcher-7";

/// What the broker saw: `(api key, version, client id, software name)`.
type Log = Arc<Mutex<Vec<(ApiKey, i16, Option<String>, Option<String>)>>>;

/// A broker that offers `versions` and answers ApiVersions, Metadata and Fetch plainly, except
/// that `misbehave` may replace an answer (given the number of Metadata requests so far).
async fn broker(
    versions: Vec<(ApiKey, i16, i16)>,
    misbehave: impl Fn(usize, &Received) -> Option<Bytes> + Send + 'static,
) -> (ScriptedBroker, Log) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let mut metadata_requests = 0;
    let broker = ScriptedBroker::start(versions, move |req| {
        let software = (req.api_key == ApiKey::ApiVersions && req.version >= 3)
            .then(|| req.decode::<ApiVersionsRequest>())
            .map(|r| r.client_software_name.to_string());
        seen.lock().expect("lock").push((
            req.api_key,
            req.version,
            req.header.client_id.as_deref().map(str::to_owned),
            software,
        ));
        match req.api_key {
            ApiKey::ApiVersions => req.respond(&req.api_versions()),
            ApiKey::Metadata => {
                metadata_requests += 1;
                misbehave(metadata_requests, req).unwrap_or_else(|| {
                    req.respond(&MetadataResponse::default().with_controller_id(BrokerId(3)))
                })
            }
            ApiKey::Fetch => {
                let _: FetchRequest = req.decode();
                req.respond(&FetchResponse::default())
            }
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
    (broker, log)
}

fn modern() -> Vec<(ApiKey, i16, i16)> {
    vec![
        (ApiKey::ApiVersions, 0, 3),
        (ApiKey::Metadata, 0, 12),
        (ApiKey::Fetch, 4, 16),
    ]
}

fn plain(_: usize, _: &Received) -> Option<Bytes> {
    None
}

/// A connection to `broker` (negotiated within 5 s) and a 5 s deadline for what follows.
async fn connect(broker: &ScriptedBroker) -> (Connection, Deadline) {
    let deadline = Deadline::after_ms(5_000);
    let conn = Connection::connect(&broker.addr, &ClientConfig::new(CLIENT_ID), deadline)
        .await
        .expect("connect");
    (conn, deadline)
}

#[tokio::test]
async fn negotiates_down_to_the_brokers_api_versions_and_presents_the_client_id() {
    let (broker, log) = broker(modern(), plain).await;
    let (mut conn, deadline) = connect(&broker).await;
    assert_eq!(
        conn.broker_versions(ApiKey::Metadata),
        Some(VersionRange { min: 0, max: 12 })
    );
    assert_eq!(conn.broker_versions(ApiKey::Produce), None);
    let response = conn
        .send(&MetadataRequest::default(), deadline)
        .await
        .expect("metadata");
    assert_eq!(response.controller_id, BrokerId(3));
    let log = log.lock().expect("lock").clone();
    // v4 was refused before the handler saw it (KIP-511); v3 carried the software name.
    assert_eq!(
        log,
        vec![
            (
                ApiKey::ApiVersions,
                3,
                Some(CLIENT_ID.to_owned()),
                Some(crate::SOFTWARE_NAME.to_owned())
            ),
            (ApiKey::Metadata, 12, Some(CLIENT_ID.to_owned()), None),
        ]
    );
}

#[tokio::test]
async fn the_caller_can_cap_a_version_and_nothing_is_sent_outside_both_ranges() {
    let (broker, log) = broker(modern(), plain).await;
    let (mut conn, deadline) = connect(&broker).await;
    assert_eq!(conn.version::<FetchRequest>().expect("fetch"), 16);
    let pinned = conn.version_at_most::<FetchRequest>(12).expect("pinned");
    assert_eq!(pinned, 12);
    conn.send_at(&FetchRequest::default(), pinned, deadline)
        .await
        .expect("fetch v12");
    // Below what kafka-protocol can write (Fetch v4+): no usable version.
    let err = conn
        .version_at_most::<FetchRequest>(3)
        .expect_err("too low");
    assert!(
        matches!(err, ClientError::Unsupported { api_key: ApiKey::Fetch, client, .. } if client.max == 3),
        "{err}"
    );
    // Beyond what the broker offers: refused here, the connection stays usable.
    let err = conn
        .send_at(&FetchRequest::default(), 17, deadline)
        .await
        .expect_err("v17");
    assert!(
        matches!(
            err,
            ClientError::VersionNotSupported {
                version: 17,
                broker: Some(VersionRange { min: 4, max: 16 }),
                ..
            }
        ),
        "{err}"
    );
    assert!(conn.is_usable());
    let fetches: Vec<i16> = log
        .lock()
        .expect("lock")
        .iter()
        .filter(|(k, ..)| *k == ApiKey::Fetch)
        .map(|(_, v, ..)| *v)
        .collect();
    assert_eq!(fetches, vec![12]);
}

#[tokio::test]
async fn an_api_the_broker_does_not_offer_is_unsupported() {
    let (broker, _) = broker(vec![(ApiKey::ApiVersions, 0, 3)], plain).await;
    let (mut conn, deadline) = connect(&broker).await;
    let err = conn
        .send(&MetadataRequest::default(), deadline)
        .await
        .expect_err("not offered");
    assert_eq!(
        err.to_string(),
        format!(
            "broker {} does not support Metadata at any version this client can use \
             (client 0..13, broker not offered)",
            broker.addr
        )
    );
}

#[tokio::test]
async fn a_silent_broker_times_out_and_poisons_the_connection() {
    let (broker, _) = broker(modern(), |_, _| Some(Bytes::new())).await;
    let (mut conn, _) = connect(&broker).await;
    let started = std::time::Instant::now();
    let err = conn
        .send(&MetadataRequest::default(), Deadline::after_ms(100))
        .await
        .expect_err("silent");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(
            err,
            ClientError::TimedOut {
                waiting: Waiting::Response(ApiKey::Metadata),
                timeout_ms: 100,
                ..
            }
        ),
        "{err}"
    );
    assert!(!conn.is_usable());
    let err = conn
        .send(&MetadataRequest::default(), Deadline::after_ms(5_000))
        .await
        .expect_err("poisoned");
    assert!(matches!(err, ClientError::Poisoned { .. }), "{err}");
}

#[tokio::test]
async fn a_cancelled_call_poisons_the_connection() {
    let (broker, _) = broker(modern(), |_, _| Some(Bytes::new())).await;
    let (mut conn, deadline) = connect(&broker).await;
    let request = MetadataRequest::default();
    let cancelled =
        tokio::time::timeout(Duration::from_millis(50), conn.send(&request, deadline)).await;
    assert!(cancelled.is_err(), "the broker never answers");
    assert!(!conn.is_usable());
}

#[tokio::test]
async fn an_oversized_frame_is_refused_before_it_is_read() {
    let claim = i32::try_from(crate::RESPONSE_BYTES_MAX + 1).expect("fits");
    let (broker, _) = broker(modern(), move |_, _| {
        Some(Bytes::copy_from_slice(&claim.to_be_bytes()))
    })
    .await;
    let (mut conn, deadline) = connect(&broker).await;
    let err = conn
        .send(&MetadataRequest::default(), deadline)
        .await
        .expect_err("too large");
    assert!(
        matches!(&err, ClientError::FrameTooLarge { len, .. } if *len == i64::from(claim)),
        "{err}"
    );
    assert!(!conn.is_usable());
}

#[tokio::test]
async fn a_cluster_reopens_a_connection_a_bad_response_poisoned() {
    // The first Metadata answer carries someone else's correlation id.
    let (broker, log) = broker(modern(), |n, req| {
        (n == 1).then(|| {
            response_frame(
                &MetadataResponse::default(),
                req.header.correlation_id + 100,
                req.version,
            )
        })
    })
    .await;
    let mut cluster = Cluster::new(
        &broker.addr,
        ClientConfig::new(CLIENT_ID),
        Deadline::after_ms(5_000),
    );
    let addr = broker.addr.clone();
    let err = cluster
        .send(&addr, |_| MetadataRequest::default())
        .await
        .expect_err("mismatch");
    assert!(
        matches!(
            err,
            ClientError::Protocol {
                api_key: ApiKey::Metadata,
                version: 12,
                error: ProtocolError::CorrelationMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
    let (version, response) = cluster
        .send(&addr, |_| MetadataRequest::default())
        .await
        .expect("second try on a new connection");
    assert_eq!((version, response.controller_id), (12, BrokerId(3)));
    let connects = log
        .lock()
        .expect("lock")
        .iter()
        .filter(|(k, ..)| *k == ApiKey::ApiVersions)
        .count();
    assert_eq!(connects, 2);
}

#[tokio::test]
async fn an_unreachable_broker_fails_clearly() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let addr = format!("127.0.0.1:{port}");
    let err = Connection::connect(
        &addr,
        &ClientConfig::new(CLIENT_ID),
        Deadline::after_ms(2_000),
    )
    .await
    .err()
    .expect("refused");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot connect to broker {addr}: ")),
        "{err}"
    );
}

/// An address nothing listens on (connecting is refused at once).
fn refused_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("127.0.0.1:{}", l.local_addr().expect("addr").port())
}

#[tokio::test]
async fn a_bootstrap_list_falls_through_to_an_address_that_answers_and_keeps_it() {
    let (broker, log) = broker(modern(), plain).await;
    let dead = refused_addr();
    // Spaces and empty entries, as people type them after `--bootstrap-server`.
    let mut cluster = Cluster::new(
        &format!(" {dead}, ,{} ,", broker.addr),
        ClientConfig::new(CLIENT_ID),
        Deadline::after_ms(5_000),
    );
    assert_eq!(cluster.bootstrap().await.expect("one answers"), broker.addr);
    let addr = cluster.bootstrap().await.expect("still answers");
    assert_eq!(addr, broker.addr);
    cluster
        .send(&addr, |_| MetadataRequest::default())
        .await
        .expect("metadata");
    // One connection (one ApiVersions): the second call reused the address that answered.
    let versions = log
        .lock()
        .expect("lock")
        .iter()
        .filter(|(key, ..)| *key == ApiKey::ApiVersions)
        .count();
    assert_eq!(versions, 1);
}

#[tokio::test]
async fn a_bootstrap_list_of_dead_addresses_fails_naming_one() {
    let (a, b) = (refused_addr(), refused_addr());
    let mut cluster = Cluster::new(
        &format!("{a},{b}"),
        ClientConfig::new(CLIENT_ID),
        Deadline::after_ms(2_000),
    );
    let err = cluster.bootstrap().await.expect_err("none answers");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot connect to broker {b}: ")),
        "{err}"
    );
    // An empty list is an error too, not a panic.
    let mut empty = Cluster::new(
        " , ",
        ClientConfig::new(CLIENT_ID),
        Deadline::after_ms(2_000),
    );
    assert!(empty.bootstrap().await.is_err());
}
