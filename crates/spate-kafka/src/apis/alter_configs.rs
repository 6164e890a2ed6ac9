//! AlterConfigs (the legacy, non-incremental API): replaces a topic's or a group's overrides
//! with exactly the configs sent; any override not listed is removed, as in Kafka. The new map is validated
//! whole before it is committed (INVALID_CONFIG with the reason); `validate_only` stops there.
//!
//! A broker resource replaces its dynamic broker configs (per broker, or cluster-wide for "").
//! A resource named twice is refused, once per entry.
//!
//! Two concurrent AlterConfigs of one topic each replace the whole map, so the later one wins,
//! as in Kafka; they never interleave (compare-and-set in `configs::alter_topic_configs`).

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::configs;
use crate::topics::ApiError;
use kafka_protocol::messages::alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};
use kafka_protocol::protocol::VersionRange;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: AlterConfigsRequest,
) -> Reply<AlterConfigsResponse> {
    let keys = request
        .resources
        .iter()
        .map(|r| (r.resource_type, r.resource_name.as_str().to_owned()))
        .collect();
    let resources = &request.resources;
    let outcomes = configs::alter_resources(keys, |i| {
        alter(broker, &resources[i], request.validate_only)
    })
    .await;
    let responses = resources
        .iter()
        .zip(outcomes)
        .map(|(resource, outcome)| {
            let (code, message) =
                configs::outcome_fields("alter configs", resource.resource_name.as_str(), outcome);
            AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect::<Vec<_>>();
    Reply::Now(AlterConfigsResponse::default().with_responses(responses))
}

async fn alter(
    broker: &Broker,
    resource: &AlterConfigsResource,
    validate_only: bool,
) -> Result<(), ApiError> {
    if let Some(e) = configs::unalterable_resource(resource.resource_type) {
        return Err(e);
    }
    if resource.resource_type == configs::RESOURCE_GROUP {
        let group = configs::group_resource(resource.resource_name.as_str())?;
        let replacement = configs::group_override_map(
            resource
                .configs
                .iter()
                .map(|c| (c.name.as_str(), c.value.as_deref())),
        )?;
        return configs::alter_stored_configs(
            broker,
            &configs::StoredResource::Group(group.to_owned()),
            validate_only,
            |_current, _image| Ok(replacement.clone()),
            |new, _image| configs::validate_group_overrides(new),
        )
        .await;
    }
    if resource.resource_type == configs::RESOURCE_BROKER {
        let node =
            configs::broker_alter_resource(resource.resource_name.as_str(), &broker.image())?;
        let replacement = configs::override_map(
            resource
                .configs
                .iter()
                .map(|c| (c.name.as_str(), c.value.as_deref())),
        )?;
        let defaults = &broker.config.log_defaults;
        return configs::alter_stored_configs(
            broker,
            &configs::StoredResource::Broker(node),
            validate_only,
            |_current, _image| Ok(replacement.clone()),
            |new, image| configs::validate_broker_overrides(node, new, image, defaults),
        )
        .await;
    }
    // The complete new override map: what was sent, nothing else.
    let replacement = configs::override_map(
        resource
            .configs
            .iter()
            .map(|c| (c.name.as_str(), c.value.as_deref())),
    )?;
    configs::alter_topic_configs(
        broker,
        resource.resource_name.as_str(),
        validate_only,
        |_current, _defaults| Ok(replacement.clone()),
    )
    .await
}
