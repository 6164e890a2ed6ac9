//! The `__transaction_state` record format, byte for byte Kafka's: key version 0 (the
//! transactional id), value version 0 (classic encoding) or 1 (flexible, with the tagged
//! previous/next producer ids and client transaction version of KIP-890). As Kafka does, a
//! value is written at version 1 only for a client on transaction version 2, so the log of a
//! cluster that never used it reads as version 0. A null value is a tombstone (the id expired).
//! Decoding checks every length against the bytes left, so a corrupt record is an error,
//! never a large allocation.

use super::state::{TxnMetadata, TxnState, NO_PRODUCER_ID};
use crate::records::{get_i16, get_i32, get_i64, get_str, need, put_str, RecordError};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::BTreeSet;

/// One record of the transaction log: a transactional id's metadata, or its removal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRecord {
    pub transactional_id: String,
    /// `None`: the transactional id expired.
    pub value: Option<TxnMetadata>,
}

impl TxnRecord {
    pub fn encode(&self) -> (Bytes, Option<Bytes>) {
        let mut key = BytesMut::new();
        key.put_i16(0);
        put_str(&mut key, &self.transactional_id);
        let value = self.value.as_ref().map(|m| {
            let mut b = BytesMut::new();
            if m.uses_epoch_bump() {
                encode_v1(&mut b, m);
            } else {
                encode_v0(&mut b, m);
            }
            b.freeze()
        });
        (key.freeze(), value)
    }

    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<TxnRecord, RecordError> {
        let mut k = key;
        if get_i16(&mut k)? != 0 {
            return Err(RecordError("unknown transaction log key version"));
        }
        let transactional_id = get_str(&mut k)?;
        let value = match value {
            None => None,
            Some(mut v) => Some(match get_i16(&mut v)? {
                0 => decode_v0(&mut v)?,
                1 => decode_v1(&mut v)?,
                _ => return Err(RecordError("unknown transaction log value version")),
            }),
        };
        Ok(TxnRecord {
            transactional_id,
            value,
        })
    }
}

/// Partitions grouped by topic, as the log stores them. An Empty transaction stores null, as
/// Kafka does.
fn by_topic(m: &TxnMetadata) -> Option<Vec<(&str, Vec<i32>)>> {
    if m.state == TxnState::Empty {
        return None;
    }
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for (topic, partition) in &m.partitions {
        match topics.last_mut() {
            Some((t, ps)) if *t == topic => ps.push(*partition),
            _ => topics.push((topic, vec![*partition])),
        }
    }
    Some(topics)
}

fn encode_v0(b: &mut BytesMut, m: &TxnMetadata) {
    b.put_i16(0);
    b.put_i64(m.producer_id);
    b.put_i16(m.producer_epoch);
    b.put_i32(m.timeout_ms);
    b.put_i8(m.state.id());
    match by_topic(m) {
        None => b.put_i32(-1),
        Some(topics) => {
            b.put_i32(topics.len() as i32);
            for (topic, partitions) in topics {
                put_str(b, topic);
                b.put_i32(partitions.len() as i32);
                for p in partitions {
                    b.put_i32(p);
                }
            }
        }
    }
    b.put_i64(m.last_update_ms);
    b.put_i64(m.start_ms);
}

fn encode_v1(b: &mut BytesMut, m: &TxnMetadata) {
    b.put_i16(1);
    b.put_i64(m.producer_id);
    b.put_i16(m.producer_epoch);
    b.put_i32(m.timeout_ms);
    b.put_i8(m.state.id());
    match by_topic(m) {
        None => put_uvarint(b, 0),
        Some(topics) => {
            put_uvarint(b, topics.len() as u32 + 1);
            for (topic, partitions) in topics {
                put_uvarint(b, topic.len() as u32 + 1);
                b.put_slice(topic.as_bytes());
                put_uvarint(b, partitions.len() as u32 + 1);
                for p in partitions {
                    b.put_i32(p);
                }
                put_uvarint(b, 0);
            }
        }
    }
    b.put_i64(m.last_update_ms);
    b.put_i64(m.start_ms);
    let mut tags: Vec<(u32, BytesMut)> = Vec::new();
    if m.prev_producer_id != NO_PRODUCER_ID {
        let mut t = BytesMut::new();
        t.put_i64(m.prev_producer_id);
        tags.push((0, t));
    }
    if m.next_producer_id != NO_PRODUCER_ID {
        let mut t = BytesMut::new();
        t.put_i64(m.next_producer_id);
        tags.push((1, t));
    }
    if m.client_version != 0 {
        let mut t = BytesMut::new();
        t.put_i16(m.client_version);
        tags.push((2, t));
    }
    put_uvarint(b, tags.len() as u32);
    for (tag, data) in tags {
        put_uvarint(b, tag);
        put_uvarint(b, data.len() as u32);
        b.put_slice(&data);
    }
}

fn decode_v0(v: &mut &[u8]) -> Result<TxnMetadata, RecordError> {
    let fixed = fixed_fields(v)?;
    let mut partitions = BTreeSet::new();
    let topics = get_i32(v)?;
    // A topic takes at least 6 bytes (name length, partition count), a partition 4.
    if topics > 0 && topics as usize > v.len() / 6 {
        return Err(RecordError("topic count exceeds the value"));
    }
    for _ in 0..topics.max(0) {
        let topic = get_str(v)?;
        let count = get_i32(v)?;
        if count < 0 || count as usize > v.len() / 4 {
            return Err(RecordError("partition count exceeds the value"));
        }
        for _ in 0..count {
            partitions.insert((topic.clone(), get_i32(v)?));
        }
    }
    let last_update_ms = get_i64(v)?;
    let start_ms = get_i64(v)?;
    Ok(TxnMetadata {
        partitions,
        start_ms,
        last_update_ms,
        ..fixed
    })
}

fn decode_v1(v: &mut &[u8]) -> Result<TxnMetadata, RecordError> {
    let fixed = fixed_fields(v)?;
    let mut partitions = BTreeSet::new();
    let topics = get_uvarint(v)?;
    if topics > 0 && (topics - 1) as usize > v.len() / 3 {
        return Err(RecordError("topic count exceeds the value"));
    }
    for _ in 1..topics {
        let len = get_uvarint(v)?;
        let len = len.checked_sub(1).ok_or(RecordError("null topic name"))? as usize;
        need(v, len)?;
        let topic = std::str::from_utf8(&v[..len])
            .map_err(|_| RecordError("string is not UTF-8"))?
            .to_owned();
        v.advance(len);
        let count = get_uvarint(v)?.saturating_sub(1) as usize;
        if count > v.len() / 4 {
            return Err(RecordError("partition count exceeds the value"));
        }
        for _ in 0..count {
            partitions.insert((topic.clone(), get_i32(v)?));
        }
        skip_tags(v)?;
    }
    let last_update_ms = get_i64(v)?;
    let start_ms = get_i64(v)?;
    let mut m = TxnMetadata {
        partitions,
        start_ms,
        last_update_ms,
        ..fixed
    };
    let tags = get_uvarint(v)?;
    for _ in 0..tags {
        let tag = get_uvarint(v)?;
        let size = get_uvarint(v)? as usize;
        need(v, size)?;
        let mut data = &v[..size];
        match tag {
            0 => m.prev_producer_id = get_i64(&mut data)?,
            1 => m.next_producer_id = get_i64(&mut data)?,
            2 => m.client_version = get_i16(&mut data)?,
            _ => {}
        }
        v.advance(size);
    }
    Ok(m)
}

/// The fields both value versions start with (producer id, epoch, timeout, state), in a
/// metadata whose other fields the caller fills in.
fn fixed_fields(v: &mut &[u8]) -> Result<TxnMetadata, RecordError> {
    let producer_id = get_i64(v)?;
    let producer_epoch = get_i16(v)?;
    let timeout_ms = get_i32(v)?;
    let state = get_state(v)?;
    Ok(TxnMetadata {
        producer_epoch,
        state,
        ..TxnMetadata::new(producer_id, timeout_ms, -1)
    })
}

fn get_state(v: &mut &[u8]) -> Result<TxnState, RecordError> {
    need(v, 1)?;
    TxnState::from_id(v.get_i8()).ok_or(RecordError("unknown transaction state"))
}

fn skip_tags(v: &mut &[u8]) -> Result<(), RecordError> {
    for _ in 0..get_uvarint(v)? {
        get_uvarint(v)?;
        let size = get_uvarint(v)? as usize;
        need(v, size)?;
        v.advance(size);
    }
    Ok(())
}

fn put_uvarint(b: &mut BytesMut, mut n: u32) {
    while n >= 0x80 {
        b.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    b.put_u8(n as u8);
}

fn get_uvarint(v: &mut &[u8]) -> Result<u32, RecordError> {
    let mut n: u32 = 0;
    for shift in (0..35).step_by(7) {
        need(v, 1)?;
        let byte = v.get_u8();
        n |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(RecordError("varint longer than 5 bytes"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn metadata(state: TxnState, client_version: i16) -> TxnMetadata {
        TxnMetadata {
            producer_id: 4001,
            prev_producer_id: if client_version >= 2 { 3999 } else { -1 },
            next_producer_id: if client_version >= 2 { 4002 } else { -1 },
            producer_epoch: 7,
            last_producer_epoch: -1,
            timeout_ms: 60_000,
            state,
            partitions: if state == TxnState::Empty {
                BTreeSet::new()
            } else {
                [
                    ("a".to_owned(), 0),
                    ("a".to_owned(), 2),
                    ("b".to_owned(), 1),
                ]
                .into_iter()
                .collect()
            },
            start_ms: 1_000,
            last_update_ms: 2_000,
            client_version,
        }
    }

    #[test]
    fn every_state_round_trips_at_both_value_versions() {
        for state in TxnState::ALL {
            for version in [0, 2] {
                let record = TxnRecord {
                    transactional_id: "tx-1".to_owned(),
                    value: Some(metadata(state, version)),
                };
                let (k, v) = record.encode();
                assert_eq!(
                    &v.as_ref().unwrap()[..2],
                    if version >= 2 { [0, 1] } else { [0, 0] },
                    "value version follows the client's transaction version"
                );
                assert_eq!(TxnRecord::decode(&k, v.as_deref()).unwrap(), record);
            }
        }
    }

    #[test]
    fn the_v0_layout_is_kafkas() {
        let (k, v) = TxnRecord {
            transactional_id: "t".to_owned(),
            value: Some(metadata(TxnState::Ongoing, 0)),
        }
        .encode();
        assert_eq!(&k[..], &[0, 0, 0, 1, b't']);
        let v = v.unwrap();
        let mut want = vec![0, 0];
        want.extend_from_slice(&4001i64.to_be_bytes());
        want.extend_from_slice(&7i16.to_be_bytes());
        want.extend_from_slice(&60_000i32.to_be_bytes());
        want.push(1);
        want.extend_from_slice(&2i32.to_be_bytes());
        want.extend_from_slice(&[0, 1, b'a', 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2]);
        want.extend_from_slice(&[0, 1, b'b', 0, 0, 0, 1, 0, 0, 0, 1]);
        want.extend_from_slice(&2_000i64.to_be_bytes());
        want.extend_from_slice(&1_000i64.to_be_bytes());
        assert_eq!(&v[..], &want[..]);
    }

    #[test]
    fn an_empty_transaction_stores_null_partitions_and_a_tombstone_has_no_value() {
        let (_, v) = TxnRecord {
            transactional_id: "t".to_owned(),
            value: Some(metadata(TxnState::Empty, 0)),
        }
        .encode();
        assert_eq!(&v.unwrap()[17..21], &(-1i32).to_be_bytes());
        let tombstone = TxnRecord {
            transactional_id: "t".to_owned(),
            value: None,
        };
        let (k, v) = tombstone.encode();
        assert_eq!(v, None);
        assert_eq!(TxnRecord::decode(&k, None).unwrap(), tombstone);
    }

    #[test]
    fn unknown_tagged_fields_are_skipped() {
        let m = metadata(TxnState::Ongoing, 2);
        let mut b = BytesMut::new();
        encode_v1(&mut b, &m);
        // Replace the tag section with one holding an unknown tag 9 and the client version.
        let tags_at = b.len() - (1 + 2 * (1 + 1 + 8) + (1 + 1 + 2));
        b.truncate(tags_at);
        put_uvarint(&mut b, 2);
        put_uvarint(&mut b, 2);
        put_uvarint(&mut b, 2);
        b.put_i16(2);
        put_uvarint(&mut b, 9);
        put_uvarint(&mut b, 3);
        b.put_slice(&[1, 2, 3]);
        let got = TxnRecord::decode(&[0, 0, 0, 1, b't'], Some(&b)).unwrap();
        let got = got.value.unwrap();
        assert_eq!(got.client_version, 2);
        assert_eq!(got.prev_producer_id, -1);
        assert_eq!(got.partitions, m.partitions);
    }

    #[test]
    fn bad_records_are_errors() {
        let (k, v) = TxnRecord {
            transactional_id: "t".to_owned(),
            value: Some(metadata(TxnState::Ongoing, 2)),
        }
        .encode();
        let v = v.unwrap();
        for cut in 0..v.len() - 1 {
            assert!(
                TxnRecord::decode(&k, Some(&v[..cut])).is_err(),
                "cut at {cut}"
            );
        }
        assert!(TxnRecord::decode(&[0, 1, 0, 1, b't'], None).is_err());
        let mut bad_state = v.to_vec();
        bad_state[16] = 42;
        assert!(TxnRecord::decode(&k, Some(&bad_state)).is_err());
        let mut huge_count = v.to_vec();
        huge_count[17..22].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(TxnRecord::decode(&k, Some(&huge_count)).is_err());
        assert!(TxnRecord::decode(&k, Some(&[0, 3])).is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            k in proptest::collection::vec(any::<u8>(), 0..32),
            v in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let _ = TxnRecord::decode(&k, Some(&v));
            let mut v1 = vec![0u8, 1];
            v1.extend_from_slice(&v);
            let _ = TxnRecord::decode(&[0, 0, 0, 0], Some(&v1));
        }
    }
}
