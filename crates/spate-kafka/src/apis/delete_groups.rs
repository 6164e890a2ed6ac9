//! DeleteGroups: removes empty groups and their committed offsets (NON_EMPTY_GROUP while
//! members remain, GROUP_ID_NOT_FOUND for an unknown group).

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors::group_error;
use crate::groups::{coordinator, string};
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};
use kafka_protocol::protocol::VersionRange;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: DeleteGroupsRequest,
) -> Reply<DeleteGroupsResponse> {
    let coordinator = coordinator(broker).await;
    let mut results = Vec::with_capacity(request.groups_names.len());
    for id in request.groups_names {
        let code = match &coordinator {
            Err(e) => e.code.code(),
            Ok(c) => {
                let name = string(&id.0);
                let group = name.clone();
                match c
                    .query_group(&group, move |core, _, _| core.delete_group(&name))
                    .await
                {
                    Ok(Ok(())) => {
                        tracing::info!(group = %id.0.as_str(), "deleted group");
                        0
                    }
                    Ok(Err(e)) | Err(e) => group_error(&e).code(),
                }
            }
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(code),
        );
    }
    Reply::Now(DeleteGroupsResponse::default().with_results(results))
}
