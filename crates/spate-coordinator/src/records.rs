//! The `__consumer_offsets` record format, byte for byte Kafka's (key versions 0/1 for an
//! offset commit, 2 for group metadata; offset value v3, group value v3), so the log reads
//! the same as Kafka's. A null value is a tombstone. Decoding checks every length against the
//! bytes left, so a corrupt record is an error, never a large allocation.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A stored member of a group (group metadata value v3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// A stored group (group metadata value v3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredGroup {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp_ms: i64,
    pub members: Vec<StoredMember>,
}

/// A stored offset commit (offset commit value v3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// One record of the offsets log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffsetsRecord {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        /// `None`: the offset was deleted.
        value: Option<StoredOffset>,
    },
    Group {
        group: String,
        /// `None`: the group was deleted.
        value: Option<StoredGroup>,
    },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed coordinator record: {0}")]
pub struct RecordError(pub(crate) &'static str);

impl OffsetsRecord {
    /// The group the record belongs to (it decides the offsets partition).
    pub fn group(&self) -> &str {
        match self {
            OffsetsRecord::Offset { group, .. } | OffsetsRecord::Group { group, .. } => group,
        }
    }

    pub fn encode(&self) -> (Bytes, Option<Bytes>) {
        let mut key = BytesMut::new();
        match self {
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => {
                key.put_i16(1);
                put_str(&mut key, group);
                put_str(&mut key, topic);
                key.put_i32(*partition);
                let value = value.as_ref().map(|v| {
                    let mut b = BytesMut::new();
                    b.put_i16(3);
                    b.put_i64(v.offset);
                    b.put_i32(v.leader_epoch);
                    put_str(&mut b, &v.metadata);
                    b.put_i64(v.commit_timestamp_ms);
                    b.freeze()
                });
                (key.freeze(), value)
            }
            OffsetsRecord::Group { group, value } => {
                key.put_i16(2);
                put_str(&mut key, group);
                let value = value.as_ref().map(|g| {
                    let mut b = BytesMut::new();
                    b.put_i16(3);
                    put_str(&mut b, &g.protocol_type);
                    b.put_i32(g.generation);
                    put_opt_str(&mut b, g.protocol.as_deref());
                    put_opt_str(&mut b, g.leader.as_deref());
                    b.put_i64(g.state_timestamp_ms);
                    b.put_i32(g.members.len() as i32);
                    for m in &g.members {
                        put_str(&mut b, &m.member_id);
                        put_opt_str(&mut b, m.instance_id.as_deref());
                        put_str(&mut b, &m.client_id);
                        put_str(&mut b, &m.client_host);
                        b.put_i32(m.rebalance_timeout_ms);
                        b.put_i32(m.session_timeout_ms);
                        put_bytes(&mut b, &m.subscription);
                        put_bytes(&mut b, &m.assignment);
                    }
                    b.freeze()
                });
                (key.freeze(), value)
            }
        }
    }

    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<OffsetsRecord, RecordError> {
        let mut k = key;
        let version = get_i16(&mut k)?;
        match version {
            0 | 1 => {
                let group = get_str(&mut k)?;
                let topic = get_str(&mut k)?;
                let partition = get_i32(&mut k)?;
                let value = match value {
                    None => None,
                    Some(mut v) => {
                        let version = get_i16(&mut v)?;
                        let offset = get_i64(&mut v)?;
                        // v3 added the leader epoch; v1 had an expire timestamp after the
                        // commit timestamp; v0/v2 neither.
                        let leader_epoch = if version >= 3 { get_i32(&mut v)? } else { -1 };
                        let metadata = get_str(&mut v)?;
                        let commit_timestamp_ms = get_i64(&mut v)?;
                        if !(0..=4).contains(&version) {
                            return Err(RecordError("unknown offset value version"));
                        }
                        Some(StoredOffset {
                            offset,
                            leader_epoch,
                            metadata,
                            commit_timestamp_ms,
                        })
                    }
                };
                Ok(OffsetsRecord::Offset {
                    group,
                    topic,
                    partition,
                    value,
                })
            }
            2 => {
                let group = get_str(&mut k)?;
                let value = match value {
                    None => None,
                    Some(mut v) => {
                        let version = get_i16(&mut v)?;
                        if !(0..=4).contains(&version) {
                            return Err(RecordError("unknown group value version"));
                        }
                        let protocol_type = get_str(&mut v)?;
                        let generation = get_i32(&mut v)?;
                        let protocol = get_opt_str(&mut v)?;
                        let leader = get_opt_str(&mut v)?;
                        let state_timestamp_ms = if version >= 2 { get_i64(&mut v)? } else { -1 };
                        let count = get_i32(&mut v)?;
                        // Each member takes at least 28 bytes, so the count is checked against
                        // what is left before anything is allocated.
                        if count < 0 || count as usize > v.len() / 28 + 1 {
                            return Err(RecordError("member count exceeds the value"));
                        }
                        let mut members = Vec::with_capacity(count as usize);
                        for _ in 0..count {
                            let member_id = get_str(&mut v)?;
                            let instance_id = if version >= 3 {
                                get_opt_str(&mut v)?
                            } else {
                                None
                            };
                            let client_id = get_str(&mut v)?;
                            let client_host = get_str(&mut v)?;
                            let rebalance_timeout_ms =
                                if version >= 1 { get_i32(&mut v)? } else { -1 };
                            let session_timeout_ms = get_i32(&mut v)?;
                            let subscription = get_bytes(&mut v)?;
                            let assignment = get_bytes(&mut v)?;
                            members.push(StoredMember {
                                member_id,
                                instance_id,
                                client_id,
                                client_host,
                                rebalance_timeout_ms,
                                session_timeout_ms,
                                subscription,
                                assignment,
                            });
                        }
                        Some(StoredGroup {
                            protocol_type,
                            generation,
                            protocol,
                            leader,
                            state_timestamp_ms,
                            members,
                        })
                    }
                };
                Ok(OffsetsRecord::Group { group, value })
            }
            _ => Err(RecordError("unknown key version")),
        }
    }
}

/// The offsets partition of a group: Kafka's `abs(groupId.hashCode()) % partitions`, with
/// Java's `String.hashCode` over UTF-16 code units, so a group lands where Kafka puts it.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let mut h: i32 = 0;
    for unit in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    (h & 0x7fff_ffff) % partitions.max(1)
}

pub(crate) fn put_str(b: &mut BytesMut, s: &str) {
    b.put_i16(s.len().min(i16::MAX as usize) as i16);
    b.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

fn put_opt_str(b: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(b, s),
        None => b.put_i16(-1),
    }
}

fn put_bytes(b: &mut BytesMut, bytes: &[u8]) {
    b.put_i32(bytes.len() as i32);
    b.put_slice(bytes);
}

pub(crate) fn need(buf: &[u8], n: usize) -> Result<(), RecordError> {
    if buf.len() < n {
        Err(RecordError("truncated"))
    } else {
        Ok(())
    }
}

pub(crate) fn get_i16(buf: &mut &[u8]) -> Result<i16, RecordError> {
    need(buf, 2)?;
    Ok(buf.get_i16())
}

pub(crate) fn get_i32(buf: &mut &[u8]) -> Result<i32, RecordError> {
    need(buf, 4)?;
    Ok(buf.get_i32())
}

pub(crate) fn get_i64(buf: &mut &[u8]) -> Result<i64, RecordError> {
    need(buf, 8)?;
    Ok(buf.get_i64())
}

pub(crate) fn get_opt_str(buf: &mut &[u8]) -> Result<Option<String>, RecordError> {
    let len = get_i16(buf)?;
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    need(buf, len)?;
    let s = std::str::from_utf8(&buf[..len]).map_err(|_| RecordError("string is not UTF-8"))?;
    let s = s.to_owned();
    buf.advance(len);
    Ok(Some(s))
}

pub(crate) fn get_str(buf: &mut &[u8]) -> Result<String, RecordError> {
    get_opt_str(buf)?.ok_or(RecordError("null string"))
}

fn get_bytes(buf: &mut &[u8]) -> Result<Bytes, RecordError> {
    let len = get_i32(buf)?;
    if len < 0 {
        return Ok(Bytes::new());
    }
    let len = len as usize;
    need(buf, len)?;
    let b = Bytes::copy_from_slice(&buf[..len]);
    buf.advance(len);
    Ok(b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn group_partition_matches_kafka() {
        // Java: Math.abs("test-group".hashCode()) % 50 == 12 ... computed by Java's formula.
        let h = "abc"
            .chars()
            .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
        assert_eq!(h, 96354);
        assert_eq!(partition_for("abc", 50), 96354 % 50);
        assert!((0..50).contains(&partition_for("a-very-long-group-name-that-overflows", 50)));
        assert_eq!(partition_for("x", 1), 0);
    }

    #[test]
    fn records_round_trip_and_tombstones_decode() {
        let records = vec![
            OffsetsRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 3,
                value: Some(StoredOffset {
                    offset: 42,
                    leader_epoch: 7,
                    metadata: "meta \u{e9}".into(),
                    commit_timestamp_ms: 1000,
                }),
            },
            OffsetsRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 3,
                value: None,
            },
            OffsetsRecord::Group {
                group: "g".into(),
                value: Some(StoredGroup {
                    protocol_type: "consumer".into(),
                    generation: 5,
                    protocol: Some("range".into()),
                    leader: Some("m1".into()),
                    state_timestamp_ms: 9,
                    members: vec![StoredMember {
                        member_id: "m1".into(),
                        instance_id: Some("i1".into()),
                        client_id: "c".into(),
                        client_host: "/127.0.0.1".into(),
                        rebalance_timeout_ms: 300000,
                        session_timeout_ms: 45000,
                        subscription: Bytes::from_static(b"sub"),
                        assignment: Bytes::from_static(b"asg"),
                    }],
                }),
            },
            OffsetsRecord::Group {
                group: "g".into(),
                value: None,
            },
        ];
        for r in records {
            let (k, v) = r.encode();
            assert_eq!(OffsetsRecord::decode(&k, v.as_deref()).unwrap(), r);
        }
    }

    #[test]
    fn bad_records_are_errors() {
        assert!(OffsetsRecord::decode(&[], None).is_err());
        assert!(OffsetsRecord::decode(&[0, 9, 0, 1, b'g'], None).is_err());
        // Group value claiming 2^31 members in a few bytes.
        let (k, _) = OffsetsRecord::Group {
            group: "g".into(),
            value: None,
        }
        .encode();
        let mut v = BytesMut::new();
        v.put_i16(3);
        put_str(&mut v, "consumer");
        v.put_i32(1);
        v.put_i16(-1);
        v.put_i16(-1);
        v.put_i64(0);
        v.put_i32(i32::MAX);
        assert!(OffsetsRecord::decode(&k, Some(&v)).is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(k in proptest::collection::vec(any::<u8>(), 0..64),
                                                 v in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = OffsetsRecord::decode(&k, Some(&v));
        }
    }
}
