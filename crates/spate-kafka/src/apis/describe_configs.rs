//! DescribeConfigs: a topic's configs (overrides and the defaults behind them), a group's
//! configs (KIP-848: Kafka's defaults and the group's overrides, for any group id), and this
//! broker's own settings, each with its source, synonyms (when asked), type and documentation
//! (v3+, when asked). See [`crate::configs`] for how sources are decided.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::configs::{self, ConfigEntry, RESOURCE_BROKER, RESOURCE_GROUP, RESOURCE_TOPIC};
use crate::topics::ApiError;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use spate_types::{validate_topic_name, NodeId};
use std::collections::BTreeSet;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 1, max: 4 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: DescribeConfigsRequest,
) -> Reply<DescribeConfigsResponse> {
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match describe(broker, &resource) {
                Ok(entries) => {
                    let configs = filter(entries, resource.configuration_keys.as_deref())
                        .into_iter()
                        .map(|e| render(e, request.include_synonyms, request.include_documentation))
                        .collect();
                    result.with_error_message(None).with_configs(configs)
                }
                Err(e) => {
                    tracing::debug!(
                        resource = %resource.resource_name.as_str(),
                        code = ?e.code,
                        message = %e.message,
                        "describe configs refused",
                    );
                    result
                        .with_error_code(e.code.code())
                        .with_error_message(Some(StrBytes::from_string(e.message)))
                }
            }
        })
        .collect();
    Reply::Now(DescribeConfigsResponse::default().with_results(results))
}

fn describe(
    broker: &Broker,
    resource: &DescribeConfigsResource,
) -> Result<Vec<ConfigEntry>, ApiError> {
    let name = resource.resource_name.as_str();
    match resource.resource_type {
        RESOURCE_TOPIC => {
            validate_topic_name(name)
                .map_err(|reason| ApiError::new(ResponseError::InvalidTopicException, reason))?;
            let image = broker.image();
            let topic = image.topics.get(name).ok_or_else(|| {
                ApiError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("The topic '{name}' does not exist."),
                )
            })?;
            Ok(configs::topic_entries_on(
                &broker.config.log_defaults,
                &image,
                broker.config.node_id,
                &topic.configs,
            ))
        }
        RESOURCE_GROUP => {
            // Kafka answers for any group id, existing or not: defaults plus its overrides.
            if name.is_empty() {
                return Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    "Group name must not be empty",
                ));
            }
            let image = broker.image();
            Ok(configs::group_entries(image.resource_configs.group(name)))
        }
        RESOURCE_BROKER => match broker_resource(name, broker.config.node_id)? {
            // Only the cluster-wide dynamic configs that are set, as Kafka answers.
            BrokerResource::ClusterDefault => Ok(configs::cluster_broker_entries(
                &broker.image(),
                &broker.config.log_defaults,
            )),
            BrokerResource::ThisBroker => {
                Ok(configs::broker_entries_on(&broker.config, &broker.image()))
            }
        },
        other => Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!("Unsupported resource type: {other}"),
        )),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum BrokerResource {
    /// Empty name: the cluster-wide default.
    ClusterDefault,
    ThisBroker,
}

/// Which broker a BROKER resource names; Kafka answers only for itself.
fn broker_resource(name: &str, node: NodeId) -> Result<BrokerResource, ApiError> {
    if name.is_empty() {
        return Ok(BrokerResource::ClusterDefault);
    }
    let id: i32 = name.parse().map_err(|_| {
        ApiError::new(
            ResponseError::InvalidRequest,
            format!("Broker id must be an integer, but it is: {name}"),
        )
    })?;
    if id != node.0 {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!("Unexpected broker id, expected {node} or empty string, but received {name}"),
        ));
    }
    Ok(BrokerResource::ThisBroker)
}

/// Keeps the configs `keys` names; null or empty `keys` means all. Unknown names are ignored.
fn filter(entries: Vec<ConfigEntry>, keys: Option<&[StrBytes]>) -> Vec<ConfigEntry> {
    match keys {
        Some(keys) if !keys.is_empty() => {
            let wanted: BTreeSet<&str> = keys.iter().map(|k| k.as_str()).collect();
            entries
                .into_iter()
                .filter(|e| wanted.contains(e.name))
                .collect()
        }
        _ => entries,
    }
}

fn render(
    entry: ConfigEntry,
    include_synonyms: bool,
    include_documentation: bool,
) -> DescribeConfigsResourceResult {
    let synonyms = if include_synonyms {
        entry
            .synonyms
            .iter()
            .map(|s| {
                DescribeConfigsSynonym::default()
                    .with_name(StrBytes::from_static_str(s.name))
                    .with_value(Some(StrBytes::from_string(s.value.clone())))
                    .with_source(s.source.id())
            })
            .collect()
    } else {
        Vec::new()
    };
    DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_static_str(entry.name))
        .with_value(Some(StrBytes::from_string(entry.value)))
        .with_read_only(entry.read_only)
        .with_config_source(entry.source.id())
        .with_is_sensitive(false)
        .with_synonyms(synonyms)
        .with_config_type(configs::config_type(entry.kind))
        .with_documentation(include_documentation.then(|| StrBytes::from_static_str(entry.doc)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::configs::ConfigSource;
    use kafka_protocol::protocol::Encodable;
    use spate_log::LogConfig;
    use std::collections::BTreeMap;

    fn entries() -> Vec<ConfigEntry> {
        let overrides = BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned())]);
        configs::topic_entries(&LogConfig::default(), &overrides)
    }

    #[test]
    fn configuration_keys_filter_null_or_empty_means_all() {
        let all = entries().len();
        assert_eq!(filter(entries(), None).len(), all);
        assert_eq!(filter(entries(), Some(&[])).len(), all);
        let keys = [
            StrBytes::from_static_str("retention.ms"),
            StrBytes::from_static_str("no.such.config"),
        ];
        let kept = filter(entries(), Some(&keys));
        assert_eq!(
            kept.iter().map(|e| e.name).collect::<Vec<_>>(),
            vec!["retention.ms"]
        );
    }

    #[test]
    fn synonyms_and_documentation_only_when_asked() {
        let retention = || {
            filter(
                entries(),
                Some(&[StrBytes::from_static_str("retention.ms")]),
            )
            .remove(0)
        };
        let bare = render(retention(), false, false);
        assert!(bare.synonyms.is_empty());
        assert_eq!(bare.documentation, None);
        assert_eq!(bare.config_source, ConfigSource::DynamicTopic.id());
        assert_eq!(bare.config_type, 5, "LONG");
        let full = render(retention(), true, true);
        let sources: Vec<i8> = full.synonyms.iter().map(|s| s.source).collect();
        assert_eq!(sources, vec![1, 5]);
        assert!(full.documentation.is_some());
    }

    #[test]
    fn rendered_configs_encode_in_every_supported_version() {
        let result = DescribeConfigsResult::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(StrBytes::from_static_str("t"))
            .with_error_message(None)
            .with_configs(
                entries()
                    .into_iter()
                    .map(|e| render(e, true, true))
                    .collect(),
            );
        let response = DescribeConfigsResponse::default().with_results(vec![result]);
        for version in VERSIONS.min..=VERSIONS.max {
            let mut buf = bytes::BytesMut::new();
            response
                .encode(&mut buf, version)
                .unwrap_or_else(|e| panic!("v{version}: {e}"));
        }
    }

    #[test]
    fn broker_resources_name_only_this_broker() {
        let node = NodeId(1);
        assert_eq!(
            broker_resource("", node).unwrap(),
            BrokerResource::ClusterDefault
        );
        assert_eq!(
            broker_resource("1", node).unwrap(),
            BrokerResource::ThisBroker
        );
        let other = broker_resource("2", node).unwrap_err();
        assert_eq!(other.code, ResponseError::InvalidRequest);
        assert!(
            other.message.contains("Unexpected broker id"),
            "{}",
            other.message
        );
        assert_eq!(
            broker_resource("one", node).unwrap_err().code,
            ResponseError::InvalidRequest
        );
    }

    #[test]
    fn group_configs_render_with_group_source_and_encode() {
        let overrides =
            BTreeMap::from([("consumer.session.timeout.ms".to_owned(), "50000".to_owned())]);
        let rendered: Vec<_> = configs::group_entries(&overrides)
            .into_iter()
            .map(|e| render(e, true, true))
            .collect();
        let session = rendered
            .iter()
            .find(|r| r.name.as_str() == "consumer.session.timeout.ms")
            .unwrap();
        assert_eq!(session.value.as_deref(), Some("50000"));
        assert_eq!(session.config_source, 8, "GROUP_CONFIG");
        assert_eq!(session.config_type, 3, "INT");
        assert!(!session.read_only);
        let sources: Vec<i8> = session.synonyms.iter().map(|s| s.source).collect();
        assert_eq!(sources, vec![8, 5]);
        let doc = session.documentation.as_deref().unwrap();
        assert!(doc.contains("classic protocol"), "{doc}");
        let response =
            DescribeConfigsResponse::default().with_results(vec![DescribeConfigsResult::default()
                .with_resource_type(RESOURCE_GROUP)
                .with_resource_name(StrBytes::from_static_str("g"))
                .with_error_message(None)
                .with_configs(rendered)]);
        for version in VERSIONS.min..=VERSIONS.max {
            let mut buf = bytes::BytesMut::new();
            response
                .encode(&mut buf, version)
                .unwrap_or_else(|e| panic!("v{version}: {e}"));
        }
    }
}
