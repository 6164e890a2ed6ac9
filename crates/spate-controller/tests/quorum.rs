//! A controller quorum of three voters in one process, talking over real loopback TCP: forming
//! without a format step, forwarding (proposals and the quorum status), broker fencing and
//! controlled shutdown, leader loss, restart, fencing a stopped node (and a stopped controller)
//! without waiting out its session, and refusal of a data directory that belongs to another
//! quorum.

use spate_controller::{
    BrokerEndpoint, Controller, ControllerConfig, ControllerError, MetadataCommand, MetadataImage,
    MetadataOutcome, NO_LEADER,
};
use spate_types::{NodeId, Seams};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    _root: tempfile::TempDir,
    dirs: BTreeMap<NodeId, PathBuf>,
    addrs: BTreeMap<NodeId, SocketAddr>,
    nodes: BTreeMap<NodeId, Controller>,
}

/// A free port below the kernel's ephemeral range (32768 and up on Linux): a port the kernel
/// handed out (port 0) can be taken by any test's outgoing connection between this check and
/// the voter binding it, or while a stopped voter is down before it binds it again.
fn free_addr() -> SocketAddr {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1000 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = 20_000 + (random % 12_000) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().expect("addr");
        }
    }
    panic!("no free port between 20000 and 32000");
}

const SESSION_MS: u64 = 1_500;

fn config(addrs: &BTreeMap<NodeId, SocketAddr>, me: NodeId) -> ControllerConfig {
    config_with_session(addrs, me, SESSION_MS)
}

fn config_with_session(
    addrs: &BTreeMap<NodeId, SocketAddr>,
    me: NodeId,
    session_ms: u64,
) -> ControllerConfig {
    ControllerConfig {
        voters: addrs.iter().map(|(n, a)| (*n, a.to_string())).collect(),
        listen: addrs.get(&me).copied(),
        broker_session_timeout_ms: session_ms,
        broker_heartbeat_interval_ms: 200,
        ..ControllerConfig::default()
    }
}

fn endpoint(node: NodeId) -> BrokerEndpoint {
    BrokerEndpoint {
        host: "127.0.0.1".into(),
        port: 9000 + node.0 as u16,
        rack: None,
    }
}

async fn open(
    dir: &Path,
    node: NodeId,
    cfg: ControllerConfig,
) -> Result<Controller, ControllerError> {
    Controller::open_with_config(dir, node, endpoint(node), cfg).await
}

impl Cluster {
    /// Starts `n` voters and waits until all of them are registered, unfenced brokers.
    async fn start_live(n: i32) -> Cluster {
        Cluster::start_live_with_session(n, SESSION_MS).await
    }

    async fn start_live_with_session(n: i32, session_ms: u64) -> Cluster {
        let cluster = Cluster::start_with_session(n, session_ms).await;
        cluster
            .wait_all("every broker live", |i| {
                i.brokers.len() == n as usize && i.fenced.is_empty()
            })
            .await;
        cluster
    }

    async fn shutdown(&self) {
        for node in self.nodes.values() {
            node.shutdown().await.expect("shutdown");
        }
    }

    async fn start(n: i32) -> Cluster {
        Cluster::start_with_session(n, SESSION_MS).await
    }

    async fn start_with_session(n: i32, session_ms: u64) -> Cluster {
        let addrs = (1..=n).map(|i| (NodeId(i), free_addr())).collect();
        Cluster::start_on(addrs, session_ms, Seams::system()).await
    }

    /// Voters at `addrs` of `seams.net`, all started at once as `spate dev` starts them (each
    /// blocks until a majority is up).
    async fn start_on(
        addrs: BTreeMap<NodeId, SocketAddr>,
        session_ms: u64,
        seams: Seams,
    ) -> Cluster {
        let root = tempfile::tempdir().expect("tempdir");
        let dirs: BTreeMap<NodeId, PathBuf> = addrs
            .keys()
            .map(|id| (*id, root.path().join(format!("node-{}", id.0))))
            .collect();
        let opens = addrs.keys().map(|id| {
            let cfg = config_with_session(&addrs, *id, session_ms);
            let dir = dirs[id].clone();
            let (id, seams) = (*id, seams.clone());
            tokio::spawn(async move {
                let opened = Controller::open_with_seams(&dir, id, endpoint(id), cfg, seams).await;
                (id, opened)
            })
        });
        let mut nodes = BTreeMap::new();
        for handle in opens.collect::<Vec<_>>() {
            let (id, result) = handle.await.expect("join");
            nodes.insert(id, result.expect("open voter"));
        }
        Cluster {
            _root: root,
            dirs,
            addrs,
            nodes,
        }
    }

    /// Creates topic `name` through any node and checks it was created.
    async fn create_topic(&self, name: &str, rf: i16) {
        let outcome = self.any().propose(create(name, rf)).await.expect("create");
        assert!(
            matches!(outcome, MetadataOutcome::TopicCreated { .. }),
            "{outcome:?}"
        );
    }

    /// Stops `node` cleanly (an active controller hands its role over first).
    async fn stop(&mut self, node: NodeId) {
        let controller = self.nodes.remove(&node).expect("a running node");
        controller.shutdown().await.expect("stop");
    }

    /// Stops `node` as kill -9 looks to the others: no hand-over, its port just closes.
    async fn crash(&mut self, node: NodeId) {
        let controller = self.nodes.remove(&node).expect("a running node");
        controller.halt().await.expect("halt");
    }

    fn any(&self) -> &Controller {
        self.nodes.values().next().expect("a node")
    }

    fn leader(&self) -> NodeId {
        self.any().leader().expect("a leader")
    }

    /// Waits until every running node's image satisfies `check`.
    async fn wait_all(&self, what: &str, check: impl Fn(&MetadataImage) -> bool) {
        for (id, node) in &self.nodes {
            let mut rx = node.subscribe();
            let waited = tokio::time::timeout(WAIT, rx.wait_for(|image| check(image))).await;
            assert!(
                matches!(waited, Ok(Ok(_))),
                "node {id}: timed out waiting for {what}; image: {:?}",
                node.image()
            );
        }
    }
}

fn create(name: &str, rf: i16) -> MetadataCommand {
    MetadataCommand::CreateTopic {
        name: name.into(),
        topic_id: Uuid::new_v4(),
        partitions: 3,
        replication_factor: rf,
        configs: BTreeMap::new(),
        assignments: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_form_one_cluster_and_forward_proposals() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader();
    // One cluster id, three live brokers, on every node.
    let cluster_id = cluster
        .any()
        .image()
        .cluster_id
        .clone()
        .expect("cluster id");
    cluster
        .wait_all("three live brokers", |i| {
            i.brokers.len() == 3
                && i.fenced.is_empty()
                && i.cluster_id.as_ref() == Some(&cluster_id)
        })
        .await;
    for node in cluster.nodes.values() {
        assert_eq!(
            node.leader(),
            Some(leader),
            "all agree on the active controller"
        );
    }

    // A follower's proposal is forwarded, and returns only once the follower applied it.
    let follower = cluster
        .nodes
        .iter()
        .find(|(id, _)| **id != leader)
        .map(|(_, c)| c.clone())
        .expect("a follower");
    let outcome = follower
        .propose(create("orders", 3))
        .await
        .expect("propose");
    assert!(
        matches!(outcome, MetadataOutcome::TopicCreated { .. }),
        "{outcome:?}"
    );
    let topic = follower
        .image()
        .topics
        .get("orders")
        .cloned()
        .expect("visible on the follower at once");
    for p in &topic.partitions {
        assert_eq!(p.replicas.len(), 3);
        assert_eq!(p.isr.len(), 3);
        assert_ne!(p.leader, NO_LEADER);
    }
    // Leaders spread: three partitions, three different leaders.
    let leaders: std::collections::BTreeSet<_> =
        topic.partitions.iter().map(|p| p.leader).collect();
    assert_eq!(leaders.len(), 3, "{topic:?}");

    let status = follower.quorum_status();
    assert_eq!(status.leader, Some(leader));
    assert_eq!(status.voters.len(), 3);
    let status = cluster.nodes[&leader].quorum_status();
    assert_eq!(
        status.voter_matched.len(),
        3,
        "the leader tracks every voter: {status:?}"
    );

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reports_the_active_controllers_view_of_the_quorum() {
    let mut cluster = Cluster::start_live(3).await;
    let leader = cluster.leader();
    let follower = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");
    let own = cluster.nodes[&follower].quorum_status();
    assert!(
        own.voter_matched.is_empty(),
        "a follower tracks no replication of its own: {own:?}"
    );

    // --- a follower asks the active controller, and answers with its view
    let asked = cluster.nodes[&follower]
        .leader_quorum_status()
        .await
        .expect("the leader's view, through the follower");
    let direct = cluster.nodes[&leader].quorum_status();
    assert_eq!(asked.leader, Some(leader));
    assert_eq!(asked.term, direct.term);
    assert_eq!(asked.voters, direct.voters);
    let voters: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    assert_eq!(
        asked.voter_matched.keys().copied().collect::<Vec<_>>(),
        voters,
        "the leader's replication state for every voter: {asked:?}"
    );
    assert!(asked.committed_index >= 1, "{asked:?}");
    // Every node, the leader included, reports the same leader, term and voters.
    for (id, node) in &cluster.nodes {
        let status = node.leader_quorum_status().await.expect("leader's view");
        assert_eq!(
            (status.leader, status.term, &status.voters),
            (asked.leader, asked.term, &asked.voters),
            "node {id}"
        );
    }

    // --- stop the active controller: a follower reports the next one's view once elected
    cluster.stop(leader).await;
    let survivor = cluster.any().clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        match survivor.leader_quorum_status().await {
            Ok(status) if status.leader != Some(leader) => break status,
            Ok(stale) => panic!("the stopped controller cannot answer: {stale:?}"),
            // Electing, or the dead leader is still the one known: retriable.
            Err(
                e @ (ControllerError::NotLeader { .. }
                | ControllerError::PeerUnreachable { .. }
                | ControllerError::PeerTimeout { .. }
                | ControllerError::PeerFailed { .. }),
            ) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no new controller within {WAIT:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("not a routing error: {e:?}"),
        }
    };
    assert!(status.term > asked.term, "{status:?} after {asked:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_fenced_and_loses_its_leaderships_then_rejoins() {
    let mut cluster = Cluster::start_live(3).await;
    cluster.create_topic("t", 3).await;

    // Stop a node that is not the active controller: its heartbeats stop.
    let leader = cluster.leader();
    let victim = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .expect("victim");
    let before = cluster.any().image().topics["t"].clone();
    cluster.stop(victim).await;

    cluster
        .wait_all("the dead node fenced", |i| i.fenced.contains(&victim))
        .await;
    let after = cluster.any().image().topics["t"].clone();
    for (old, new) in before.partitions.iter().zip(&after.partitions) {
        assert!(!new.isr.contains(&victim), "{new:?}");
        assert_ne!(new.leader, victim);
        assert_ne!(new.leader, NO_LEADER, "another ISR member took over");
        if old.leader == victim {
            assert!(new.leader_epoch > old.leader_epoch, "new leader, new epoch");
        } else {
            assert_eq!(new.leader, old.leader, "other leaderships stay");
        }
    }

    // Restarted with its data: it registers again and is unfenced once caught up.
    let node = open(
        &cluster.dirs[&victim],
        victim,
        config(&cluster.addrs, victim),
    )
    .await
    .expect("restart");
    cluster.nodes.insert(victim, node);
    cluster
        .wait_all("the restarted node unfenced", |i| i.is_alive(victim))
        .await;
    cluster.shutdown().await;
}

/// Far longer than [`WAIT`]: a broker fenced within `WAIT` was not fenced by its session.
const LONG_SESSION_MS: u64 = 600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_fenced_long_before_its_session_runs_out() {
    let mut cluster = Cluster::start_live_with_session(3, LONG_SESSION_MS).await;
    cluster.any().propose(create("t", 3)).await.expect("create");
    let leader = cluster.leader();
    let victim = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .expect("victim");
    // Its controller port closes with it: connections to it are refused from now on.
    let started = std::time::Instant::now();
    cluster.stop(victim).await;
    cluster
        .wait_all("the stopped node fenced", |i| i.fenced.contains(&victim))
        .await;
    assert!(started.elapsed() < Duration::from_millis(LONG_SESSION_MS));
    for p in &cluster.any().image().topics["t"].partitions {
        assert_ne!(p.leader, victim, "{p:?}");
        assert!(!p.isr.contains(&victim), "{p:?}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_controller_fences_its_crashed_predecessor_without_a_full_session() {
    let mut cluster = Cluster::start_live_with_session(3, LONG_SESSION_MS).await;
    cluster.any().propose(create("t", 3)).await.expect("create");
    let leader = cluster.leader();
    // As kill -9 looks to the others: no hand-over, the port just closes.
    cluster.crash(leader).await;
    cluster
        .wait_all("the old controller fenced", |i| i.fenced.contains(&leader))
        .await;
    let image = cluster.any().image();
    for p in &image.topics["t"].partitions {
        assert_ne!(p.leader, leader, "{p:?}");
        assert_ne!(p.leader, NO_LEADER, "{p:?}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_runs_over_an_in_process_network() {
    // The network and disk seams: three voters in this process on addresses no socket holds,
    // talking through `MemoryNetwork`'s pipes, their directories on one `MemoryDisk` (what the
    // simulator builds on). A crashed voter's port closes there as on TCP, so the refusal
    // fencing works the same.
    let addrs = (1..=3)
        .map(|i| (NodeId(i), format!("10.9.0.{i}:9093").parse().expect("addr")))
        .collect();
    let seams = Seams {
        net: std::sync::Arc::new(spate_types::MemoryNetwork::new()),
        disk: std::sync::Arc::new(spate_types::MemoryDisk::default()),
        ..Seams::system()
    };
    let mut cluster = Cluster::start_on(addrs, LONG_SESSION_MS, seams).await;
    cluster
        .wait_all("every broker live", |i| {
            i.brokers.len() == 3 && i.fenced.is_empty()
        })
        .await;
    cluster.create_topic("t", 3).await;

    let leader = cluster.leader();
    cluster.crash(leader).await;
    cluster
        .wait_all("the crashed controller fenced by its successor", |i| {
            i.fenced.contains(&leader)
        })
        .await;
    assert_ne!(cluster.any().leader(), Some(leader));
    cluster.create_topic("after", 2).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_controller_hands_its_role_over_first() {
    let mut cluster = Cluster::start_live(3).await;
    let leader = cluster.leader();
    cluster.stop(leader).await;
    // Without a hand-over the survivors would still follow the stopped node here: they only
    // notice its silence after an election timeout (at least a second after its last heartbeat).
    let views: Vec<Option<NodeId>> = cluster.nodes.values().map(Controller::leader).collect();
    assert!(
        views.iter().any(|v| v.is_some_and(|l| l != leader)),
        "no survivor follows a new controller yet: {views:?}"
    );
    cluster.create_topic("after", 2).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controlled_shutdown_moves_leaderships_before_stopping() {
    let cluster = Cluster::start_live(3).await;
    cluster.any().propose(create("t", 3)).await.expect("create");
    let leader = cluster.leader();
    // The active controller itself leaving is the hardest case: it proposes its own fencing.
    let node = cluster.nodes[&leader].clone();
    assert!(
        node.controlled_shutdown(WAIT).await,
        "the controller reports the shutdown complete"
    );
    let image = node.image();
    assert!(image.shutting_down.contains(&leader));
    for p in &image.topics["t"].partitions {
        assert_ne!(p.leader, leader, "{p:?}");
        assert_ne!(p.leader, NO_LEADER);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_active_controller_elects_another_and_proposals_continue() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader();
    cluster.stop(leader).await;
    let survivor = cluster.any().clone();
    let outcome = survivor
        .propose(create("after", 2))
        .await
        .expect("propose after the loss");
    assert!(
        matches!(outcome, MetadataOutcome::TopicCreated { .. }),
        "{outcome:?}"
    );
    let new_leader = survivor.leader().expect("new leader");
    assert_ne!(new_leader, leader);
    cluster
        .wait_all("the old controller fenced", |i| i.fenced.contains(&leader))
        .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_another_quorum_is_refused() {
    let cluster = Cluster::start(3).await;
    let victim = NodeId(3);
    let dir = cluster.dirs[&victim].clone();
    let mut addrs = cluster.addrs.clone();
    cluster.shutdown().await;
    // Same node, but configured with a different voter set.
    addrs.insert(NodeId(4), free_addr());
    match open(&dir, victim, config(&addrs, victim)).await {
        Err(ControllerError::VotersMismatch { stored, configured }) => {
            assert_eq!(stored, vec![NodeId(1), NodeId(2), NodeId(3)]);
            assert_eq!(configured.len(), 4);
        }
        other => panic!("expected VotersMismatch, got {other:?}"),
    }
    // A node id that is not among the voters at all.
    match open(&dir, NodeId(9), config(&cluster.addrs, NodeId(9))).await {
        Err(ControllerError::NotInVoters { node, .. }) => assert_eq!(node, NodeId(9)),
        other => panic!("expected NotInVoters, got {other:?}"),
    }
}

/// The read barrier admin requests pass before they read the image (found by the simulator,
/// seed 116: a node cut off from the controller answered TOPIC_ALREADY_EXISTS for a topic
/// deleted meanwhile). After `catch_up` a node's image holds every change committed before the
/// call; a leader that lost its quorum, which may have been replaced without hearing of it,
/// refuses instead of passing on its own view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_sees_every_committed_change_and_a_leader_without_a_quorum_refuses() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader();
    let others: Vec<NodeId> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|n| *n != leader)
        .collect();
    for (i, node) in others.iter().enumerate() {
        let name = format!("fresh-{i}");
        cluster.nodes[&leader]
            .propose(create(&name, 2))
            .await
            .expect("create");
        cluster.nodes[node].catch_up().await.expect("catch up");
        assert!(
            cluster.nodes[node].image().topics.contains_key(&name),
            "node {node} caught up without {name}"
        );
    }
    cluster.nodes[&leader].catch_up().await.expect("the leader");

    let old = cluster.nodes[&leader].clone();
    for node in others {
        cluster.crash(node).await;
    }
    let refused = old.catch_up().await;
    assert!(
        matches!(refused, Err(ControllerError::NotLeader { .. })),
        "a leader without a quorum must not vouch for its view: {refused:?}"
    );
    cluster.shutdown().await;
}
