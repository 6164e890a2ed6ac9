//! A [`ClusterStatus`] as text.

use super::{ClusterStatus, NodeState, PartitionRow, Role};
use crate::cli::{dash, render_table};
use spate_client as client;
use std::collections::BTreeMap;

/// `n` and the noun, singular or plural.
pub(super) fn counted(n: usize, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

fn id_list(ids: &[i32]) -> String {
    if ids.is_empty() {
        return "-".to_owned();
    }
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

/// "node 3" / "nodes 3, 4".
pub(super) fn named(noun: &str, ids: &[i32]) -> String {
    let list = ids
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() == 1 {
        format!("{noun} {list}")
    } else {
        format!("{noun}s {list}")
    }
}

pub(super) fn render_status(status: &ClusterStatus) -> String {
    let opt = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let mut out = String::new();
    out.push_str(&format!(
        "Cluster {}: {}, controller {}\n",
        status.cluster_id.as_deref().unwrap_or("-"),
        counted(status.nodes.len(), "node", "nodes"),
        status
            .controller_id
            .map_or_else(|| "none".to_owned(), |c| c.to_string()),
    ));
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                client::address(&n.host, n.port),
                dash(n.rack.as_deref().unwrap_or("")),
                match n.state {
                    NodeState::Alive => "alive".to_owned(),
                    NodeState::Fenced => "fenced".to_owned(),
                },
                if n.active_controller { "active" } else { "-" }.to_owned(),
            ]
        })
        .collect();
    out.push_str(&render_table(
        &["NODE", "ADDRESS", "RACK", "STATE", "CONTROLLER"],
        &rows,
    ));

    out.push('\n');
    match &status.quorum {
        None => out.push_str("Quorum: unknown\n"),
        Some(q) => {
            out.push_str(&format!(
                "Quorum: leader {}, leader epoch {}, high watermark {}\n",
                q.leader_id
                    .map_or_else(|| "none".to_owned(), |l| l.to_string()),
                q.leader_epoch,
                opt(q.high_watermark),
            ));
            let rows: Vec<Vec<String>> = q
                .voters
                .iter()
                .chain(&q.observers)
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        match r.role {
                            Role::Leader => "leader",
                            Role::Follower => "follower",
                            Role::Observer => "observer",
                        }
                        .to_owned(),
                        opt(r.log_end_offset),
                        opt(r.lag),
                    ]
                })
                .collect();
            out.push_str(&render_table(
                &["NODE", "ROLE", "LOG END OFFSET", "LAG"],
                &rows,
            ));
        }
    }

    out.push('\n');
    let p = &status.partitions;
    out.push_str(&format!(
        "Partitions: {} in {}; {} offline, {} under min ISR, {} under-replicated, {} with \
         offline replicas\n",
        p.partitions,
        counted(p.topics, "topic", "topics"),
        p.offline.count,
        p.under_min_isr.count,
        p.under_replicated.count,
        p.with_offline_replicas.count,
    ));
    let mut affected: BTreeMap<(&str, i32), &PartitionRow> = BTreeMap::new();
    for list in [
        &p.offline,
        &p.under_min_isr,
        &p.under_replicated,
        &p.with_offline_replicas,
    ] {
        for row in &list.partitions {
            affected.insert((row.topic.as_str(), row.partition), row);
        }
    }
    if !affected.is_empty() {
        let rows: Vec<Vec<String>> = affected
            .values()
            .map(|r| {
                vec![
                    r.topic.clone(),
                    r.partition.to_string(),
                    r.leader.map_or_else(|| "-".to_owned(), |l| l.to_string()),
                    id_list(&r.replicas),
                    id_list(&r.isr),
                    id_list(&r.offline_replicas),
                    r.min_isr.map_or_else(|| "-".to_owned(), |m| m.to_string()),
                    r.issues().join(", "),
                ]
            })
            .collect();
        out.push_str(&render_table(
            &[
                "TOPIC",
                "PARTITION",
                "LEADER",
                "REPLICAS",
                "ISR",
                "OFFLINE",
                "MIN ISR",
                "ISSUES",
            ],
            &rows,
        ));
    }
    for e in &p.topic_errors {
        out.push_str(&format!("Topic {} reports {}.\n", e.topic, e.error));
    }

    out.push('\n');
    for note in &status.notes {
        out.push_str(&format!("Note: {note}\n"));
    }
    out.push_str(&format!("Verdict: {}\n", status.verdict));
    out
}
