//! Manual replica assignment: CreateTopic and CreatePartitions with the client's replica lists.

use super::replication_tests::fence;
use super::tests::register_alive;
use super::*;

fn cluster(n: i32) -> MetadataImage {
    let mut image = MetadataImage::default();
    for node in 1..=n {
        register_alive(&mut image, NodeId(node));
    }
    image
}

fn lists(ids: &[&[i32]]) -> Vec<Vec<NodeId>> {
    ids.iter()
        .map(|l| l.iter().copied().map(NodeId).collect())
        .collect()
}

fn create(ids: &[&[i32]]) -> MetadataCommand {
    let rf = ids.first().map_or(1, |l| l.len());
    MetadataCommand::CreateTopic {
        name: "t".into(),
        topic_id: Uuid::from_u128(7),
        partitions: i32::try_from(ids.len()).unwrap_or(i32::MAX),
        replication_factor: i16::try_from(rf).unwrap_or(i16::MAX),
        configs: BTreeMap::new(),
        assignments: Some(lists(ids)),
    }
}

fn grow(new_total: i32, ids: &[&[i32]]) -> MetadataCommand {
    MetadataCommand::CreatePartitions {
        name: "t".into(),
        new_total,
        assignments: Some(lists(ids)),
    }
}

/// Applies a command expected to be rejected, checks the image did not change, and returns
/// the reason.
fn refused(image: &mut MetadataImage, cmd: &MetadataCommand) -> String {
    let before = image.clone();
    match apply(image, cmd) {
        MetadataOutcome::Rejected(MetadataError::InvalidReplicaAssignment(reason)) => {
            assert_eq!(*image, before, "a rejected {cmd} changed the image");
            reason
        }
        other => panic!("{cmd}: expected INVALID_REPLICA_ASSIGNMENT, got {other:?}"),
    }
}

fn replicas(image: &MetadataImage) -> Vec<Vec<i32>> {
    image.topics["t"]
        .partitions
        .iter()
        .map(|p| p.replicas.iter().map(|n| n.0).collect())
        .collect()
}

#[test]
fn a_topic_gets_the_replica_lists_it_was_given_and_the_first_replica_leads() {
    let mut image = cluster(3);
    let out = apply(&mut image, &create(&[&[3, 1], &[2, 3], &[1, 2]]));
    assert!(
        matches!(out, MetadataOutcome::TopicCreated { .. }),
        "{out:?}"
    );
    assert_eq!(replicas(&image), vec![vec![3, 1], vec![2, 3], vec![1, 2]]);
    for p in &image.topics["t"].partitions {
        assert_eq!(p.leader, p.replicas[0]);
        assert_eq!(p.isr, p.replicas);
        assert_eq!((p.leader_epoch, p.partition_epoch), (LeaderEpoch(0), 0));
    }
}

#[test]
fn a_fenced_replica_is_placed_outside_the_isr_and_does_not_lead() {
    let mut image = cluster(3);
    fence(&mut image, 3);
    let out = apply(&mut image, &create(&[&[3, 1, 2]]));
    assert!(
        matches!(out, MetadataOutcome::TopicCreated { .. }),
        "{out:?}"
    );
    let p = &image.topics["t"].partitions[0];
    assert_eq!(p.replicas, lists(&[&[3, 1, 2]])[0]);
    assert_eq!(p.isr, vec![NodeId(1), NodeId(2)]);
    assert_eq!(p.leader, NodeId(1));
}

#[test]
fn a_partition_whose_replicas_are_all_fenced_is_refused() {
    let mut image = cluster(3);
    fence(&mut image, 2);
    fence(&mut image, 3);
    let reason = refused(&mut image, &create(&[&[1], &[2]]));
    assert!(reason.contains("for partition 1 are fenced"), "{reason}");
    assert!(!image.topics.contains_key("t"));
}

#[test]
fn bad_replica_lists_are_refused_as_kafka_refuses_them() {
    let mut image = cluster(3);
    for (ids, expected) in [
        (&[&[1, 1][..]][..], "more than once"),
        (&[&[4]], "no such broker"),
        (&[&[0]], "no such broker"),
        (&[&[1, 2], &[3]], "not consistent"),
    ] {
        let reason = refused(&mut image, &create(ids));
        assert!(reason.contains(expected), "{ids:?}: {reason}");
    }
    // The replication factor of the command binds the lists.
    let mut cmd = create(&[&[1, 2]]);
    if let MetadataCommand::CreateTopic {
        replication_factor, ..
    } = &mut cmd
    {
        *replication_factor = 3;
    }
    assert!(refused(&mut image, &cmd).contains("which have 3 replica(s)"));
}

#[test]
fn a_partition_count_that_disagrees_with_the_lists_is_refused() {
    let mut image = cluster(2);
    let mut cmd = create(&[&[1], &[2]]);
    if let MetadataCommand::CreateTopic { partitions, .. } = &mut cmd {
        *partitions = 3;
    }
    let before = image.clone();
    let out = apply(&mut image, &cmd);
    assert!(
        matches!(
            out,
            MetadataOutcome::Rejected(MetadataError::InvalidRequest(_))
        ),
        "{out:?}"
    );
    assert_eq!(image, before);
}

#[test]
fn new_partitions_get_the_replica_lists_they_were_given() {
    let mut image = cluster(3);
    apply(&mut image, &create(&[&[1, 2]]));
    let out = apply(&mut image, &grow(3, &[&[3, 2], &[2, 1]]));
    assert_eq!(out, MetadataOutcome::PartitionsCreated);
    assert_eq!(replicas(&image), vec![vec![1, 2], vec![3, 2], vec![2, 1]]);
    let led: Vec<i32> = image.topics["t"]
        .partitions
        .iter()
        .map(|p| p.leader.0)
        .collect();
    assert_eq!(led, vec![1, 3, 2]);
}

#[test]
fn new_partitions_keep_the_topics_replication_factor_and_count() {
    let mut image = cluster(3);
    apply(&mut image, &create(&[&[1, 2]]));
    let reason = refused(&mut image, &grow(2, &[&[3]]));
    assert!(reason.contains("which have 2 replica(s)"), "{reason}");
    let reason = refused(&mut image, &grow(3, &[&[3, 1]]));
    assert!(
        reason.contains("add 2 additional partition(s), but only 1"),
        "{reason}"
    );
    let reason = refused(&mut image, &grow(2, &[&[3, 9]]));
    assert!(reason.contains("no such broker"), "{reason}");
}

#[test]
fn a_manual_assignment_survives_the_log_encoding_and_old_entries_have_none() {
    let cmd = grow(2, &[&[3, 1]]);
    let json = serde_json::to_vec(&cmd).unwrap_or_default();
    assert_eq!(
        serde_json::from_slice::<MetadataCommand>(&json).ok(),
        Some(cmd)
    );
    let old: MetadataCommand =
        serde_json::from_str(r#"{"CreatePartitions":{"name":"t","new_total":2}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        old,
        MetadataCommand::CreatePartitions {
            name: "t".into(),
            new_total: 2,
            assignments: None
        }
    );
}
