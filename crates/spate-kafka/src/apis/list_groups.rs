//! ListGroups: every group this node coordinates, filtered by state (v4+) and type (v5+).

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::groups::{str_bytes, string};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::VersionRange;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: ListGroupsRequest,
) -> Reply<ListGroupsResponse> {
    // No coordinator yet means no group was ever used on this node.
    let Some(coordinator) = broker.groups.get() else {
        return Reply::Now(ListGroupsResponse::default());
    };
    let states: Vec<String> = request.states_filter.iter().map(string).collect();
    let types: Vec<String> = request.types_filter.iter().map(string).collect();
    let listed = match coordinator
        .query(move |core, _| core.list_groups(&states, &types))
        .await
    {
        Ok(listed) => listed,
        Err(e) => {
            return Reply::Now(
                ListGroupsResponse::default()
                    .with_error_code(crate::errors::group_error(&e).code()),
            )
        }
    };
    let groups = listed
        .into_iter()
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(g.group_id)))
                .with_protocol_type(str_bytes(g.protocol_type))
                .with_group_state(str_bytes(g.state.name()))
                .with_group_type(str_bytes("classic"))
        })
        .collect();
    Reply::Now(ListGroupsResponse::default().with_groups(groups))
}
