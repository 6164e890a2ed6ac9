//! `spate group list` and `spate group describe`: consumer groups and their lag, read over the
//! Kafka protocol the way an admin client reads them, so they work against any Kafka-compatible
//! broker.
//!
//! `describe` asks the bootstrap broker for the group's coordinator (FindCoordinator), the
//! coordinator for the group (DescribeGroups) and its committed offsets (OffsetFetch, all
//! partitions), the cluster for each partition's leader (Metadata) and each leader for the log
//! end offset (ListOffsets latest, read_committed). Lag is log end offset minus committed
//! offset; where either is unknown it is shown as "-".
//!
//! The log end offset shown (LOG-END-OFFSET, `log_end_offset`) is the partition's last stable
//! offset, for every group: the end of what a `read_committed` consumer can reach. Records of
//! a transaction still open are past it and not counted as lag until the transaction commits;
//! without open transactions it equals the high watermark. (The broker's
//! `spate_consumer_group_lag` metric uses the last stable offset only for groups that commit
//! offsets in transactions, and the high watermark for the others.)
//!
//! The fetching functions do I/O; everything that turns responses into rows and text is pure
//! and tested below.

use crate::cli::{self, json, ConnectArgs, Output, Retry};
use spate_client::{ClientError, Cluster};

mod describe;
mod list;

use describe::{describe_group, render_description, GroupDescription};
use list::{canonical_states, list_groups, render_list, ListedGroup};

/// The ListGroups version that brought the states filter (KIP-518).
const LIST_GROUPS_STATES_VERSION: i16 = 4;
/// FindCoordinator from this version looks up a batch of keys (KIP-699).
const FIND_COORDINATOR_BATCH_VERSION: i16 = 4;
/// OffsetFetch from this version asks for several groups at once (KIP-709).
const OFFSET_FETCH_GROUPS_VERSION: i16 = 8;
/// OffsetFetch with topics = null ("all partitions") exists from this version.
const OFFSET_FETCH_ALL_VERSION: i16 = 2;
/// ListOffsets has an isolation level from this version.
const LIST_OFFSETS_ISOLATION_VERSION: i16 = 2;
const READ_COMMITTED: i8 = 1;
const LATEST_TIMESTAMP: i64 = -1;
const CONSUMER_PROTOCOL_TYPE: &str = "consumer";
/// DescribeGroups answers this state for a group that does not exist.
const DEAD: &str = "Dead";
/// Group states as Kafka spells them (classic and KIP-848 consumer groups).
const KNOWN_STATES: &[&str] = &[
    "PreparingRebalance",
    "CompletingRebalance",
    "Stable",
    "Empty",
    "Dead",
    "Assigning",
    "Reconciling",
    "NotReady",
];

#[derive(clap::Subcommand)]
pub enum GroupCommand {
    /// List consumer groups: GROUP, STATE, PROTOCOL TYPE.
    List(ListArgs),
    /// Describe a group: state, members and their partitions, committed offsets and lag.
    ///
    /// LOG-END-OFFSET is the last stable offset (what a read_committed consumer can reach):
    /// records of an open transaction are not counted as lag until it commits.
    Describe(DescribeArgs),
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only groups in these states (repeatable or comma separated), e.g. Stable,Empty.
    #[arg(long = "state", value_name = "STATE", value_delimiter = ',')]
    states: Vec<String>,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(clap::Args)]
pub struct DescribeArgs {
    /// The group id.
    group: String,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Runs a `spate group` command; returns what to print on stdout.
pub fn run(command: GroupCommand) -> anyhow::Result<String> {
    cli::block_on(async {
        match command {
            GroupCommand::List(args) => {
                let states = canonical_states(&args.states);
                let mut cluster = args.connect.cluster();
                let groups = list_with_retries(&mut cluster, &states).await?;
                Ok(match args.connect.output {
                    Output::Text => render_list(&groups),
                    Output::Json => json(&serde_json::json!({ "groups": groups }))?,
                })
            }
            GroupCommand::Describe(args) => {
                let mut cluster = args.connect.cluster();
                let description = describe_with_retries(&mut cluster, &args.group).await?;
                Ok(match args.connect.output {
                    Output::Text => render_description(&description),
                    Output::Json => json(&description)?,
                })
            }
        }
    })
}

async fn list_with_retries(
    cluster: &mut Cluster,
    states: &[String],
) -> anyhow::Result<Vec<ListedGroup>> {
    let mut retry = Retry::default();
    loop {
        match list_groups(cluster, states).await {
            Ok(groups) => return Ok(groups),
            Err(error) => {
                retry
                    .wait(cluster, error, ClientError::is_coordinator_retriable)
                    .await?
            }
        }
    }
}

async fn describe_with_retries(
    cluster: &mut Cluster,
    group: &str,
) -> anyhow::Result<GroupDescription> {
    let mut retry = Retry::default();
    loop {
        match describe_group(cluster, group).await {
            Ok(description) => return Ok(description),
            Err(error) => {
                retry
                    .wait(cluster, error, ClientError::is_coordinator_retriable)
                    .await?
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::describe::{decode_assignment, lag, offset_rows, Member, Node};
    use super::list::filter_groups;
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::messages::consumer_protocol_assignment::{
        ConsumerProtocolAssignment, TopicPartition as AssignedTopic,
    };
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use spate_types::TopicPartition;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn encoded_assignment(version: i16, topics: &[(&str, &[i32])]) -> Bytes {
        let assignment = ConsumerProtocolAssignment::default()
            .with_assigned_partitions(
                topics
                    .iter()
                    .map(|(t, ps)| {
                        AssignedTopic::default()
                            .with_topic(TopicName(StrBytes::from_string((*t).to_owned())))
                            .with_partitions(ps.to_vec())
                    })
                    .collect(),
            )
            .with_user_data(Some(Bytes::from_static(b"ud")));
        let mut buf = bytes::BytesMut::new();
        bytes::BufMut::put_i16(&mut buf, version);
        assignment
            .encode(&mut buf, version.min(3))
            .expect("encodes");
        buf.freeze()
    }

    fn member(id: &str, assignment: &[(&str, i32)]) -> Member {
        Member {
            member_id: id.to_owned(),
            group_instance_id: None,
            client_id: "rdkafka".to_owned(),
            host: "/127.0.0.1".to_owned(),
            assignment: assignment
                .iter()
                .map(|(t, p)| TopicPartition::new(*t, *p))
                .collect(),
        }
    }

    #[test]
    fn decodes_assignments_of_every_version_sorted() {
        for version in 0..=3 {
            let bytes = encoded_assignment(version, &[("t", &[2, 0]), ("a", &[1])]);
            assert_eq!(
                decode_assignment(&bytes).expect("decodes"),
                vec![
                    TopicPartition::new("a", 1),
                    TopicPartition::new("t", 0),
                    TopicPartition::new("t", 2)
                ],
                "version {version}"
            );
        }
    }

    #[test]
    fn newer_assignment_versions_read_as_the_newest_known() {
        let mut bytes = encoded_assignment(7, &[("t", &[0])]).to_vec();
        bytes.extend_from_slice(b"fields from the future");
        assert_eq!(
            decode_assignment(&Bytes::from(bytes)).expect("decodes"),
            vec![TopicPartition::new("t", 0)]
        );
    }

    #[test]
    fn empty_assignment_is_no_partitions_and_garbage_is_an_error() {
        assert_eq!(decode_assignment(&Bytes::new()).expect("empty"), vec![]);
        assert!(decode_assignment(&Bytes::from_static(&[0])).is_err());
        assert!(decode_assignment(&Bytes::from_static(&[0xff, 0xff, 0, 0])).is_err());
        // Claims 2^31-1 topics in 4 bytes.
        assert!(decode_assignment(&Bytes::from_static(&[0, 0, 0x7f, 0xff, 0xff, 0xff])).is_err());
    }

    #[test]
    fn lag_needs_both_offsets() {
        assert_eq!(lag(Some(4), Some(10)), Some(6));
        assert_eq!(lag(Some(10), Some(10)), Some(0));
        assert_eq!(lag(None, Some(10)), None);
        assert_eq!(lag(Some(4), None), None);
        assert_eq!(lag(Some(12), Some(10)), Some(-2));
    }

    #[test]
    fn rows_cover_committed_and_assigned_partitions() {
        let members = vec![
            member("m1", &[("t", 0), ("t", 1)]),
            member("m2", &[("t", 2)]),
        ];
        let committed = BTreeMap::from([
            (TopicPartition::new("t", 0), 4),
            (TopicPartition::new("t", 2), 3),
            (TopicPartition::new("old", 0), 7),
        ]);
        let log_end = BTreeMap::from([
            (TopicPartition::new("t", 0), 10),
            (TopicPartition::new("t", 1), 10),
            (TopicPartition::new("t", 2), 10),
        ]);
        let rows = offset_rows(&members, &committed, &log_end);
        let summary: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.topic.as_str(),
                    r.partition,
                    r.current_offset,
                    r.log_end_offset,
                    r.lag,
                    r.consumer_id.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("old", 0, Some(7), None, None, None),
                ("t", 0, Some(4), Some(10), Some(6), Some("m1")),
                ("t", 1, None, Some(10), None, Some("m1")),
                ("t", 2, Some(3), Some(10), Some(7), Some("m2")),
            ]
        );
    }

    #[test]
    fn describe_text_shows_dashes_for_unknown_offsets() {
        let members = vec![member("m1", &[("t", 0), ("t", 1)])];
        let committed = BTreeMap::from([(TopicPartition::new("t", 0), 4)]);
        let log_end = BTreeMap::from([
            (TopicPartition::new("t", 0), 10),
            (TopicPartition::new("t", 1), 10),
        ]);
        let offsets = offset_rows(&members, &committed, &log_end);
        let d = GroupDescription {
            group: "g1".into(),
            state: "Stable".into(),
            protocol_type: "consumer".into(),
            protocol: "range".into(),
            coordinator: Node {
                node_id: 1,
                host: "127.0.0.1".into(),
                port: 9092,
            },
            total_lag: offsets.iter().filter_map(|r| r.lag).sum(),
            members,
            offsets,
        };
        let text = render_description(&d);
        assert!(text.contains("STATE        Stable\n"), "{text}");
        assert!(text.contains("PROTOCOL     consumer (range)\n"), "{text}");
        assert!(text.contains("COORDINATOR  1 (127.0.0.1:9092)\n"), "{text}");
        assert!(
            text.contains("m1         -                  rdkafka    /127.0.0.1  t:0,1\n"),
            "{text}"
        );
        assert!(
            text.contains("t      0          4               10              6    m1\n"),
            "{text}"
        );
        assert!(
            text.contains("t      1          -               10              -    m1\n"),
            "{text}"
        );
        assert_eq!(d.total_lag, 6);
        let json = serde_json::to_value(&d).expect("json");
        assert_eq!(
            json["offsets"][1]["current_offset"],
            serde_json::Value::Null
        );
        assert_eq!(json["members"][0]["assignment"][1]["partition"], 1);
    }

    #[test]
    fn list_filters_states_case_insensitively_and_sorts() {
        let g = |id: &str, state: &str| ListedGroup {
            group: id.into(),
            state: state.into(),
            protocol_type: "consumer".into(),
        };
        let groups = vec![
            g("b", "Stable"),
            g("a", "Empty"),
            g("c", "Stable"),
            g("b", "Stable"),
        ];
        let states = canonical_states(&["stable".to_owned()]);
        assert_eq!(states, vec!["Stable".to_owned()]);
        assert_eq!(
            filter_groups(groups.clone(), &states),
            vec![g("b", "Stable"), g("c", "Stable")]
        );
        assert_eq!(filter_groups(groups, &[]).len(), 3);
        assert_eq!(
            canonical_states(&["Weird".to_owned(), " ".to_owned()]),
            vec!["Weird"]
        );
    }

    // ---- against the scripted broker -----------------------------------------------------

    use crate::fake_broker::{FakeBroker, Script, Seen};

    #[tokio::test]
    async fn describe_on_a_modern_broker_uses_the_newest_versions() {
        let broker = FakeBroker::start(Script::modern()).await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let d = describe_with_retries(&mut cluster, "g1")
            .await
            .expect("describe");
        assert_eq!((d.state.as_str(), d.protocol.as_str()), ("Stable", "range"));
        assert_eq!(d.members.len(), 1);
        assert_eq!(
            d.members[0].assignment,
            (0..3)
                .map(|p| TopicPartition::new("t", p))
                .collect::<Vec<_>>()
        );
        let offsets: Vec<_> = d
            .offsets
            .iter()
            .map(|r| (r.partition, r.current_offset, r.log_end_offset, r.lag))
            .collect();
        assert_eq!(
            offsets,
            vec![
                (0, Some(4), Some(10), Some(6)),
                (1, Some(3), Some(10), Some(7)),
                (2, Some(3), Some(10), Some(7))
            ]
        );
        assert_eq!(d.total_lag, 20);
        assert!(d
            .offsets
            .iter()
            .all(|r| r.consumer_id.as_deref() == Some("m1")));

        let seen = broker.seen();
        // ApiVersions v4 was refused (KIP-511), v3 answered; one connection (the coordinator is
        // the bootstrap broker and the leader).
        assert_eq!(
            seen.iter()
                .filter(|s| matches!(s, Seen::ApiVersions(_)))
                .collect::<Vec<_>>(),
            vec![&Seen::ApiVersions(3)]
        );
        for s in &seen {
            match s {
                Seen::FindCoordinator(v, r) => {
                    assert_eq!(*v, 6);
                    assert_eq!(r.coordinator_keys, vec![StrBytes::from_static_str("g1")]);
                    assert_eq!(r.key_type, 0);
                }
                Seen::OffsetFetch(v, r) => {
                    assert_eq!(*v, 9);
                    assert_eq!(r.groups.len(), 1);
                    assert_eq!(r.groups[0].topics, None, "all partitions");
                }
                Seen::ListOffsets(v, r) => {
                    assert_eq!(*v, 9);
                    assert_eq!((r.replica_id.0, r.isolation_level), (-1, READ_COMMITTED));
                    assert!(r.topics[0].partitions.iter().all(|p| p.timestamp == -1));
                }
                Seen::Metadata(v, r) => {
                    assert_eq!(*v, 12);
                    assert!(!r.allow_auto_topic_creation);
                }
                Seen::DescribeGroups(v) => assert_eq!(*v, 5),
                Seen::ApiVersions(_) | Seen::ListGroups(..) => {}
            }
        }
    }

    #[tokio::test]
    async fn describe_on_an_old_broker_uses_the_older_request_forms() {
        let broker = FakeBroker::start(Script::old()).await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let d = describe_with_retries(&mut cluster, "g1")
            .await
            .expect("describe");
        assert_eq!(d.total_lag, 20);
        for s in broker.seen() {
            match s {
                Seen::FindCoordinator(v, r) => {
                    assert_eq!(v, 2);
                    assert_eq!(r.key.as_str(), "g1");
                }
                Seen::OffsetFetch(v, r) => {
                    assert_eq!(v, 5);
                    assert_eq!((r.group_id.0.as_str(), r.topics), ("g1", None));
                }
                Seen::ListOffsets(v, r) => assert_eq!((v, r.isolation_level), (5, 1)),
                Seen::ApiVersions(v) => assert_eq!(v, 2),
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn an_empty_group_shows_committed_offsets_without_consumers() {
        let broker = FakeBroker::start(Script::modern()).await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let d = describe_with_retries(&mut cluster, "empty")
            .await
            .expect("describe");
        assert_eq!(d.state, "Empty");
        assert!(d.members.is_empty());
        assert_eq!(d.offsets.len(), 1);
        assert_eq!(
            (d.offsets[0].lag, d.offsets[0].consumer_id.clone()),
            (Some(5), None)
        );
        assert!(render_description(&d).contains("Group empty has no active members."));
    }

    #[tokio::test]
    async fn an_unknown_group_does_not_exist() {
        let broker = FakeBroker::start(Script::modern()).await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let err = describe_with_retries(&mut cluster, "nope")
            .await
            .expect_err("dead");
        assert_eq!(format!("{err:#}"), "group nope does not exist");
    }

    #[tokio::test]
    async fn a_loading_coordinator_is_retried_until_the_deadline() {
        let broker = FakeBroker::start(Script {
            loading_answers: 3,
            ..Script::modern()
        })
        .await;
        let mut cluster = cli::cluster(&broker.addr, 5_000);
        let d = describe_with_retries(&mut cluster, "g1")
            .await
            .expect("after retries");
        assert_eq!(d.state, "Stable");
        let describes = broker
            .seen()
            .iter()
            .filter(|s| matches!(s, Seen::DescribeGroups(_)))
            .count();
        assert_eq!(describes, 4);

        let broker = FakeBroker::start(Script {
            loading_answers: usize::MAX,
            ..Script::modern()
        })
        .await;
        let started = std::time::Instant::now();
        let mut cluster = cli::cluster(&broker.addr, 300);
        let err = describe_with_retries(&mut cluster, "g1")
            .await
            .expect_err("gives up");
        let message = format!("{err:#}");
        assert!(message.starts_with("gave up after 300 ms: "), "{message}");
        assert!(
            message.contains("COORDINATOR_LOAD_IN_PROGRESS"),
            "{message}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn list_filters_on_the_broker_or_here() {
        for (script, filter_version) in [(Script::modern(), 5), (Script::old(), 2)] {
            let broker = FakeBroker::start(script).await;
            let mut cluster = cli::cluster(&broker.addr, 5_000);
            let all = list_with_retries(&mut cluster, &[]).await.expect("list");
            let states: Vec<_> = all
                .iter()
                .map(|g| (g.group.as_str(), g.state.as_str()))
                .collect();
            assert_eq!(states, vec![("empty", "Empty"), ("g1", "Stable")]);
            let stable = list_with_retries(&mut cluster, &canonical_states(&["STABLE".into()]))
                .await
                .expect("list");
            assert_eq!(stable.len(), 1, "v{filter_version}");
            assert_eq!(stable[0].group, "g1");
            let last = broker
                .seen()
                .into_iter()
                .filter_map(|s| match s {
                    Seen::ListGroups(v, r) => Some((v, r.states_filter.len())),
                    _ => None,
                })
                .last();
            let sent = if filter_version >= LIST_GROUPS_STATES_VERSION {
                1
            } else {
                0
            };
            assert_eq!(last, Some((filter_version, sent)));
        }
    }

    #[tokio::test]
    async fn unreachable_and_silent_brokers_fail_clearly() {
        // A port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let mut cluster = cli::cluster(&format!("127.0.0.1:{port}"), 2_000);
        let err = list_with_retries(&mut cluster, &[])
            .await
            .expect_err("refused");
        assert!(
            format!("{err:#}").starts_with(&format!("cannot connect to broker 127.0.0.1:{port}: ")),
            "{err:#}"
        );
        // A listener that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = silent.local_addr().expect("addr").to_string();
        let mut cluster = cli::cluster(&addr, 200);
        let started = std::time::Instant::now();
        let err = describe_with_retries(&mut cluster, "g1")
            .await
            .expect_err("silent");
        assert_eq!(
            format!("{err:#}"),
            format!("timed out after 200 ms waiting for the ApiVersions response ({addr})")
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
