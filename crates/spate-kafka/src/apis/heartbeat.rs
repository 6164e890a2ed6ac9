//! Heartbeat: keeps a member's session alive; REBALANCE_IN_PROGRESS tells it to rejoin.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors::group_code;
use crate::groups::{coordinator, opt_string, string};
use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};
use kafka_protocol::protocol::VersionRange;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 4 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: HeartbeatRequest,
) -> Reply<HeartbeatResponse> {
    let code = match coordinator(broker).await {
        Ok(c) => group_code(
            c.heartbeat(spate_coordinator::HeartbeatRequest {
                group_id: string(&request.group_id.0),
                generation_id: request.generation_id,
                member_id: string(&request.member_id),
                instance_id: opt_string(&request.group_instance_id),
            })
            .await
            .err(),
        ),
        Err(e) => e.code.code(),
    };
    Reply::Now(HeartbeatResponse::default().with_error_code(code))
}
