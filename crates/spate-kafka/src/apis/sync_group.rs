//! SyncGroup: the leader's assignment is handed to every member; followers wait for it.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors::group_code;
use crate::groups::{coordinator, opt_string, str_bytes, string};
use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::VersionRange;
use spate_coordinator::SyncRequest;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: SyncGroupRequest,
) -> Reply<SyncGroupResponse> {
    let coordinator = match coordinator(broker).await {
        Ok(c) => c.clone(),
        Err(e) => return Reply::Now(SyncGroupResponse::default().with_error_code(e.code.code())),
    };
    let sync = SyncRequest {
        group_id: string(&request.group_id.0),
        generation_id: request.generation_id,
        member_id: string(&request.member_id),
        instance_id: opt_string(&request.group_instance_id),
        protocol_type: opt_string(&request.protocol_type),
        protocol_name: opt_string(&request.protocol_name),
        assignments: request
            .assignments
            .into_iter()
            .map(|a| (string(&a.member_id), a.assignment))
            .collect(),
    };
    Reply::Later(Box::pin(async move {
        let r = coordinator.sync(sync).await;
        SyncGroupResponse::default()
            .with_error_code(group_code(r.error))
            .with_protocol_type(r.protocol_type.map(str_bytes))
            .with_protocol_name(r.protocol_name.map(str_bytes))
            .with_assignment(r.assignment)
    }))
}
