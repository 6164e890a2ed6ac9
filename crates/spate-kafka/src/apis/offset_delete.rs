//! OffsetDelete: removes committed offsets of an empty group, or of topics its members do
//! not subscribe to (GROUP_SUBSCRIBED_TO_TOPIC otherwise).

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors::{group_code, group_error};
use crate::groups::{coordinator, string};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 0 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: OffsetDeleteRequest,
) -> Reply<OffsetDeleteResponse> {
    let coordinator = match coordinator(broker).await {
        Ok(c) => c,
        Err(e) => {
            return Reply::Now(OffsetDeleteResponse::default().with_error_code(e.code.code()))
        }
    };
    let image = broker.image();
    let mut partitions = Vec::new();
    for t in &request.topics {
        for p in &t.partitions {
            partitions.push((string(&t.name.0), p.partition_index));
        }
    }
    let group = string(&request.group_id.0);
    let wanted = partitions.clone();
    let owner = group.clone();
    let result = coordinator
        .query_group(&owner, move |core, _, _| {
            core.delete_offsets(&group, &wanted)
        })
        .await
        .and_then(|r| r);
    let errors = match result {
        Ok(errors) => errors,
        Err(e) => {
            return Reply::Now(
                OffsetDeleteResponse::default().with_error_code(group_error(&e).code()),
            )
        }
    };
    let mut i = 0;
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let name = string(&t.name.0);
            let count = image
                .topics
                .get(&name)
                .map_or(0, |t| t.partitions.len() as i32);
            let parts = t
                .partitions
                .iter()
                .map(|p| {
                    let error = errors.get(i).copied().flatten();
                    i += 1;
                    let code = if !(0..count).contains(&p.partition_index) {
                        ResponseError::UnknownTopicOrPartition.code()
                    } else {
                        group_code(error)
                    };
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(parts)
        })
        .collect();
    Reply::Now(OffsetDeleteResponse::default().with_topics(topics))
}
