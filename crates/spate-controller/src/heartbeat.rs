//! Broker sessions: this broker's registration and heartbeats to the active controller (the
//! heartbeat task), and on the active controller the other side: answering heartbeats and
//! fencing brokers whose session expired (the liveness task). The decisions themselves are
//! the I/O-free core in `liveness.rs`; this module feeds it and proposes what it returns.

use crate::error::{ControllerError, PeerFailure};
use crate::forward::LocalWrite;
use crate::liveness::Liveness;
use crate::raft::network::{Request, Response};
use crate::raft::{self};
use crate::{
    is_leader, now_ms, BrokerEndpoint, BrokerHeartbeat, Controller, HeartbeatReply, Inner,
    MetadataCommand, MetadataOutcome,
};
use openraft::async_runtime::WatchReceiver;
use spate_types::NodeId;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// How often the active controller checks broker sessions.
const LIVENESS_TICK: Duration = Duration::from_millis(100);

impl Controller {
    /// Asks the active controller to move this broker's leaderships away (Kafka's controlled
    /// shutdown) and waits until it leads nothing, at most `timeout`. Returns whether it got
    /// there; either way the node may stop afterwards (an unclean stop only costs clients a
    /// session timeout of unavailability).
    pub async fn controlled_shutdown(&self, timeout: Duration) -> bool {
        self.inner.want_shutdown.store(true, Ordering::SeqCst);
        self.inner.heartbeat_now.notify_one();
        let mut rx = self.inner.last_heartbeat.subscribe();
        let done = tokio::time::timeout(
            timeout,
            rx.wait_for(|r| r.as_ref().is_some_and(|r| r.shutdown_ready)),
        )
        .await;
        matches!(done, Ok(Ok(_)))
    }

    /// Registers (or re-registers) this node as a broker and remembers its broker epoch.
    ///
    /// # Panics
    ///
    /// If the state machine answers a registration with anything but `BrokerRegistered` or
    /// `Rejected` (a bug in `state::apply`).
    pub async fn register(&self, advertised: &BrokerEndpoint) -> Result<(), ControllerError> {
        let cmd = MetadataCommand::RegisterBroker {
            node: self.inner.node,
            endpoint: advertised.clone(),
            directory_id: self.inner.config.directory_id,
        };
        match self.propose(cmd).await? {
            MetadataOutcome::BrokerRegistered { broker_epoch } => {
                self.inner
                    .broker_epoch
                    .store(broker_epoch, Ordering::SeqCst);
                Ok(())
            }
            MetadataOutcome::Rejected(error) => Err(ControllerError::Refused {
                command: "registering this broker",
                error,
            }),
            other => panic!("a broker registration was answered with {other:?}"),
        }
    }

    /// This broker's epoch: the log index of its latest registration.
    pub fn broker_epoch(&self) -> u64 {
        self.inner.broker_epoch.load(Ordering::SeqCst)
    }

    /// Reports this broker alive to the active controller (directly when this node is it).
    /// `want_shutdown` asks for a controlled shutdown: leaderships move away, and the reply says
    /// when none is left.
    pub async fn heartbeat(&self, want_shutdown: bool) -> Result<HeartbeatReply, ControllerError> {
        let hb = BrokerHeartbeat {
            node: self.inner.node,
            broker_epoch: self.broker_epoch(),
            applied_index: self.image().last_applied_index,
            want_shutdown,
        };
        let leader = self
            .leader()
            .ok_or(ControllerError::NotLeader { leader: None })?;
        if leader == self.inner.node {
            return handle_heartbeat(&self.inner, hb)
                .map_err(|leader| ControllerError::NotLeader { leader });
        }
        match self
            .call_leader(
                leader,
                &Request::Heartbeat(hb),
                heartbeat_timeout(&self.inner.config),
            )
            .await?
        {
            Response::Heartbeat(reply) => Ok(reply),
            _ => Err(ControllerError::PeerFailed {
                peer: leader,
                failure: PeerFailure::UnexpectedAnswer,
            }),
        }
    }
}

/// How long one heartbeat waits for its answer: a third of the session, so that a heartbeat
/// lost to a dead or cut-off controller is retried (at the next one) well before the session
/// runs out; never less than the heartbeat interval.
fn heartbeat_timeout(config: &crate::ControllerConfig) -> Duration {
    Duration::from_millis(
        (config.broker_session_timeout_ms / 3)
            .max(config.broker_heartbeat_interval_ms)
            .min(config.request_timeout_ms),
    )
}

/// The liveness core. A panic while it was held (a bug in `liveness.rs`, which the log shows)
/// leaves only soft state behind, timestamps and pending proposals, so it is used anyway:
/// better than fencing nobody ever again.
fn liveness(inner: &Inner) -> MutexGuard<'_, Liveness> {
    inner
        .liveness
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// The active controller's side of a heartbeat: answers at once, proposes any resulting change
/// in the background (the next heartbeat's answer shows it). `Err` carries the leader to ask
/// instead when this node is not the active controller.
pub(crate) fn handle_heartbeat(
    inner: &Arc<Inner>,
    hb: BrokerHeartbeat,
) -> Result<HeartbeatReply, Option<NodeId>> {
    if !is_leader(inner) {
        return Err(inner
            .raft
            .metrics()
            .borrow_watched()
            .current_leader
            .and_then(raft::spate_id));
    }
    let image = inner.image_rx.borrow().clone();
    let now = now_ms(inner);
    let (reply, command) = {
        let mut liveness = liveness(inner);
        liveness.set_leading(now, true);
        liveness.heartbeat(now, &hb, &image)
    };
    if let Some(cmd) = command {
        propose_in_background(inner, cmd);
    }
    Ok(reply)
}

fn propose_in_background(inner: &Arc<Inner>, cmd: MetadataCommand) {
    let controller = Controller {
        inner: inner.clone(),
    };
    tokio::spawn(async move {
        tracing::info!(command = %cmd, "broker liveness change");
        match controller.write_local(cmd.clone()).await {
            Ok(LocalWrite::Applied {
                outcome: MetadataOutcome::Rejected(e),
                ..
            }) => tracing::warn!(command = %cmd, error = %e, "liveness change refused"),
            Ok(_) => {}
            Err(e) => {
                let e = ControllerError::from(e);
                tracing::warn!(command = %cmd, error = %e, "liveness change failed")
            }
        }
    });
}

/// This broker's heartbeats, every `broker.heartbeat.interval.ms` (at once after a shutdown
/// request). A stale-epoch answer (the controller forgot this incarnation) registers again.
pub(crate) async fn heartbeat_task(inner: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    let Some(interval) = inner
        .upgrade()
        .map(|i| Duration::from_millis(i.config.broker_heartbeat_interval_ms.max(1)))
    else {
        return;
    };
    let mut failures = 0u32;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let controller = Controller { inner: strong };
        let want_shutdown = controller.inner.want_shutdown.load(Ordering::SeqCst);
        match controller.heartbeat(want_shutdown).await {
            Ok(reply) if reply.stale_epoch => {
                tracing::warn!(
                    "the active controller does not know this broker's epoch; registering again"
                );
                if let Err(e) = controller.register(&controller.inner.advertised).await {
                    tracing::warn!(error = %e, "re-registering failed");
                }
            }
            Ok(reply) => {
                failures = 0;
                controller.inner.last_heartbeat.send_replace(Some(reply));
            }
            Err(e) => {
                failures += 1;
                // One line per few seconds of trouble, not one per heartbeat.
                if failures % 10 == 1 {
                    tracing::warn!(error = %e, failures, "broker heartbeat failed");
                }
            }
        }
        let wake = controller.inner.clone();
        drop(controller);
        // Biased (deterministic under simulation): the stop, which ends the loop, then the
        // timer; a request for an early heartbeat left pending by the timer is taken on the
        // next turn.
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(interval) => {}
            _ = wake.heartbeat_now.notified() => {}
        }
    }
}

/// On the active controller: fences brokers whose session expired.
pub(crate) async fn liveness_task(inner: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(LIVENESS_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_leading = false;
    loop {
        // Biased (deterministic under simulation); the stop, which ends the loop, first.
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        let leading = is_leader(&inner);
        if leading != was_leading {
            let term = inner.raft.metrics().borrow_watched().current_term;
            if leading {
                tracing::info!(term, "this node is now the active controller");
            } else {
                tracing::info!(term, "this node is no longer the active controller");
            }
            was_leading = leading;
        }
        let image = inner.image_rx.borrow().clone();
        let now = now_ms(&inner);
        let refused = inner.refusals.snapshot();
        let commands = {
            let mut liveness = liveness(&inner);
            liveness.set_leading(now, leading);
            liveness.tick(now, &image, &refused)
        };
        for cmd in commands {
            if let MetadataCommand::FenceBroker { node, .. } = &cmd {
                match refused.get(node) {
                    Some(since) => tracing::info!(
                        broker = %node,
                        refused_for_ms = now - since,
                        "fencing a broker whose controller port refuses connections"
                    ),
                    None => {
                        tracing::info!(broker = %node, "fencing a broker whose session expired")
                    }
                }
            }
            propose_in_background(&inner, cmd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{new_cluster_id, ControllerConfig, MetadataImage, Seams};
    use spate_types::{ManualClock, SeededIds};

    const SESSION_MS: u64 = 500;

    fn endpoint(port: u16) -> BrokerEndpoint {
        BrokerEndpoint {
            host: "127.0.0.1".into(),
            port,
            rack: None,
        }
    }

    async fn wait_image(c: &Controller, what: &str, check: impl Fn(&MetadataImage) -> bool) {
        let mut rx = c.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|i| check(i)))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", c.image()))
            .expect("image channel open");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_expire_on_the_injected_clock_not_the_real_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let seams = Seams {
            clock: clock.clone(),
            ids: Arc::new(SeededIds::new(42)),
            ..Seams::system()
        };
        let config = ControllerConfig {
            broker_session_timeout_ms: SESSION_MS,
            broker_heartbeat_interval_ms: 100,
            ..ControllerConfig::default()
        };
        let c = Controller::open_with_seams(dir.path(), NodeId(1), endpoint(9092), config, seams)
            .await
            .expect("open");
        assert_eq!(
            c.image().cluster_id,
            Some(new_cluster_id(&SeededIds::new(42))),
            "the cluster is named from the injected id source"
        );

        tracing::info!("--- register broker 2 and heartbeat it caught up: it is unfenced");
        let broker_epoch = match c
            .propose(MetadataCommand::RegisterBroker {
                node: NodeId(2),
                endpoint: endpoint(9093),
                directory_id: uuid::Uuid::nil(),
            })
            .await
            .expect("register")
        {
            MetadataOutcome::BrokerRegistered { broker_epoch } => broker_epoch,
            other => panic!("registration answered with {other:?}"),
        };
        let hb = BrokerHeartbeat {
            node: NodeId(2),
            broker_epoch,
            applied_index: c.image().last_applied_index,
            want_shutdown: false,
        };
        let reply = handle_heartbeat(&c.inner, hb).expect("this node is the active controller");
        assert!(reply.fenced && !reply.stale_epoch, "{reply:?}");
        wait_image(&c, "broker 2 unfenced", |i| i.is_alive(NodeId(2))).await;

        tracing::info!("--- real time passes, well past a session; the injected clock does not");
        tokio::time::sleep(Duration::from_millis(3 * SESSION_MS)).await;
        assert!(
            c.image().is_alive(NodeId(2)),
            "fenced on the real clock: {:?}",
            c.image()
        );

        tracing::info!("--- the injected clock passes the session: broker 2 is fenced");
        clock.advance(Duration::from_millis(SESSION_MS + 1));
        wait_image(&c, "broker 2 fenced", |i| i.fenced.contains(&NodeId(2))).await;
        c.shutdown().await.expect("shutdown");
    }
}
