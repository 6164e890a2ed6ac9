//! `spate group list`: ListGroups on every broker, filtered by state.

use super::describe::group_id;
use super::{DEAD, KNOWN_STATES, LIST_GROUPS_STATES_VERSION};
use crate::cli::{self, dash, render_table};
use kafka_protocol::messages::{DescribeGroupsRequest, ListGroupsRequest};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;
use spate_client::{self as client, Cluster};
use std::collections::{BTreeMap, BTreeSet};

/// One row of `spate group list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListedGroup {
    pub group: String,
    pub state: String,
    pub protocol_type: String,
}

pub(super) async fn list_groups(
    cluster: &mut Cluster,
    states: &[String],
) -> anyhow::Result<Vec<ListedGroup>> {
    // Each broker lists the groups it coordinates, so every broker is asked.
    let bootstrap = cluster.bootstrap().await?;
    let (_, metadata) = cluster
        .send(&bootstrap, |version| {
            cli::metadata_request(version, Some(&[]))
        })
        .await?;
    let mut brokers: BTreeSet<String> = metadata
        .brokers
        .iter()
        .map(|b| client::address(&b.host, b.port))
        .collect();
    if brokers.is_empty() {
        brokers.insert(bootstrap);
    }
    let mut groups = Vec::new();
    for addr in &brokers {
        let (version, response) = cluster
            .send(addr, |version| {
                let request = ListGroupsRequest::default();
                if version >= LIST_GROUPS_STATES_VERSION {
                    request.with_states_filter(
                        states
                            .iter()
                            .map(|s| StrBytes::from_string(s.clone()))
                            .collect(),
                    )
                } else {
                    request
                }
            })
            .await?;
        client::check(response.error_code, || format!("ListGroups on {addr}"))?;
        tracing::debug!(%addr, version, groups = response.groups.len(), "listed groups");
        let mut listed: Vec<ListedGroup> = response
            .groups
            .into_iter()
            .map(|g| ListedGroup {
                group: g.group_id.0.to_string(),
                state: g.group_state.to_string(),
                protocol_type: g.protocol_type.to_string(),
            })
            .collect();
        if version < LIST_GROUPS_STATES_VERSION && !listed.is_empty() {
            // No states before v4: the broker that lists a group coordinates it, so it can
            // describe them all.
            fill_states(cluster, addr, &mut listed).await?;
        }
        groups.extend(listed);
    }
    // Brokers older than ListGroups v4 cannot filter: the states are filtered here.
    Ok(filter_groups(groups, states))
}

/// States of `groups` from DescribeGroups on their coordinator `addr`; groups that have gone
/// (Dead) are dropped.
async fn fill_states(
    cluster: &mut Cluster,
    addr: &str,
    groups: &mut Vec<ListedGroup>,
) -> anyhow::Result<()> {
    let ids = groups.iter().map(|g| group_id(&g.group)).collect();
    let (_, response) = cluster
        .send(addr, |_| DescribeGroupsRequest::default().with_groups(ids))
        .await?;
    let states: BTreeMap<String, (i16, String)> = response
        .groups
        .into_iter()
        .map(|g| {
            (
                g.group_id.0.to_string(),
                (g.error_code, g.group_state.to_string()),
            )
        })
        .collect();
    for g in groups.iter_mut() {
        match states.get(&g.group) {
            Some((0, state)) => g.state = state.clone(),
            Some((code, _)) => {
                client::check(*code, || format!("DescribeGroups {} on {addr}", g.group))?
            }
            None => {}
        }
    }
    groups.retain(|g| g.state != DEAD);
    Ok(())
}

/// Known state names in Kafka's spelling, whatever case they were typed in.
pub(super) fn canonical_states(states: &[String]) -> Vec<String> {
    states
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            KNOWN_STATES
                .iter()
                .find(|k| k.eq_ignore_ascii_case(s))
                .map_or_else(|| s.to_owned(), |k| (*k).to_owned())
        })
        .collect()
}

/// Sorted by group id, one row per group, only the given states (all if none are given).
pub(super) fn filter_groups(groups: Vec<ListedGroup>, states: &[String]) -> Vec<ListedGroup> {
    let mut by_id = BTreeMap::new();
    for g in groups {
        if states.is_empty() || states.iter().any(|s| s.eq_ignore_ascii_case(&g.state)) {
            by_id.insert(g.group.clone(), g);
        }
    }
    by_id.into_values().collect()
}

pub(super) fn render_list(groups: &[ListedGroup]) -> String {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| vec![g.group.clone(), dash(&g.state), dash(&g.protocol_type)])
        .collect();
    render_table(&["GROUP", "STATE", "PROTOCOL TYPE"], &rows)
}
