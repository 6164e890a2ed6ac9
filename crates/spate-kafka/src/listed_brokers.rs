//! Which brokers a Metadata answer lists: the live (unfenced) ones, as Kafka does, and also a
//! fenced one (stopped, crashed or unreachable) for `metadata.fenced.broker.retention.ms` after
//! this node first saw it fenced.
//!
//! Why not drop it at once: librdkafka (2.10 and later) retires every broker a Metadata answer
//! leaves out, but its coordinator cache can still point at the retired broker. A coordinator
//! request (a transactional producer's TxnOffsetCommit above all) then waits for that broker to
//! come up, which it never does, and only asks FindCoordinator again when some other broker's
//! connection changes state: `send_offsets_to_transaction` hangs past its own timeout
//! (librdkafka issue 5511). While the dead broker is still listed, the client keeps trying to
//! connect to it, each failure wakes the waiting request, and the request looks the coordinator
//! up again. The client's cache forgets an entry unused for its `metadata.max.age.ms` (15
//! minutes by default), the default retention here, so a client with default settings never
//! holds a cached coordinator on a broker it has retired.
//!
//! The cost is small: clients connect to a broker only to reach a partition leader or a
//! coordinator, and a fenced broker is neither; Java's and kafka-python's clients pick a
//! connected broker first for their own Metadata requests.

use spate_controller::{BrokerEndpoint, MetadataImage};
use spate_types::NodeId;
use std::collections::BTreeMap;

/// When this node first saw each registered broker fenced (milliseconds of the broker clock).
/// Holds at most one entry per registered broker.
#[derive(Debug, Default)]
pub(crate) struct FencedSince {
    since: BTreeMap<NodeId, i64>,
}

impl FencedSince {
    /// The brokers to list at `now_ms`: every live one, and every fenced one first seen fenced
    /// less than `retention_ms` ago. Forgets brokers that are live again or no longer registered.
    pub(crate) fn listed<'a>(
        &mut self,
        image: &'a MetadataImage,
        now_ms: i64,
        retention_ms: i64,
    ) -> Vec<(&'a NodeId, &'a BrokerEndpoint)> {
        self.since
            .retain(|id, _| image.brokers.contains_key(id) && image.fenced.contains(id));
        image
            .brokers
            .iter()
            .filter(|(id, _)| {
                if !image.fenced.contains(id) {
                    return true;
                }
                let since = *self.since.entry(**id).or_insert(now_ms);
                now_ms.saturating_sub(since) < retention_ms
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(registered: &[i32], fenced: &[i32]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for id in registered {
            image.brokers.insert(
                NodeId(*id),
                BrokerEndpoint {
                    host: "127.0.0.1".into(),
                    port: 9000 + *id as u16,
                    rack: None,
                },
            );
        }
        image.fenced = fenced.iter().map(|id| NodeId(*id)).collect();
        image
    }

    fn ids(listed: Vec<(&NodeId, &BrokerEndpoint)>) -> Vec<i32> {
        listed.into_iter().map(|(id, _)| id.0).collect()
    }

    const RETENTION: i64 = 1_000;

    #[test]
    fn live_brokers_are_always_listed() {
        let mut f = FencedSince::default();
        let img = image(&[1, 2, 3], &[]);
        assert_eq!(ids(f.listed(&img, 0, RETENTION)), vec![1, 2, 3]);
        assert_eq!(ids(f.listed(&img, 1_000_000, RETENTION)), vec![1, 2, 3]);
        assert!(f.since.is_empty());
    }

    #[test]
    fn a_fenced_broker_is_listed_for_the_retention_from_when_it_was_first_seen_fenced() {
        let mut f = FencedSince::default();
        let img = image(&[1, 2, 3], &[2]);
        assert_eq!(ids(f.listed(&img, 5_000, RETENTION)), vec![1, 2, 3]);
        // Later answers do not move the start.
        assert_eq!(ids(f.listed(&img, 5_999, RETENTION)), vec![1, 2, 3]);
        assert_eq!(ids(f.listed(&img, 6_000, RETENTION)), vec![1, 3]);
        assert_eq!(ids(f.listed(&img, 60_000, RETENTION)), vec![1, 3]);
    }

    #[test]
    fn a_broker_live_again_and_fenced_again_gets_a_fresh_retention() {
        let mut f = FencedSince::default();
        assert_eq!(
            ids(f.listed(&image(&[1, 2], &[2]), 0, RETENTION)),
            vec![1, 2]
        );
        assert_eq!(
            ids(f.listed(&image(&[1, 2], &[2]), 2_000, RETENTION)),
            vec![1]
        );
        assert_eq!(
            ids(f.listed(&image(&[1, 2], &[]), 3_000, RETENTION)),
            vec![1, 2]
        );
        assert!(f.since.is_empty(), "forgotten once live: {:?}", f.since);
        assert_eq!(
            ids(f.listed(&image(&[1, 2], &[2]), 4_000, RETENTION)),
            vec![1, 2]
        );
        assert_eq!(
            ids(f.listed(&image(&[1, 2], &[2]), 4_999, RETENTION)),
            vec![1, 2]
        );
    }

    #[test]
    fn an_unregistered_broker_is_forgotten_and_never_listed() {
        let mut f = FencedSince::default();
        assert_eq!(
            ids(f.listed(&image(&[1, 2], &[2]), 0, RETENTION)),
            vec![1, 2]
        );
        // Fenced but no longer registered (an image can carry a stale fenced id).
        assert_eq!(ids(f.listed(&image(&[1], &[2]), 10, RETENTION)), vec![1]);
        assert!(f.since.is_empty(), "{:?}", f.since);
    }

    #[test]
    fn retention_zero_lists_only_live_brokers_as_kafka_does() {
        let mut f = FencedSince::default();
        assert_eq!(ids(f.listed(&image(&[1, 2, 3], &[1, 3]), 0, 0)), vec![2]);
    }
}
