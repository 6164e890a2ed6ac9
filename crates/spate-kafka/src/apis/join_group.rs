//! JoinGroup: answered when the group's rebalance completes (all members rejoined, the
//! rebalance timeout, or `group.initial.rebalance.delay.ms` for a new group).

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors::group_code;
use crate::groups::{coordinator, opt_string, str_bytes, string};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::protocol::VersionRange;
use spate_coordinator::JoinRequest;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 9 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: JoinGroupRequest,
) -> Reply<JoinGroupResponse> {
    let version = ctx.version();
    let coordinator = match coordinator(broker).await {
        Ok(c) => c.clone(),
        Err(e) => {
            return Reply::Now(
                JoinGroupResponse::default()
                    .with_error_code(e.code.code())
                    .with_generation_id(-1)
                    .with_member_id(request.member_id),
            )
        }
    };
    let join = JoinRequest {
        group_id: string(&request.group_id.0),
        member_id: string(&request.member_id),
        instance_id: opt_string(&request.group_instance_id),
        client_id: ctx
            .header
            .client_id
            .as_ref()
            .map(string)
            .unwrap_or_default(),
        client_host: ctx.peer.map(|p| format!("/{}", p.ip())).unwrap_or_default(),
        session_timeout_ms: request.session_timeout_ms,
        // v0 had one timeout for both.
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: string(&request.protocol_type),
        protocols: request
            .protocols
            .iter()
            .map(|p| (string(&p.name), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
        supports_skip_assignment: version >= 9,
    };
    Reply::Later(Box::pin(async move {
        let r = coordinator.join(join).await;
        let members = r
            .members
            .into_iter()
            .map(|m| {
                JoinGroupResponseMember::default()
                    .with_member_id(str_bytes(m.member_id))
                    .with_group_instance_id(m.instance_id.map(str_bytes))
                    .with_metadata(m.metadata)
            })
            .collect();
        // Before v7 the protocol name is a non-null string.
        let protocol_name = match r.protocol_name {
            Some(p) => Some(str_bytes(p)),
            None if version < 7 => Some(str_bytes("")),
            None => None,
        };
        JoinGroupResponse::default()
            .with_error_code(group_code(r.error))
            .with_generation_id(r.generation_id)
            .with_protocol_type(r.protocol_type.map(str_bytes))
            .with_protocol_name(protocol_name)
            .with_leader(str_bytes(r.leader))
            .with_skip_assignment(r.skip_assignment && version >= 9)
            .with_member_id(str_bytes(r.member_id))
            .with_members(members)
    }))
}
