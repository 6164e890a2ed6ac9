//! LeaveGroup: members leave at once (v3+ may name several, by member or instance id), so the
//! rest rebalance without waiting for a session timeout.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors::group_code;
use crate::groups::{coordinator, opt_string, str_bytes, string};
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};
use kafka_protocol::protocol::VersionRange;
use spate_coordinator::LeaveRequest;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

/// v3 (KIP-345) leaves several members in one request.
const BATCHED_VERSION: i16 = 3;

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: LeaveGroupRequest,
) -> Reply<LeaveGroupResponse> {
    let batched = ctx.version() >= BATCHED_VERSION;
    let members = if batched {
        request
            .members
            .iter()
            .map(|m| (string(&m.member_id), opt_string(&m.group_instance_id)))
            .collect()
    } else {
        vec![(string(&request.member_id), None)]
    };
    let coordinator = match coordinator(broker).await {
        Ok(c) => c,
        Err(e) => return Reply::Now(LeaveGroupResponse::default().with_error_code(e.code.code())),
    };
    let r = coordinator
        .leave(LeaveRequest {
            group_id: string(&request.group_id.0),
            members,
        })
        .await;
    if !batched {
        let error = r.error.or_else(|| r.members.first().and_then(|m| m.2));
        return Reply::Now(LeaveGroupResponse::default().with_error_code(group_code(error)));
    }
    let members = r
        .members
        .into_iter()
        .map(|(member_id, instance_id, error)| {
            MemberResponse::default()
                .with_member_id(str_bytes(member_id))
                .with_group_instance_id(instance_id.map(str_bytes))
                .with_error_code(group_code(error))
        })
        .collect();
    Reply::Now(
        LeaveGroupResponse::default()
            .with_error_code(group_code(r.error))
            .with_members(members),
    )
}
