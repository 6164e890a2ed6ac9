//! AlterConfigs (the legacy, non-incremental API): replaces a topic's overrides with exactly
//! the configs sent; any override not listed is removed, as in Kafka. The new map is validated
//! whole before it is committed (INVALID_CONFIG with the reason); `validate_only` stops there.
//!
//! Broker configs are read-only for now (INVALID_REQUEST, Kafka's code for broker configs it
//! cannot update dynamically). A resource named twice is refused, once per entry.
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
