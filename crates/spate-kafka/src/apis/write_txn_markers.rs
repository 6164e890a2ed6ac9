//! WriteTxnMarkers: a transaction coordinator on another node asks this partition leader to
//! write COMMIT or ABORT markers. Each is answered once durable on the partition's in-sync
//! replicas; a marker from a coordinator older than one the partition has seen is refused
//! (TRANSACTION_COORDINATOR_FENCED), as is one for a producer epoch older than the
//! partition's (INVALID_PRODUCER_EPOCH).

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::groups::string;
use crate::markers::write_local;
use futures::future::join_all;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use kafka_protocol::protocol::VersionRange;
use spate_log::TxnMarker;
use spate_types::{ProducerEpoch, ProducerId, TopicPartition};
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 1, max: 1 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: WriteTxnMarkersRequest,
) -> Reply<WriteTxnMarkersResponse> {
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let mut markers = Vec::with_capacity(request.markers.len());
        for m in request.markers {
            let marker = TxnMarker {
                producer_id: ProducerId(m.producer_id.0),
                producer_epoch: ProducerEpoch(m.producer_epoch),
                coordinator_epoch: m.coordinator_epoch,
                commit: m.transaction_result,
            };
            let mut topics = Vec::with_capacity(m.topics.len());
            for t in m.topics {
                let name = string(&t.name.0);
                let writes = t.partition_indexes.iter().map(|p| {
                    let tp = TopicPartition::new(name.clone(), *p);
                    let broker = broker.clone();
                    async move { write_local(&broker, &tp, marker).await }
                });
                let results = join_all(writes).await;
                topics.push(
                    WritableTxnMarkerTopicResult::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partition_indexes
                                .iter()
                                .zip(results)
                                .map(|(p, r)| {
                                    WritableTxnMarkerPartitionResult::default()
                                        .with_partition_index(*p)
                                        .with_error_code(r.err().map_or(0, |e| e.code()))
                                })
                                .collect(),
                        ),
                );
            }
            markers.push(
                WritableTxnMarkerResult::default()
                    .with_producer_id(m.producer_id)
                    .with_topics(topics),
            );
        }
        WriteTxnMarkersResponse::default().with_markers(markers)
    }))
}
