//! Invariant 4: at most one leader per partition per leader epoch accepts writes.
//!
//! A replica accepts appends from the moment it becomes leader in an epoch
//! (`Command::BecomeLeader`), which the replica manager logs as `became leader` with the node,
//! the partition, its topic id and the epoch (a topic deleted and created again under the
//! same name starts its epochs afresh). [`Layer`] is a tracing layer that records those events on the
//! simulation's thread; [`check`] finds two nodes that led one partition in one epoch. Through
//! the log rather than a hook in the product, so the node code runs unchanged; and loudly: a
//! partition of the workload's topic for which no leadership was seen is a violation too, so
//! a change to the log line cannot turn the check off without failing every seed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// The replica manager's target and message for a new leadership.
const TARGET: &str = "spate_replica::manager";
const BECAME_LEADER: &str = "became leader";

/// One `became leader`: node, `topic-partition`, topic id, leader epoch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Leadership {
    pub node: String,
    pub partition: String,
    pub topic_id: String,
    pub leader_epoch: String,
}

thread_local! {
    static SEEN: RefCell<Vec<Leadership>> = const { RefCell::new(Vec::new()) };
}

/// Forgets what an earlier run on this thread recorded.
pub fn reset() {
    SEEN.with(|s| s.borrow_mut().clear());
}

/// What was recorded on this thread since [`reset`].
pub fn seen() -> Vec<Leadership> {
    SEEN.with(|s| s.borrow().clone())
}

/// The filter for [`Layer`]: only the replica manager's info events reach it.
pub fn filter() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::INFO)
}

/// Records each `became leader` event on the thread that logs it.
pub struct Layer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.message.as_deref() != Some(BECAME_LEADER) {
            return;
        }
        let leadership = Leadership {
            node: fields.node.unwrap_or_default(),
            partition: fields.partition.unwrap_or_default(),
            topic_id: fields.topic_id.unwrap_or_default(),
            leader_epoch: fields.leader_epoch.unwrap_or_default(),
        };
        SEEN.with(|s| s.borrow_mut().push(leadership));
    }
}

#[derive(Default)]
struct Fields {
    message: Option<String>,
    node: Option<String>,
    partition: Option<String>,
    topic_id: Option<String>,
    leader_epoch: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        let slot = match field.name() {
            "message" => &mut self.message,
            "node" => &mut self.node,
            "partition" => &mut self.partition,
            "topic_id" => &mut self.topic_id,
            "leader_epoch" => &mut self.leader_epoch,
            _ => return,
        };
        *slot = Some(format!("{value:?}"));
    }
}

/// Violations of invariant 4 among `seen`, and partitions of `topic` (`0..partitions`) with no
/// leadership seen at all.
pub fn check(seen: &[Leadership], topic: &str, partitions: i32) -> Vec<String> {
    let mut leaders: BTreeMap<(&str, &str, &str), BTreeSet<&str>> = BTreeMap::new();
    for l in seen {
        leaders
            .entry((
                l.partition.as_str(),
                l.topic_id.as_str(),
                l.leader_epoch.as_str(),
            ))
            .or_default()
            .insert(l.node.as_str());
    }
    let mut violations: Vec<String> = leaders
        .iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .map(|((partition, topic_id, epoch), nodes)| {
            format!(
                "invariant 4: {partition} (topic id {topic_id}) had leaders {nodes:?} in leader epoch {epoch}"
            )
        })
        .collect();
    for partition in 0..partitions {
        let name = format!("{topic}-{partition}");
        if !seen.iter().any(|l| l.partition == name) {
            violations.push(format!(
                "invariant 4: no leader of {name} was seen (has the replica manager's \
                 `{BECAME_LEADER}` log line changed?)"
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn led(node: &str, partition: &str, epoch: &str) -> Leadership {
        Leadership {
            node: node.into(),
            partition: partition.into(),
            topic_id: "t1".into(),
            leader_epoch: epoch.into(),
        }
    }

    #[test]
    fn two_nodes_leading_one_partition_in_one_epoch_is_a_violation() {
        let history = [
            led("1", "sim-0", "0"),
            led("2", "sim-0", "1"),
            led("2", "sim-0", "1"), // the same node again (a restart) is fine
            led("3", "sim-1", "0"),
            led("1", "sim-1", "0"),
        ];
        assert_eq!(
            check(&history, "sim", 2),
            ["invariant 4: sim-1 (topic id t1) had leaders {\"1\", \"3\"} in leader epoch 0"]
        );
        assert_eq!(check(&history[..3], "sim", 1), Vec::<String>::new());
        // The same name and epoch under another topic id (deleted, created again) is fine.
        let recreated = Leadership {
            topic_id: "t2".into(),
            ..led("2", "sim-0", "0")
        };
        assert_eq!(
            check(&[led("1", "sim-0", "0"), recreated], "sim", 1),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_partition_never_seen_led_is_a_violation() {
        let violations = check(&[led("1", "sim-0", "0")], "sim", 2);
        assert_eq!(violations.len(), 1);
        assert!(
            violations[0].contains("no leader of sim-1"),
            "{violations:?}"
        );
    }

    #[test]
    fn the_layer_records_the_replica_managers_became_leader_events() {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::Layer as _;
        reset();
        let subscriber = tracing_subscriber::registry().with(Layer.with_filter(filter()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "spate_replica::manager", node = %2, partition = %"sim-0", topic_id = %"t1", leader_epoch = %4, "became leader");
            tracing::info!(target: "spate_replica::manager", node = %3, partition = %"sim-0", leader_epoch = %4, "became follower");
            tracing::info!(target: "elsewhere", node = %3, partition = %"sim-0", leader_epoch = %4, "became leader");
        });
        assert_eq!(seen(), [led("2", "sim-0", "4")]);
    }
}
