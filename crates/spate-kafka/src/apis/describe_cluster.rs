//! DescribeCluster: the cluster id, the controller and the brokers.

use super::metadata::authorized;
use super::{Reply, RequestContext};
use crate::broker::Broker;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

/// KIP-919 endpoint types: this broker only has broker endpoints.
const ENDPOINT_TYPE_BROKERS: i8 = 1;

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: DescribeClusterRequest,
) -> Reply<DescribeClusterResponse> {
    let response = DescribeClusterResponse::default()
        .with_endpoint_type(ENDPOINT_TYPE_BROKERS)
        .with_cluster_id(StrBytes::from_string(broker.config.cluster_id.clone()))
        .with_cluster_authorized_operations(authorized::if_requested(
            request.include_cluster_authorized_operations,
            authorized::CLUSTER,
        ));
    if request.endpoint_type != ENDPOINT_TYPE_BROKERS {
        return Reply::Now(
            response
                .with_error_code(ResponseError::UnsupportedEndpointType.code())
                .with_error_message(Some(StrBytes::from_static_str(
                    "only broker endpoints are served here",
                ))),
        );
    }
    let image = broker.image();
    // Fenced brokers only when asked (v2, KIP-1073), marked as such.
    let brokers = image
        .brokers
        .iter()
        .filter(|(id, _)| request.include_fenced_brokers || !image.fenced.contains(id))
        .map(|(id, endpoint)| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(id.0))
                .with_host(StrBytes::from_string(endpoint.host.clone()))
                .with_port(i32::from(endpoint.port))
                .with_rack(endpoint.rack.clone().map(StrBytes::from_string))
                .with_is_fenced(image.fenced.contains(id))
        })
        .collect();
    // The active controller now, not the one that wrote the last applied entry.
    let controller = broker
        .controller
        .leader()
        .or(image.controller_id)
        .map_or(-1, |c| c.0);
    Reply::Now(
        response
            .with_controller_id(BrokerId(controller))
            .with_brokers(brokers),
    )
}
