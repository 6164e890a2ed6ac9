//! The client's one error type, and Kafka error codes read into it.
//!
//! Connection-level failures carry the broker address; a Kafka error code in a response becomes
//! [`ClientError::Kafka`] with the [`ResponseError`] itself (and the broker's message, where
//! the response has one), so callers match on the code rather than on text.

use crate::codec::{REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::VersionRange;
use std::fmt;

/// What a call that ran out of time was waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// The TCP connection to be established.
    Connect,
    /// The response to a request with this API key.
    Response(ApiKey),
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waiting::Connect => f.write_str("a TCP connection"),
            Waiting::Response(api_key) => write!(f, "the {api_key:?} response"),
        }
    }
}

/// A response that does not fit the request it answers.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("response has correlation id {received}, expected {expected}")]
    CorrelationMismatch { expected: i32, received: i32 },
    /// `kafka-protocol` reports decoding failures as `anyhow` errors.
    #[error("cannot decode the response: {0:#}")]
    Decode(anyhow::Error),
    #[error("ApiVersions did not settle on a version")]
    VersionsNotSettled,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to broker {addr}: {error}")]
    Unreachable { addr: String, error: std::io::Error },
    #[error("timed out after {timeout_ms} ms waiting for {waiting} ({addr})")]
    TimedOut {
        addr: String,
        waiting: Waiting,
        timeout_ms: u64,
    },
    #[error("connection to {addr} failed: {error}")]
    Io { addr: String, error: std::io::Error },
    #[error("broker {addr} sent a response frame of {len} bytes (limit {RESPONSE_BYTES_MAX}); is it a Kafka listener?")]
    FrameTooLarge { addr: String, len: i64 },
    #[error("protocol error talking to {addr} ({api_key:?} v{version}): {error}")]
    Protocol {
        addr: String,
        api_key: ApiKey,
        version: i16,
        error: ProtocolError,
    },
    #[error("a {api_key:?} request of {size} bytes exceeds the limit of {REQUEST_BYTES_MAX}")]
    RequestTooLarge { api_key: ApiKey, size: usize },
    /// `kafka-protocol` refuses to encode a field the chosen version does not have.
    #[error("cannot encode a {api_key:?} v{version} request: {error:#}")]
    Encode {
        api_key: ApiKey,
        version: i16,
        error: anyhow::Error,
    },
    #[error("broker {addr} does not support {api_key:?} at any version this client can use (client {client}, broker {})", offered(broker))]
    Unsupported {
        addr: String,
        api_key: ApiKey,
        /// What this client can send, after any cap the caller put on it.
        client: VersionRange,
        broker: Option<VersionRange>,
    },
    #[error(
        "{api_key:?} v{version} is not usable with broker {addr} (client {client}, broker {})",
        offered(broker)
    )]
    VersionNotSupported {
        addr: String,
        api_key: ApiKey,
        version: i16,
        client: VersionRange,
        broker: Option<VersionRange>,
    },
    /// An earlier call failed or was cancelled part way through a request, so the stream may
    /// hold half a frame; the connection must be dropped and a new one opened.
    #[error("the connection to {addr} was left part way through a request; open a new one")]
    Poisoned { addr: String },
    #[error("{context}: {}", kafka_text(*error, message.as_deref()))]
    Kafka {
        context: String,
        error: ResponseError,
        /// The broker's own explanation, where the response carries one.
        message: Option<String>,
    },
}

impl ClientError {
    /// The Kafka error code, if this is one.
    pub fn kafka_error(&self) -> Option<ResponseError> {
        match self {
            ClientError::Kafka { error, .. } => Some(*error),
            _ => None,
        }
    }

    /// Errors that go away by asking again (possibly after finding the coordinator again).
    pub fn is_coordinator_retriable(&self) -> bool {
        matches!(
            self.kafka_error(),
            Some(
                ResponseError::CoordinatorNotAvailable
                    | ResponseError::CoordinatorLoadInProgress
                    | ResponseError::NotCoordinator
            )
        )
    }
}

fn offered(broker: &Option<VersionRange>) -> String {
    broker.map_or_else(|| "not offered".to_owned(), |b| b.to_string())
}

fn kafka_text(error: ResponseError, message: Option<&str>) -> String {
    match message.map(str::trim) {
        Some(message) if !message.is_empty() => format!("{}: {message}", error_name(error)),
        _ => format!("{} ({error})", error_name(error)),
    }
}

/// Kafka's name for an error, e.g. `COORDINATOR_NOT_AVAILABLE`.
pub fn error_name(error: ResponseError) -> String {
    if let ResponseError::Unknown(code) = error {
        return format!("UNKNOWN_ERROR_CODE_{code}");
    }
    let camel = format!("{error:?}");
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
    check_message(code, None, context)
}

/// `Ok(())` for error code 0, else the error with `context` and the broker's `message`.
pub fn check_message(
    code: i16,
    message: Option<&str>,
    context: impl FnOnce() -> String,
) -> Result<(), ClientError> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(error) => Err(ClientError::Kafka {
            context: context(),
            error,
            message: message.map(str::to_owned),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            err.kafka_error(),
            Some(ResponseError::CoordinatorLoadInProgress)
        );
        assert!(err
            .to_string()
            .starts_with("DescribeGroups g1: COORDINATOR_LOAD_IN_PROGRESS ("));
        assert!(check(0, || unreachable!()).is_ok());
    }

    #[test]
    fn the_brokers_message_replaces_the_generic_description() {
        let err = check_message(38, Some("only 1 broker(s) are registered"), || {
            "cannot create topic t".to_owned()
        })
        .expect_err("error");
        assert_eq!(
            err.to_string(),
            "cannot create topic t: INVALID_REPLICATION_FACTOR: only 1 broker(s) are registered"
        );
        assert!(!err.is_coordinator_retriable());
        let blank = check_message(36, Some(" "), || "t".to_owned()).expect_err("error");
        assert!(
            blank.to_string().starts_with("t: TOPIC_ALREADY_EXISTS ("),
            "{blank}"
        );
    }

    #[test]
    fn unsupported_names_what_each_side_offers() {
        let err = ClientError::Unsupported {
            addr: "b:9092".into(),
            api_key: ApiKey::Fetch,
            client: VersionRange { min: 4, max: 12 },
            broker: None,
        };
        assert_eq!(
            err.to_string(),
            "broker b:9092 does not support Fetch at any version this client can use \
             (client 4..12, broker not offered)"
        );
    }
}
