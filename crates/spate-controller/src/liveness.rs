//! Broker liveness on the active controller, without I/O: heartbeats in, metadata commands out.
//!
//! Kafka's KRaft rules: a registered broker is fenced until it heartbeats having applied the
//! metadata log up to its own registration; an unfenced broker that sends no heartbeat for
//! `broker.session.timeout.ms` is fenced (its leaderships move, it leaves ISRs); a broker that
//! asks to shut down is fenced with `shutdown` and told when it leads nothing any more.
//!
//! Sessions live in memory on the active controller only. A controller that has just become
//! active gives every broker a full session from that moment, since it never saw their earlier
//! heartbeats. Commands it returns are proposals; the same change is not proposed again within
//! [`REPROPOSE_AFTER_MS`] while the image does not show it yet.
//!
//! A crashed process is fenced sooner than its session: when a broker's controller port refuses
//! connections (the transport reports since when: nothing listens there, so the process is
//! gone) and no heartbeat from it arrived since, it is fenced one heartbeat interval after the
//! first refusal. That holds for a new controller too, whose predecessor's process usually died
//! with it. A broker that is only unreachable (a partition, a paused process, a lost host) does
//! not refuse, and waits out its session as in Kafka.

use crate::metadata::{MetadataCommand, MetadataImage};
use crate::raft::network::{BrokerHeartbeat, HeartbeatReply};
use spate_types::NodeId;
use std::collections::BTreeMap;

/// How long a proposed change is awaited before it is proposed again.
pub(crate) const REPROPOSE_AFTER_MS: i64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Fence,
    Unfence,
    Shutdown,
}

#[derive(Debug)]
pub(crate) struct Liveness {
    session_timeout_ms: i64,
    /// How long after its port first refused a silent broker is fenced.
    refused_grace_ms: i64,
    last_seen_ms: BTreeMap<NodeId, i64>,
    /// When this node became the active controller; `None` while it is not.
    leading_since_ms: Option<i64>,
    proposed: BTreeMap<NodeId, (Change, i64)>,
}

impl Liveness {
    pub(crate) fn new(session_timeout_ms: i64, refused_grace_ms: i64) -> Self {
        Self {
            session_timeout_ms,
            refused_grace_ms,
            last_seen_ms: BTreeMap::new(),
            leading_since_ms: None,
            proposed: BTreeMap::new(),
        }
    }

    /// Whether this node is the active controller now. Gaining leadership starts every session
    /// afresh.
    pub(crate) fn set_leading(&mut self, now_ms: i64, leading: bool) {
        match (leading, self.leading_since_ms) {
            (true, None) => {
                self.leading_since_ms = Some(now_ms);
                self.last_seen_ms.clear();
                self.proposed.clear();
            }
            (false, Some(_)) => self.leading_since_ms = None,
            _ => {}
        }
    }

    fn should_propose(&mut self, now_ms: i64, node: NodeId, change: Change) -> bool {
        match self.proposed.get(&node) {
            Some((c, at)) if *c == change && now_ms - at < REPROPOSE_AFTER_MS => false,
            _ => {
                self.proposed.insert(node, (change, now_ms));
                true
            }
        }
    }

    /// Answers a heartbeat and says which change, if any, to propose for it.
    pub(crate) fn heartbeat(
        &mut self,
        now_ms: i64,
        hb: &BrokerHeartbeat,
        image: &MetadataImage,
    ) -> (HeartbeatReply, Option<MetadataCommand>) {
        if image.broker_epochs.get(&hb.node) != Some(&hb.broker_epoch) {
            let reply = HeartbeatReply {
                fenced: true,
                shutdown_ready: false,
                stale_epoch: true,
            };
            return (reply, None);
        }
        self.last_seen_ms.insert(hb.node, now_ms);
        let fenced = image.fenced.contains(&hb.node);
        let shutting_down = image.shutting_down.contains(&hb.node);
        let leads_nothing = image
            .topics
            .values()
            .flat_map(|t| &t.partitions)
            .all(|p| p.leader != hb.node);
        let mut command = None;
        if hb.want_shutdown {
            if !shutting_down && self.should_propose(now_ms, hb.node, Change::Shutdown) {
                command = Some(MetadataCommand::FenceBroker {
                    node: hb.node,
                    shutdown: true,
                });
            }
        } else if fenced
            && hb.applied_index >= hb.broker_epoch
            && self.should_propose(now_ms, hb.node, Change::Unfence)
        {
            command = Some(MetadataCommand::UnfenceBroker {
                node: hb.node,
                broker_epoch: hb.broker_epoch,
            });
        }
        if !fenced {
            self.clear_if(hb.node, Change::Unfence);
        }
        let reply = HeartbeatReply {
            fenced,
            shutdown_ready: shutting_down && leads_nothing,
            stale_epoch: false,
        };
        (reply, command)
    }

    fn clear_if(&mut self, node: NodeId, change: Change) {
        if self.proposed.get(&node).is_some_and(|(c, _)| *c == change) {
            self.proposed.remove(&node);
        }
    }

    /// Brokers whose session expired, or whose controller port has refused connections for the
    /// grace period with no heartbeat since (`refused`: broker → when refusals began), as fence
    /// proposals. Nothing while not leading.
    pub(crate) fn tick(
        &mut self,
        now_ms: i64,
        image: &MetadataImage,
        refused: &BTreeMap<NodeId, i64>,
    ) -> Vec<MetadataCommand> {
        let Some(since) = self.leading_since_ms else {
            return Vec::new();
        };
        let mut commands = Vec::new();
        for node in image.brokers.keys() {
            if image.fenced.contains(node) {
                self.clear_if(*node, Change::Fence);
                continue;
            }
            let heard = self.last_seen_ms.get(node).copied();
            let last = heard.unwrap_or(since).max(since);
            let expired = now_ms - last > self.session_timeout_ms;
            let gone = refused.get(node).is_some_and(|&refused_since| {
                heard.is_none_or(|h| h < refused_since)
                    && now_ms - refused_since >= self.refused_grace_ms
            });
            if (expired || gone) && self.should_propose(now_ms, *node, Change::Fence) {
                commands.push(MetadataCommand::FenceBroker {
                    node: *node,
                    shutdown: false,
                });
            }
        }
        // Forget brokers that are gone from the image.
        self.last_seen_ms
            .retain(|n, _| image.brokers.contains_key(n));
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::BrokerEndpoint;

    const SESSION: i64 = 3000;
    const GRACE: i64 = 400;

    fn image(brokers: &[(i32, u64, bool)]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for (node, epoch, fenced) in brokers {
            let id = NodeId(*node);
            image.brokers.insert(
                id,
                BrokerEndpoint {
                    host: "h".into(),
                    port: 1,
                    rack: None,
                },
            );
            image.broker_epochs.insert(id, *epoch);
            if *fenced {
                image.fenced.insert(id);
            }
        }
        image
    }

    fn hb(node: i32, epoch: u64, applied: u64, want_shutdown: bool) -> BrokerHeartbeat {
        BrokerHeartbeat {
            node: NodeId(node),
            broker_epoch: epoch,
            applied_index: applied,
            want_shutdown,
        }
    }

    #[test]
    fn nothing_is_fenced_while_not_leading() {
        let mut l = Liveness::new(SESSION, GRACE);
        let img = image(&[(1, 5, false)]);
        assert!(l.tick(100_000, &img, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_new_leader_gives_every_broker_a_full_session() {
        let mut l = Liveness::new(SESSION, GRACE);
        let img = image(&[(1, 5, false), (2, 6, false)]);
        l.set_leading(10_000, true);
        assert!(
            l.tick(10_000 + SESSION, &img, &BTreeMap::new()).is_empty(),
            "exactly one session: not yet"
        );
        l.heartbeat(12_000, &hb(1, 5, 5, false), &img);
        assert_eq!(
            l.tick(10_001 + SESSION, &img, &BTreeMap::new()),
            vec![MetadataCommand::FenceBroker {
                node: NodeId(2),
                shutdown: false
            }],
            "broker 2 never heartbeat"
        );
        // Not proposed again until the re-proposal window passes.
        assert!(l.tick(10_002 + SESSION, &img, &BTreeMap::new()).is_empty());
        assert_eq!(
            l.tick(
                10_001 + SESSION + REPROPOSE_AFTER_MS,
                &img,
                &BTreeMap::new()
            )
            .len(),
            1
        );
        // Broker 1's session runs from its heartbeat.
        assert!(l.tick(12_000 + SESSION, &img, &BTreeMap::new()).iter().all(
            |c| !matches!(c, MetadataCommand::FenceBroker { node, .. } if *node == NodeId(1))
        ));
    }

    #[test]
    fn losing_and_regaining_leadership_restarts_sessions() {
        let mut l = Liveness::new(SESSION, GRACE);
        let img = image(&[(1, 5, false)]);
        l.set_leading(0, true);
        l.set_leading(1_000, false);
        assert!(l.tick(50_000, &img, &BTreeMap::new()).is_empty());
        l.set_leading(50_000, true);
        assert!(l.tick(50_000 + SESSION, &img, &BTreeMap::new()).is_empty());
        assert_eq!(l.tick(50_001 + SESSION, &img, &BTreeMap::new()).len(), 1);
    }

    #[test]
    fn fenced_broker_is_unfenced_once_caught_up_with_its_registration() {
        let mut l = Liveness::new(SESSION, GRACE);
        l.set_leading(0, true);
        let img = image(&[(1, 40, true)]);
        let (reply, cmd) = l.heartbeat(10, &hb(1, 40, 39, false), &img);
        assert!(reply.fenced && !reply.stale_epoch);
        assert_eq!(cmd, None, "not caught up with its own registration");
        let (_, cmd) = l.heartbeat(20, &hb(1, 40, 40, false), &img);
        assert_eq!(
            cmd,
            Some(MetadataCommand::UnfenceBroker {
                node: NodeId(1),
                broker_epoch: 40
            })
        );
        let (_, cmd) = l.heartbeat(30, &hb(1, 40, 41, false), &img);
        assert_eq!(cmd, None, "already proposed");
        let unfenced = image(&[(1, 40, false)]);
        let (reply, cmd) = l.heartbeat(40, &hb(1, 40, 41, false), &unfenced);
        assert!(!reply.fenced);
        assert_eq!(cmd, None);
    }

    #[test]
    fn stale_epoch_must_register_again() {
        let mut l = Liveness::new(SESSION, GRACE);
        l.set_leading(0, true);
        let img = image(&[(1, 40, false)]);
        let (reply, cmd) = l.heartbeat(10, &hb(1, 7, 50, false), &img);
        assert!(reply.stale_epoch);
        assert_eq!(cmd, None);
        let (reply, _) = l.heartbeat(10, &hb(9, 1, 50, false), &img);
        assert!(reply.stale_epoch, "unknown broker");
    }

    #[test]
    fn controlled_shutdown_fences_then_reports_ready() {
        let mut l = Liveness::new(SESSION, GRACE);
        l.set_leading(0, true);
        let img = image(&[(1, 4, false)]);
        let (reply, cmd) = l.heartbeat(10, &hb(1, 4, 9, true), &img);
        assert!(!reply.shutdown_ready);
        assert_eq!(
            cmd,
            Some(MetadataCommand::FenceBroker {
                node: NodeId(1),
                shutdown: true
            })
        );
        let mut done = image(&[(1, 4, true)]);
        done.shutting_down.insert(NodeId(1));
        let (reply, cmd) = l.heartbeat(20, &hb(1, 4, 9, true), &done);
        assert!(reply.shutdown_ready);
        assert_eq!(cmd, None);
        // A shut-down broker is not fenced again by the session timer.
        assert!(l.tick(100_000, &done, &BTreeMap::new()).is_empty());
    }

    fn fence(node: i32) -> MetadataCommand {
        MetadataCommand::FenceBroker {
            node: NodeId(node),
            shutdown: false,
        }
    }

    #[test]
    fn a_broker_whose_port_refuses_is_fenced_after_the_grace_not_the_session() {
        let mut l = Liveness::new(SESSION, GRACE);
        let img = image(&[(1, 5, false), (2, 6, false)]);
        l.set_leading(0, true);
        l.heartbeat(10_000, &hb(1, 5, 5, false), &img);
        l.heartbeat(10_000, &hb(2, 6, 6, false), &img);
        // Node 2's process is gone from 10 100 on.
        let refused = BTreeMap::from([(NodeId(2), 10_100)]);
        assert!(
            l.tick(10_100 + GRACE - 1, &img, &refused).is_empty(),
            "within the grace"
        );
        assert_eq!(l.tick(10_100 + GRACE, &img, &refused), vec![fence(2)]);
        const { assert!(10_100 + GRACE < 10_000 + SESSION, "well before the session") };
    }

    #[test]
    fn a_heartbeat_after_the_refusals_began_keeps_the_broker() {
        // The controller cannot reach the broker's port, but the broker reaches the controller
        // (a one-way problem, or a restart that has already registered again): the session
        // decides, as for any broker.
        let mut l = Liveness::new(SESSION, GRACE);
        let img = image(&[(1, 5, false)]);
        l.set_leading(0, true);
        let refused = BTreeMap::from([(NodeId(1), 10_000)]);
        l.heartbeat(10_200, &hb(1, 5, 5, false), &img);
        assert!(l.tick(11_000, &img, &refused).is_empty());
        assert!(l.tick(10_200 + SESSION, &img, &refused).is_empty());
        assert_eq!(l.tick(10_201 + SESSION, &img, &refused), vec![fence(1)]);
    }

    #[test]
    fn a_new_controller_fences_a_refusing_predecessor_at_once() {
        // Node 1 was the active controller and its process died: the survivors' vote requests
        // to it were refused during the election, before node 2 led.
        let mut l = Liveness::new(SESSION, GRACE);
        let img = image(&[(1, 5, false), (2, 6, false), (3, 7, false)]);
        let refused = BTreeMap::from([(NodeId(1), 20_000)]);
        l.set_leading(21_500, true);
        assert_eq!(
            l.tick(21_500, &img, &refused),
            vec![fence(1)],
            "no full session for a broker whose process is gone"
        );
        // The live brokers still get their full session from the election.
        assert!(l.tick(21_500 + SESSION, &img, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn refusals_of_a_fenced_or_unknown_broker_change_nothing() {
        let mut l = Liveness::new(SESSION, GRACE);
        let img = image(&[(1, 5, true)]);
        l.set_leading(0, true);
        let refused = BTreeMap::from([(NodeId(1), 0), (NodeId(9), 0)]);
        assert!(l.tick(10_000, &img, &refused).is_empty());
    }
}
