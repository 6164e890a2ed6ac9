//! DescribeGroups: state, protocol and members (metadata and assignment bytes as the clients
//! sent them); an unknown group is described as Dead, as Kafka does before v6.

use super::metadata::authorized;
use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::groups::{coordinator, str_bytes, string};
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::VersionRange;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: DescribeGroupsRequest,
) -> Reply<DescribeGroupsResponse> {
    let coordinator = match coordinator(broker).await {
        Ok(c) => c,
        Err(e) => {
            let groups = request
                .groups
                .into_iter()
                .map(|id| {
                    DescribedGroup::default()
                        .with_group_id(id)
                        .with_error_code(e.code.code())
                })
                .collect();
            return Reply::Now(DescribeGroupsResponse::default().with_groups(groups));
        }
    };
    let request_ops = request.include_authorized_operations;
    let mut groups = Vec::with_capacity(request.groups.len());
    for id in request.groups {
        let name = string(&id.0);
        let group = name.clone();
        let d = match coordinator
            .query_group(&group, move |core, _, _| core.describe_group(&name))
            .await
        {
            Ok(d) => d,
            Err(e) => {
                groups.push(
                    DescribedGroup::default()
                        .with_group_id(id)
                        .with_error_code(crate::errors::group_error(&e).code()),
                );
                continue;
            }
        };
        let members = d
            .members
            .into_iter()
            .map(|m| {
                DescribedGroupMember::default()
                    .with_member_id(str_bytes(m.member_id))
                    .with_group_instance_id(m.instance_id.map(str_bytes))
                    .with_client_id(str_bytes(m.client_id))
                    .with_client_host(str_bytes(m.client_host))
                    .with_member_metadata(m.metadata)
                    .with_member_assignment(m.assignment)
            })
            .collect();
        groups.push(
            DescribedGroup::default()
                .with_group_id(id)
                .with_group_state(str_bytes(d.state.name()))
                .with_protocol_type(str_bytes(d.protocol_type))
                .with_protocol_data(str_bytes(d.protocol))
                .with_members(members)
                .with_authorized_operations(authorized::if_requested(
                    request_ops,
                    authorized::GROUP,
                )),
        );
    }
    Reply::Now(DescribeGroupsResponse::default().with_groups(groups))
}
