//! IncrementalAlterConfigs: changes some of a topic's or a group's overrides with SET, DELETE,
//! APPEND and SUBTRACT (the last two only for list-typed configs such as `cleanup.policy`),
//! leaving the others as they are. The complete new override map is computed from the current
//! image, validated whole (INVALID_CONFIG with the reason) and committed as one replacement;
//! `validate_only` stops before the commit. Group configs (KIP-848) are stored for any group
//! id, existing or not, as in Kafka.
//!
//! Broker resources alter dynamic broker configs (`configs::validate_broker_overrides`): per
//! broker (its id) or cluster-wide (""). A resource named twice, a config
//! named twice in one resource, a value missing for anything but DELETE, and an unknown
//! operation are refused with INVALID_REQUEST, as in Kafka.
//!
//! Concurrent alterations of one topic cannot undo each other: the new map is committed with
//! compare-and-set and recomputed from the newer map on conflict (`configs::alter_topic_configs`).

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::configs;
use crate::topics::ApiError;
use kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use spate_log::{ConfigKind, LogConfig};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 1 };

/// Kafka's `AlterConfigOp.OpType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpType {
    Set,
    Delete,
    Append,
    Subtract,
}

impl OpType {
    fn from_id(id: i8) -> Option<OpType> {
        match id {
            0 => Some(OpType::Set),
            1 => Some(OpType::Delete),
            2 => Some(OpType::Append),
            3 => Some(OpType::Subtract),
            _ => None,
        }
    }
}

impl fmt::Display for OpType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpType::Set => "SET",
            OpType::Delete => "DELETE",
            OpType::Append => "APPEND",
            OpType::Subtract => "SUBTRACT",
        })
    }
}

/// One requested change, as sent.
#[derive(Clone, Debug)]
struct ConfigOp<'a> {
    name: &'a str,
    op: i8,
    value: Option<&'a str>,
}

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: IncrementalAlterConfigsRequest,
) -> Reply<IncrementalAlterConfigsResponse> {
    let keys = request
        .resources
        .iter()
        .map(|r| (r.resource_type, r.resource_name.as_str().to_owned()))
        .collect();
    let resources = &request.resources;
    let outcomes = configs::alter_resources(keys, |i| {
        alter(broker, &resources[i], request.validate_only)
    })
    .await;
    let responses = resources
        .iter()
        .zip(outcomes)
        .map(|(resource, outcome)| {
            let (code, message) = configs::outcome_fields(
                "incremental alter configs",
                resource.resource_name.as_str(),
                outcome,
            );
            AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect::<Vec<_>>();
    Reply::Now(IncrementalAlterConfigsResponse::default().with_responses(responses))
}

async fn alter(
    broker: &Broker,
    resource: &AlterConfigsResource,
    validate_only: bool,
) -> Result<(), ApiError> {
    let ops: Vec<ConfigOp<'_>> = resource
        .configs
        .iter()
        .map(|c| ConfigOp {
            name: c.name.as_str(),
            op: c.config_operation,
            value: c.value.as_deref(),
        })
        .collect();
    // Malformed requests are refused before the resource is looked at, as Kafka does.
    check_ops(&ops)?;
    if let Some(e) = configs::unalterable_resource(resource.resource_type) {
        return Err(e);
    }
    let name = resource.resource_name.as_str();
    if resource.resource_type == configs::RESOURCE_GROUP {
        let group = configs::group_resource(name)?;
        // No group config is a list: APPEND and SUBTRACT are refused by `apply_ops_with`.
        return configs::alter_stored_configs(
            broker,
            &configs::StoredResource::Group(group.to_owned()),
            validate_only,
            |current, _image| apply_ops_with(current, &ops, |_| None, |_| None),
            |new, _image| configs::validate_group_overrides(new),
        )
        .await;
    }
    if resource.resource_type == configs::RESOURCE_BROKER {
        let node = configs::broker_alter_resource(name, &broker.image())?;
        let defaults = &broker.config.log_defaults;
        return configs::alter_stored_configs(
            broker,
            &configs::StoredResource::Broker(node),
            validate_only,
            |current, image| {
                apply_ops_with(current, &ops, configs::broker_config_kind, |name| {
                    configs::broker_list_base(name, node, image, defaults)
                })
            },
            |new, image| configs::validate_broker_overrides(node, new, image, defaults),
        )
        .await;
    }
    configs::alter_topic_configs(broker, name, validate_only, |current, defaults| {
        apply_ops(current, defaults, &ops)
    })
    .await
}

/// Kafka's checks of the request itself: each config once, a value for everything but DELETE,
/// known operations.
fn check_ops(ops: &[ConfigOp<'_>]) -> Result<(), ApiError> {
    if !configs::duplicates(ops.iter().map(|o| o.name)).is_empty() {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            "Error due to duplicate config keys",
        ));
    }
    if let Some(op) = ops.iter().find(|o| OpType::from_id(o.op).is_none()) {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!("Unknown config operation type {} for {}", op.op, op.name),
        ));
    }
    let nulls: Vec<&str> = ops
        .iter()
        .filter(|o| o.value.is_none() && OpType::from_id(o.op) != Some(OpType::Delete))
        .map(|o| o.name)
        .collect();
    if !nulls.is_empty() {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!("Null value not supported for : {}", nulls.join(", ")),
        ));
    }
    Ok(())
}

/// The complete new override map after applying `ops` to `current`. APPEND and SUBTRACT start
/// from the override if there is one, else from the topic's default on this broker, and keep
/// the list's order; a value already present is not appended twice.
fn apply_ops(
    current: &BTreeMap<String, String>,
    defaults: &LogConfig,
    ops: &[ConfigOp<'_>],
) -> Result<BTreeMap<String, String>, ApiError> {
    apply_ops_with(current, ops, configs::topic_config_kind, |name| {
        defaults.value_of(name)
    })
}

/// [`apply_ops`] for any resource: `kind_of` says which configs are lists, `default_of` gives
/// the value an APPEND or SUBTRACT starts from when there is no override.
fn apply_ops_with(
    current: &BTreeMap<String, String>,
    ops: &[ConfigOp<'_>],
    kind_of: impl Fn(&str) -> Option<ConfigKind>,
    default_of: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    check_ops(ops)?;
    let mut new = current.clone();
    for op in ops {
        let Some(op_type) = OpType::from_id(op.op) else {
            continue;
        };
        match (op_type, op.value) {
            (OpType::Set, Some(value)) => {
                new.insert(op.name.to_owned(), value.to_owned());
            }
            (OpType::Delete, _) => {
                new.remove(op.name);
            }
            (OpType::Append | OpType::Subtract, Some(value)) => {
                if kind_of(op.name) != Some(ConfigKind::List) {
                    return Err(ApiError::new(
                        ResponseError::InvalidConfig,
                        format!(
                            "Can't {op_type} to key {} because its type is not LIST.",
                            op.name
                        ),
                    ));
                }
                let old = new
                    .get(op.name)
                    .cloned()
                    .or_else(|| default_of(op.name))
                    .unwrap_or_default();
                let mut parts: Vec<&str> = split_list(&old).collect();
                for item in split_list(value) {
                    if op_type == OpType::Append {
                        if !parts.contains(&item) {
                            parts.push(item);
                        }
                    } else {
                        parts.retain(|p| *p != item);
                    }
                }
                new.insert(op.name.to_owned(), parts.join(","));
            }
            // Refused by `check_ops`.
            (OpType::Set | OpType::Append | OpType::Subtract, None) => {}
        }
    }
    Ok(new)
}

fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SET: i8 = 0;
    const DELETE: i8 = 1;
    const APPEND: i8 = 2;
    const SUBTRACT: i8 = 3;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn op<'a>(name: &'a str, op: i8, value: Option<&'a str>) -> ConfigOp<'a> {
        ConfigOp { name, op, value }
    }

    fn run(
        current: &[(&str, &str)],
        ops: &[ConfigOp<'_>],
    ) -> Result<BTreeMap<String, String>, ApiError> {
        apply_ops(&map(current), &LogConfig::default(), ops)
    }

    #[test]
    fn set_adds_or_replaces_and_leaves_other_overrides() {
        let new = run(
            &[("retention.ms", "1"), ("segment.ms", "9")],
            &[op("retention.ms", SET, Some("2"))],
        )
        .unwrap();
        assert_eq!(new, map(&[("retention.ms", "2"), ("segment.ms", "9")]));
    }

    #[test]
    fn delete_removes_and_deleting_an_absent_config_is_a_no_op() {
        let new = run(
            &[("retention.ms", "1")],
            &[op("retention.ms", DELETE, None)],
        )
        .unwrap();
        assert!(new.is_empty());
        let new = run(
            &[("retention.ms", "1")],
            &[op("segment.ms", DELETE, Some("ignored"))],
        )
        .unwrap();
        assert_eq!(new, map(&[("retention.ms", "1")]));
    }

    #[test]
    fn append_starts_from_the_default_and_does_not_repeat_values() {
        let new = run(&[], &[op("cleanup.policy", APPEND, Some("compact"))]).unwrap();
        assert_eq!(new, map(&[("cleanup.policy", "delete,compact")]));
        let new = run(
            &[("cleanup.policy", "compact")],
            &[op("cleanup.policy", APPEND, Some("compact,delete"))],
        )
        .unwrap();
        assert_eq!(new, map(&[("cleanup.policy", "compact,delete")]));
    }

    #[test]
    fn subtract_removes_list_items() {
        let new = run(
            &[("cleanup.policy", "delete,compact")],
            &[op("cleanup.policy", SUBTRACT, Some("delete"))],
        )
        .unwrap();
        assert_eq!(new, map(&[("cleanup.policy", "compact")]));
        // Subtracting everything leaves an empty list, which validation then refuses.
        let new = run(&[], &[op("cleanup.policy", SUBTRACT, Some("delete"))]).unwrap();
        assert_eq!(new, map(&[("cleanup.policy", "")]));
        assert!(configs::validate_overrides(&LogConfig::default(), &new).is_err());
    }

    #[test]
    fn append_or_subtract_on_a_non_list_config_is_invalid_config() {
        for (kind, name) in [
            (APPEND, "retention.ms"),
            (SUBTRACT, "segment.ms"),
            (APPEND, "no.such.config"),
        ] {
            let e = run(&[], &[op(name, kind, Some("1"))]).unwrap_err();
            assert_eq!(e.code, ResponseError::InvalidConfig, "{name}");
            assert!(
                e.message.ends_with("because its type is not LIST."),
                "{}",
                e.message
            );
        }
        let e = run(&[], &[op("retention.ms", APPEND, Some("1"))]).unwrap_err();
        assert_eq!(
            e.message,
            "Can't APPEND to key retention.ms because its type is not LIST."
        );
    }

    #[test]
    fn duplicate_keys_null_values_and_unknown_operations_are_invalid_requests() {
        let cases = [
            vec![
                op("retention.ms", SET, Some("1")),
                op("retention.ms", DELETE, None),
            ],
            vec![op("retention.ms", SET, None)],
            vec![op("cleanup.policy", APPEND, None)],
            vec![op("retention.ms", 9, Some("1"))],
        ];
        for ops in cases {
            let e = run(&[], &ops).unwrap_err();
            assert_eq!(
                e.code,
                ResponseError::InvalidRequest,
                "{ops:?}: {}",
                e.message
            );
        }
        assert_eq!(
            run(&[], &[op("a", SET, None), op("b", APPEND, None)])
                .unwrap_err()
                .message,
            "Null value not supported for : a, b"
        );
    }

    #[test]
    fn the_new_map_is_validated_by_the_caller_not_here() {
        // Unknown names and bad values pass through; `validate_overrides` refuses them whole.
        let new = run(&[], &[op("no.such.config", SET, Some("x"))]).unwrap();
        assert_eq!(
            configs::validate_overrides(&LogConfig::default(), &new)
                .unwrap_err()
                .code,
            ResponseError::InvalidConfig
        );
    }

    #[test]
    fn group_configs_take_set_and_delete_but_no_list_operations() {
        let current = map(&[("consumer.heartbeat.interval.ms", "6000")]);
        let ops = [
            op("consumer.session.timeout.ms", SET, Some("50000")),
            op("consumer.heartbeat.interval.ms", DELETE, Some("")),
        ];
        let new = apply_ops_with(&current, &ops, |_| None, |_| None).unwrap();
        assert_eq!(new, map(&[("consumer.session.timeout.ms", "50000")]));
        configs::validate_group_overrides(&new).unwrap();
        let e = apply_ops_with(
            &current,
            &[op("consumer.session.timeout.ms", APPEND, Some("1"))],
            |_| None,
            |_| None,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ResponseError::InvalidConfig,
                "Can't APPEND to key consumer.session.timeout.ms because its type is not LIST."
            )
        );
    }
}
