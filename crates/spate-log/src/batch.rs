//! Kafka record batches (magic v2): header parsing, validation of produce input, the rewrites
//! the leader makes before storing a batch, and bounded decoding and re-encoding of records.
//!
//! Invariants: nothing here panics on arbitrary input, and nothing allocates in proportion to a
//! length read from the input (lengths are checked against `BATCH_BYTES_MAX` and the bytes
//! actually present first; compressed records inflate to at most [`INFLATED_BYTES_MAX`]).
//! `baseOffset` and `partitionLeaderEpoch` lie before the CRC-covered range, so rewriting them
//! keeps the client's CRC; the timestamp type and max timestamp (LogAppendTime) and a
//! re-encoding (recompression, compaction) are covered, and recompute it.

use kafka_protocol::records::Compression;
use spate_types::limits::BATCH_BYTES_MAX;
use spate_types::{LeaderEpoch, Offset, ProducerEpoch, ProducerId};
use std::cell::Cell;
use std::io;

/// Bytes before `batchLength`'s coverage starts: baseOffset (8) + batchLength (4).
pub const LOG_OVERHEAD: usize = 12;
/// Size of the fixed v2 header, including [`LOG_OVERHEAD`].
pub const HEADER_BYTES: usize = 61;
/// Smallest legal `batchLength`: the header minus [`LOG_OVERHEAD`].
pub const BATCH_LENGTH_MIN: i32 = (HEADER_BYTES - LOG_OVERHEAD) as i32;
/// The only record format Spate stores.
pub const MAGIC_V2: i8 = 2;

const PARTITION_LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
/// The CRC covers everything from `attributes` to the end of the batch.
const CRC_COVERAGE_FROM: usize = 21;
const ATTRIBUTES_AT: usize = 21;
const MAX_TIMESTAMP_AT: usize = 35;
const BASE_SEQUENCE_AT: usize = 53;
/// Decoding a compressed batch allocates per record; refuse batches claiming more than this.
pub(crate) const DECODE_RECORDS_MAX: i32 = 1 << 20;
/// The smallest encoding of a v2 record (length, attributes, timestamp delta, offset delta,
/// key length, value length, header count: one byte each).
pub(crate) const RECORD_BYTES_MIN: usize = 7;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;

/// A batch larger than this can never be valid regardless of configuration.
const _: () = assert!(BATCH_BYTES_MAX <= i32::MAX as usize);

/// The fixed header of a v2 record batch, as stored on the wire and on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: Offset,
    /// Bytes after the `batchLength` field.
    pub batch_length: i32,
    pub partition_leader_epoch: LeaderEpoch,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: ProducerId,
    pub producer_epoch: ProducerEpoch,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Parses the fixed header. Checks only that 61 bytes are present; see
    /// [`validate_batches`] for the semantic checks.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        let h: &[u8; HEADER_BYTES] = buf
            .get(..HEADER_BYTES)
            .and_then(|s| s.try_into().ok())
            .ok_or(BatchError::Truncated {
                needed: HEADER_BYTES,
                available: buf.len(),
            })?;
        let i64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[at..at + 8]);
            i64::from_be_bytes(b)
        };
        let i32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&h[at..at + 4]);
            i32::from_be_bytes(b)
        };
        let i16_at = |at: usize| i16::from_be_bytes([h[at], h[at + 1]]);
        Ok(BatchHeader {
            base_offset: Offset(i64_at(0)),
            batch_length: i32_at(8),
            partition_leader_epoch: LeaderEpoch(i32_at(PARTITION_LEADER_EPOCH_AT)),
            magic: h[MAGIC_AT] as i8,
            crc: i32_at(CRC_AT) as u32,
            attributes: i16_at(21),
            last_offset_delta: i32_at(23),
            base_timestamp: i64_at(27),
            max_timestamp: i64_at(35),
            producer_id: ProducerId(i64_at(43)),
            producer_epoch: ProducerEpoch(i16_at(51)),
            base_sequence: i32_at(53),
            records_count: i32_at(57),
        })
    }

    /// Size of the whole batch including [`LOG_OVERHEAD`]. Only meaningful once
    /// `batch_length` has been checked to be at least [`BATCH_LENGTH_MIN`].
    pub fn total_bytes(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    pub fn last_offset(&self) -> Offset {
        Offset(
            self.base_offset
                .0
                .saturating_add(i64::from(self.last_offset_delta)),
        )
    }

    /// Next offset after this batch.
    pub fn next_offset(&self) -> Offset {
        Offset(self.last_offset().0.saturating_add(1))
    }

    /// Compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    pub fn has_producer_id(&self) -> bool {
        self.producer_id.0 >= 0
    }

    /// Sequence of the batch's last record, wrapping past `i32::MAX` to 0 as Kafka does.
    pub fn last_sequence(&self) -> i32 {
        increment_sequence(self.base_sequence, self.last_offset_delta)
    }
}

/// Kafka's `DefaultRecordBatch.incrementSequence`: sequences wrap from `i32::MAX` to 0.
pub fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence < 0 {
        return sequence;
    }
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

/// Which Kafka error a [`BatchError`] becomes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchErrorKind {
    /// CORRUPT_MESSAGE
    Corrupt,
    /// INVALID_RECORD
    InvalidRecord,
    /// UNSUPPORTED_FOR_MESSAGE_FORMAT
    UnsupportedFormat,
    /// MESSAGE_TOO_LARGE
    TooLarge,
}

/// Why a record set from a producer was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record set holds no batch")]
    Empty,
    #[error("truncated batch: needs {needed} bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("invalid batch length {length}")]
    InvalidLength { length: i32 },
    #[error("unsupported record format magic {0}; only v2 is accepted")]
    UnsupportedMagic(i8),
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("batch declares {records_count} records with last offset delta {last_offset_delta}")]
    InvalidRecordCount {
        records_count: i32,
        last_offset_delta: i32,
    },
    #[error("batch of idempotent producer has invalid base sequence {base_sequence}")]
    InvalidSequence { base_sequence: i32 },
    #[error("clients may not produce control batches")]
    ControlBatch,
    #[error("transactional batch without a producer id")]
    TransactionalWithoutProducerId,
    #[error("batch of {size} bytes exceeds the maximum {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed records in batch: {0}")]
    MalformedRecords(String),
    #[error("compressed records inflate past {max} bytes")]
    InflatedTooLarge { max: usize },
    #[error("compacted topic cannot accept a record without a key ({} of them)", records.len())]
    MissingKey {
        /// The index in the record set of every record without a key (KIP-467's
        /// `batch_index`), so that a client fails those records only.
        records: Vec<i32>,
    },
}

impl BatchError {
    /// The Kafka error this becomes, so the front end's mapping stays a one-liner.
    pub fn kind(&self) -> BatchErrorKind {
        match self {
            BatchError::Empty
            | BatchError::Truncated { .. }
            | BatchError::InvalidLength { .. }
            | BatchError::CrcMismatch { .. }
            | BatchError::MalformedRecords(_) => BatchErrorKind::Corrupt,
            BatchError::InvalidRecordCount { .. }
            | BatchError::InvalidSequence { .. }
            | BatchError::ControlBatch
            | BatchError::TransactionalWithoutProducerId
            | BatchError::MissingKey { .. } => BatchErrorKind::InvalidRecord,
            BatchError::UnsupportedMagic(_) => BatchErrorKind::UnsupportedFormat,
            BatchError::TooLarge { .. } | BatchError::InflatedTooLarge { .. } => {
                BatchErrorKind::TooLarge
            }
        }
    }
}

/// Checks the framing of the batch at the start of `buf` (length, magic, CRC) and returns its
/// header. `buf` may extend past the batch. Used for produce input and for on-disk data alike.
pub fn check_batch(buf: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    if header.batch_length < BATCH_LENGTH_MIN {
        return Err(BatchError::InvalidLength {
            length: header.batch_length,
        });
    }
    let size = header.total_bytes();
    let max = max_batch_bytes.min(BATCH_BYTES_MAX);
    if size > BATCH_BYTES_MAX {
        return Err(BatchError::TooLarge { size, max });
    }
    // Magic before completeness: an old-format client should hear "unsupported format", and
    // v0/v1 message sets have a different length layout anyway.
    if header.magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic(header.magic));
    }
    if size > buf.len() {
        return Err(BatchError::Truncated {
            needed: size,
            available: buf.len(),
        });
    }
    let computed = crc32c::crc32c(&buf[CRC_COVERAGE_FROM..size]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    if header.last_offset_delta < 0 || header.records_count < 1 {
        return Err(BatchError::InvalidRecordCount {
            records_count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    if size > max {
        return Err(BatchError::TooLarge { size, max });
    }
    Ok(header)
}

/// Splits a produce request's record set into batches and validates each as Kafka's leader
/// does for client input. Returns the headers in order; an error rejects the whole set.
pub fn validate_batches(
    records: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<BatchHeader>, BatchError> {
    if records.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut headers = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let header = check_batch(&records[pos..], max_batch_bytes)?;
        // Producers number records densely; gaps only arise from compaction on the broker.
        if header.records_count.checked_sub(1) != Some(header.last_offset_delta) {
            return Err(BatchError::InvalidRecordCount {
                records_count: header.records_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        if header.is_control() {
            return Err(BatchError::ControlBatch);
        }
        // Kafka's `LogValidator`: a transaction belongs to a producer id.
        if header.is_transactional() && !header.has_producer_id() {
            return Err(BatchError::TransactionalWithoutProducerId);
        }
        if header.has_producer_id() && header.base_sequence < 0 {
            return Err(BatchError::InvalidSequence {
                base_sequence: header.base_sequence,
            });
        }
        pos += header.total_bytes();
        headers.push(header);
    }
    Ok(headers)
}

/// Splits a record set fetched from a partition leader into batches and checks each one's
/// framing, magic and CRC, up to the hard [`BATCH_BYTES_MAX`] (a topic's `max.message.bytes`
/// may have been lowered since the leader accepted a batch). Unlike [`validate_batches`] it
/// accepts what only a leader writes: control batches, and offset deltas with holes
/// (compaction removes records from the middle of a batch). An error rejects the whole set.
pub fn validate_replicated_batches(records: &[u8]) -> Result<Vec<BatchHeader>, BatchError> {
    if records.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut headers = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let header = check_batch(&records[pos..], BATCH_BYTES_MAX)?;
        pos += header.total_bytes();
        headers.push(header);
    }
    Ok(headers)
}

/// Rewrites `baseOffset` of the batch at the start of `buf`. Not CRC-covered.
///
/// # Panics
/// If `buf` is shorter than a header: callers pass validated batches only.
pub fn set_base_offset(buf: &mut [u8], offset: Offset) {
    buf[..8].copy_from_slice(&offset.0.to_be_bytes());
}

/// Rewrites `partitionLeaderEpoch` of the batch at the start of `buf`. Not CRC-covered.
///
/// # Panics
/// If `buf` is shorter than a header: callers pass validated batches only.
pub fn set_partition_leader_epoch(buf: &mut [u8], epoch: LeaderEpoch) {
    buf[PARTITION_LEADER_EPOCH_AT..PARTITION_LEADER_EPOCH_AT + 4]
        .copy_from_slice(&epoch.0.to_be_bytes());
}

/// Kafka's `DefaultRecordBatch.setMaxTimestamp`: sets the batch's timestamp type (the
/// LogAppendTime attribute bit when `log_append_time`) and max timestamp, and recomputes the
/// CRC, which covers both. Leaves the batch untouched, CRC included, if both already hold.
/// For a LogAppendTime batch the max timestamp is every record's timestamp (consumers read it
/// so); the records themselves are not touched.
///
/// # Panics
/// If `batch` is shorter than a header: callers pass exactly one validated batch.
pub(crate) fn set_max_timestamp(batch: &mut [u8], log_append_time: bool, max_timestamp: i64) {
    let h = BatchHeader::parse(batch).expect("a validated batch has a whole header");
    if h.is_log_append_time() == log_append_time && h.max_timestamp == max_timestamp {
        return;
    }
    let mut attributes = h.attributes & !TIMESTAMP_TYPE_BIT;
    if log_append_time {
        attributes |= TIMESTAMP_TYPE_BIT;
    }
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&max_timestamp.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_COVERAGE_FROM..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Most bytes the records of one compressed batch may inflate to. A batch stored uncompressed
/// can be no larger, so a recompressing topic refuses only batches it could never store.
pub const INFLATED_BYTES_MAX: usize = BATCH_BYTES_MAX;

/// Decodes the records of one whole batch (`batch` holds exactly that batch, CRC already
/// checked). The record count is checked for plausibility against the bytes first, so a
/// lying header cannot make the decoder allocate for records that are not there, and
/// compressed records are inflated through [`inflate`], which stops at
/// [`INFLATED_BYTES_MAX`] ([`BatchError::InflatedTooLarge`]).
pub(crate) fn decode_records(
    batch: &[u8],
    h: &BatchHeader,
) -> Result<kafka_protocol::records::RecordSet, BatchError> {
    let payload = h.total_bytes().saturating_sub(HEADER_BYTES);
    let plausible = if h.compression() == 0 {
        (h.records_count.max(0) as usize).saturating_mul(RECORD_BYTES_MIN) <= payload
    } else {
        h.records_count <= DECODE_RECORDS_MAX
    };
    if !plausible {
        return Err(BatchError::MalformedRecords(format!(
            "batch claims {} records",
            h.records_count
        )));
    }
    let mut bytes = bytes::Bytes::copy_from_slice(batch);
    // The decoder reports errors as text; the inflater's own error is kept to be returned.
    let failure: Cell<Option<BatchError>> = Cell::new(None);
    let set = kafka_protocol::records::RecordBatchDecoder::decode_with_custom_compression(
        &mut bytes,
        Some(|compressed: &mut bytes::Bytes, codec: Compression| {
            inflate(compressed, codec, INFLATED_BYTES_MAX).map_err(|e| {
                let message = e.to_string();
                failure.set(Some(e));
                io::Error::other(message).into()
            })
        }),
    )
    .map_err(|e| {
        failure
            .take()
            .unwrap_or_else(|| BatchError::MalformedRecords(e.to_string()))
    })?;
    if set.records.len() != h.records_count.max(0) as usize {
        return Err(BatchError::MalformedRecords(format!(
            "batch claims {} records and holds {}",
            h.records_count,
            set.records.len()
        )));
    }
    Ok(set)
}

/// Inflates the records section of a batch compressed with `codec`, refusing to produce more
/// than `limit` bytes (a few hundred bytes of gzip or zstd can claim gigabytes). gzip, lz4
/// and zstd are streamed through their decoders with the output capped; snappy's declared
/// block lengths are summed first and the blocks then inflated by kafka-protocol's own
/// decompressor (Kafka's xerial framing, or raw snappy).
fn inflate(
    compressed: &bytes::Bytes,
    codec: Compression,
    limit: usize,
) -> Result<bytes::Bytes, BatchError> {
    let malformed =
        |e: &dyn std::fmt::Display| BatchError::MalformedRecords(format!("{codec:?} records: {e}"));
    let inflated = match codec {
        Compression::None => return Ok(compressed.clone()),
        Compression::Gzip => {
            read_bounded(flate2::read::MultiGzDecoder::new(&compressed[..]), limit)?
        }
        Compression::Lz4 => read_bounded(
            lz4::Decoder::new(&compressed[..]).map_err(|e| malformed(&e))?,
            limit,
        )?,
        Compression::Zstd => read_bounded(
            zstd::stream::read::Decoder::with_buffer(&compressed[..]).map_err(|e| malformed(&e))?,
            limit,
        )?,
        Compression::Snappy => {
            let declared = snappy_declared_len(compressed).ok_or_else(|| {
                BatchError::MalformedRecords("snappy records: bad framing".into())
            })?;
            if declared > limit as u64 {
                return Err(BatchError::InflatedTooLarge { max: limit });
            }
            use kafka_protocol::compression::{Decompressor, Snappy};
            return Snappy::decompress(&mut compressed.clone(), |out: &mut bytes::Bytes| {
                Ok(std::mem::take(out))
            })
            .map_err(|e| malformed(&e));
        }
    };
    Ok(bytes::Bytes::from(inflated))
}

/// Reads `reader` to its end, refusing more than `limit` bytes. The buffer grows by doubling
/// but never past `limit`.
fn read_bounded(mut reader: impl io::Read, limit: usize) -> Result<Vec<u8>, BatchError> {
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(BatchError::MalformedRecords(format!(
                    "compressed records: {e}"
                )))
            }
        };
        if n > limit - out.len() {
            return Err(BatchError::InflatedTooLarge { max: limit });
        }
        if out.capacity() - out.len() < n {
            let want = (out.len().max(n) * 2).min(limit).max(out.len() + n);
            out.reserve_exact(want - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Kafka's snappy framing (xerial: a 16-byte magic header, then blocks of a 4-byte length and
/// that many bytes), or one raw snappy block, as kafka-protocol's decompressor reads it.
const SNAPPY_XERIAL_MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";

/// The uncompressed length snappy data declares (the sum over its blocks), without inflating
/// it; `None` if the framing or a block's length preamble is malformed.
fn snappy_declared_len(data: &[u8]) -> Option<u64> {
    // A raw snappy block starts with its uncompressed length as a little-endian varint (u32).
    fn preamble(block: &[u8]) -> Option<u64> {
        let mut len = 0u64;
        for (i, b) in block.iter().take(5).enumerate() {
            len |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return u32::try_from(len).ok().map(u64::from);
            }
        }
        None
    }
    let Some(mut rest) = data.strip_prefix(&SNAPPY_XERIAL_MAGIC[..]) else {
        return preamble(data);
    };
    let mut total = 0u64;
    while !rest.is_empty() {
        let len_bytes: [u8; 4] = rest.get(..4)?.try_into().ok()?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let block = rest.get(4..4 + len)?;
        total = total.saturating_add(preamble(block)?);
        rest = &rest[4 + len..];
    }
    Some(total)
}

/// The kafka-protocol codec of a batch attribute codec id.
fn compression_of(codec: i16) -> Option<Compression> {
    Some(match codec {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        _ => return None,
    })
}

/// Encodes `records` (all from the batch `original`) as one batch compressed with
/// `compression`, with kafka-protocol's encoder, then restores what the encoder does not carry
/// from `original` ([`restore_header_fields`]). Checks that the result is one whole batch of
/// `records.len()` records. Shared by compaction (a batch that lost records) and
/// recompression (a batch in another codec).
pub(crate) fn reencode<'a>(
    records: impl ExactSizeIterator<Item = &'a kafka_protocol::records::Record> + Clone,
    compression: Compression,
    original: &BatchHeader,
) -> Result<Vec<u8>, BatchError> {
    let count = records.len();
    let mut buf = bytes::BytesMut::with_capacity(original.total_bytes());
    kafka_protocol::records::RecordBatchEncoder::encode(
        &mut buf,
        records,
        &kafka_protocol::records::RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(|e| BatchError::MalformedRecords(format!("re-encoding the records: {e}")))?;
    let mut buf = Vec::from(buf);
    if buf.len() < HEADER_BYTES {
        return Err(BatchError::MalformedRecords(
            "re-encoded batch is shorter than a header".into(),
        ));
    }
    restore_header_fields(&mut buf, original);
    let nh = check_batch(&buf, BATCH_BYTES_MAX)?;
    // The records share every batch property, so the encoder must write one batch.
    if nh.total_bytes() != buf.len() || nh.records_count as usize != count {
        return Err(BatchError::MalformedRecords(
            "re-encoding split the batch".into(),
        ));
    }
    Ok(buf)
}

/// Re-encodes one validated producer batch with `codec` (a batch attribute codec id), as
/// Kafka's leader does when a topic's `compression.type` differs from the producer's. The
/// records are decoded ([`decode_records`], so inflation is bounded) and encoded again
/// ([`reencode`]) with their offset deltas, timestamps, keys, values and headers; the header
/// keeps the producer id, epoch and base sequence, the transactional flag, the partition
/// leader epoch and the timestamp type. A batch whose records do not number densely from its
/// base offset (which the encoder cannot reproduce) is refused as malformed. The caller applies
/// `max.message.bytes` to the result.
pub(crate) fn recompress(batch: &[u8], h: &BatchHeader, codec: i16) -> Result<Vec<u8>, BatchError> {
    let compression = compression_of(codec)
        .ok_or_else(|| BatchError::MalformedRecords(format!("unknown codec id {codec}")))?;
    let set = decode_records(batch, h)?;
    let buf = reencode(set.records.iter(), compression, h)?;
    let nh = BatchHeader::parse(&buf)?;
    if nh.last_offset_delta != h.last_offset_delta || nh.base_offset != h.base_offset {
        return Err(BatchError::MalformedRecords(format!(
            "records do not number 0..{} from the batch's base offset; cannot recompress",
            h.records_count
        )));
    }
    Ok(buf)
}

/// Compaction re-encodes a batch that lost records with kafka-protocol's encoder, which does
/// not carry the timestamp type, computes the max timestamp from the records' own timestamps
/// (for a LogAppendTime batch the append time is only in the header) and derives the base
/// sequence from the first record even when the batch has no producer id. This restores all
/// three from the original header and recomputes the CRC.
///
/// # Panics
/// If `buf` is shorter than a header: callers pass batches they just encoded.
pub(crate) fn restore_header_fields(buf: &mut [u8], original: &BatchHeader) {
    let mut attributes = i16::from_be_bytes([buf[ATTRIBUTES_AT], buf[ATTRIBUTES_AT + 1]]);
    attributes = (attributes & !TIMESTAMP_TYPE_BIT) | (original.attributes & TIMESTAMP_TYPE_BIT);
    buf[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    if original.is_log_append_time() {
        buf[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8]
            .copy_from_slice(&original.max_timestamp.to_be_bytes());
    }
    if !original.has_producer_id() {
        buf[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4]
            .copy_from_slice(&original.base_sequence.to_be_bytes());
    }
    let crc = crc32c::crc32c(&buf[CRC_COVERAGE_FROM..]);
    buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Test helpers that build valid batches.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod testutil {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    /// A batch with `count` records whose payload is opaque filler: enough for framing tests.
    pub fn raw_batch(
        count: i32,
        producer: (i64, i16, i32),
        max_ts: i64,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_BYTES + payload.len());
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&((HEADER_BYTES - LOG_OVERHEAD + payload.len()) as i32).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.push(2);
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(count - 1).to_be_bytes());
        b.extend_from_slice(&max_ts.to_be_bytes());
        b.extend_from_slice(&max_ts.to_be_bytes());
        b.extend_from_slice(&producer.0.to_be_bytes());
        b.extend_from_slice(&producer.1.to_be_bytes());
        b.extend_from_slice(&producer.2.to_be_bytes());
        b.extend_from_slice(&count.to_be_bytes());
        b.extend_from_slice(payload);
        fix_crc(&mut b);
        b
    }

    pub fn fix_crc(b: &mut [u8]) {
        let crc = crc32c::crc32c(&b[CRC_COVERAGE_FROM..]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }

    /// A real batch with one record per timestamp, encoded by kafka-protocol.
    pub fn record_batch(
        timestamps: &[i64],
        producer: (i64, i16, i32),
        compression: Compression,
    ) -> Vec<u8> {
        let records: Vec<Record> = timestamps
            .iter()
            .enumerate()
            .map(|(i, ts)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: producer.0,
                producer_epoch: producer.1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder splits batches where offset - sequence changes, so keep it constant.
                sequence: if producer.2 < 0 {
                    i as i32 - 1
                } else {
                    increment_sequence(producer.2, i as i32)
                },
                timestamp: *ts,
                key: None,
                value: Some(Bytes::from(format!("value-{i}-{ts}"))),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.to_vec()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testutil::*;
    use super::*;
    use kafka_protocol::records::Compression;

    const MAX: usize = 1 << 20;

    #[test]
    fn valid_batches_parse_in_order() {
        let mut set = raw_batch(3, (-1, -1, -1), 10, b"abc");
        set.extend(record_batch(&[1, 2], (7, 0, 0), Compression::None));
        let headers = validate_batches(&set, MAX).unwrap();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[0].records_count, 3);
        assert_eq!(headers[0].total_bytes(), HEADER_BYTES + 3);
        assert_eq!(headers[1].producer_id, ProducerId(7));
        assert_eq!(headers[1].last_sequence(), 1);
    }

    #[test]
    fn empty_record_set_is_rejected() {
        assert_eq!(validate_batches(&[], MAX), Err(BatchError::Empty));
    }

    #[test]
    fn truncated_header_is_rejected() {
        let b = raw_batch(1, (-1, -1, -1), 0, b"");
        for cut in 1..HEADER_BYTES {
            assert!(matches!(
                validate_batches(&b[..cut], MAX),
                Err(BatchError::Truncated { .. })
            ));
        }
    }

    #[test]
    fn lying_batch_length_is_rejected() {
        let base = raw_batch(1, (-1, -1, -1), 0, b"xyz");
        for (length, want_kind) in [
            (i32::MAX, BatchErrorKind::TooLarge),
            (-5, BatchErrorKind::Corrupt),
            (0, BatchErrorKind::Corrupt),
            (48, BatchErrorKind::Corrupt),
            (base.len() as i32, BatchErrorKind::Corrupt), // beyond the buffer by LOG_OVERHEAD
        ] {
            let mut b = base.clone();
            b[8..12].copy_from_slice(&length.to_be_bytes());
            let err = validate_batches(&b, MAX).unwrap_err();
            assert_eq!(err.kind(), want_kind, "length {length}: {err}");
        }
    }

    #[test]
    fn trailing_partial_batch_is_rejected() {
        let mut set = raw_batch(1, (-1, -1, -1), 0, b"a");
        set.extend_from_slice(&raw_batch(1, (-1, -1, -1), 0, b"b")[..20]);
        assert!(matches!(
            validate_batches(&set, MAX),
            Err(BatchError::Truncated { .. })
        ));
    }

    #[test]
    fn wrong_magic_is_unsupported() {
        let mut b = raw_batch(1, (-1, -1, -1), 0, b"");
        b[MAGIC_AT] = 1;
        assert_eq!(
            validate_batches(&b, MAX),
            Err(BatchError::UnsupportedMagic(1))
        );
        assert_eq!(
            BatchError::UnsupportedMagic(1).kind(),
            BatchErrorKind::UnsupportedFormat
        );
    }

    #[test]
    fn bad_crc_is_corrupt() {
        let mut b = raw_batch(1, (-1, -1, -1), 0, b"payload");
        let last = b.len() - 1;
        b[last] ^= 0x40;
        assert!(matches!(
            validate_batches(&b, MAX),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn zero_records_is_invalid() {
        let mut b = raw_batch(1, (-1, -1, -1), 0, b"");
        b[57..61].copy_from_slice(&0i32.to_be_bytes());
        b[23..27].copy_from_slice(&(-1i32).to_be_bytes());
        fix_crc(&mut b);
        assert!(matches!(
            validate_batches(&b, MAX),
            Err(BatchError::InvalidRecordCount { .. })
        ));
    }

    #[test]
    fn record_count_must_match_offset_delta() {
        let mut b = raw_batch(3, (-1, -1, -1), 0, b"");
        b[23..27].copy_from_slice(&5i32.to_be_bytes());
        fix_crc(&mut b);
        let err = validate_batches(&b, MAX).unwrap_err();
        assert_eq!(err.kind(), BatchErrorKind::InvalidRecord);
    }

    #[test]
    fn oversized_batch_is_too_large() {
        let b = raw_batch(1, (-1, -1, -1), 0, &[0u8; 100]);
        assert_eq!(
            validate_batches(&b, 100),
            Err(BatchError::TooLarge {
                size: HEADER_BYTES + 100,
                max: 100
            })
        );
    }

    #[test]
    fn control_batch_and_missing_sequence_are_invalid_records() {
        let mut b = raw_batch(1, (-1, -1, -1), 0, b"");
        b[21..23].copy_from_slice(&CONTROL_BIT.to_be_bytes());
        fix_crc(&mut b);
        assert_eq!(validate_batches(&b, MAX), Err(BatchError::ControlBatch));
        let b = raw_batch(1, (5, 0, -1), 0, b"");
        assert_eq!(
            validate_batches(&b, MAX),
            Err(BatchError::InvalidSequence { base_sequence: -1 })
        );
        let mut b = raw_batch(1, (-1, -1, -1), 0, b"");
        b[21..23].copy_from_slice(&TRANSACTIONAL_BIT.to_be_bytes());
        fix_crc(&mut b);
        assert_eq!(
            validate_batches(&b, MAX),
            Err(BatchError::TransactionalWithoutProducerId)
        );
        assert_eq!(
            BatchError::TransactionalWithoutProducerId.kind(),
            BatchErrorKind::InvalidRecord
        );
    }

    #[test]
    fn setters_leave_crc_valid() {
        let mut b = record_batch(&[5, 6, 7], (-1, -1, -1), Compression::None);
        set_base_offset(&mut b, Offset(1234));
        set_partition_leader_epoch(&mut b, LeaderEpoch(9));
        let h = validate_batches(&b, MAX).unwrap()[0];
        assert_eq!(h.base_offset, Offset(1234));
        assert_eq!(h.last_offset(), Offset(1236));
        assert_eq!(h.partition_leader_epoch, LeaderEpoch(9));
    }

    /// The records section of a batch of one record holding `n` zero bytes, compressed.
    fn compressed_zeros(n: usize, compression: Compression) -> bytes::Bytes {
        let b = record_batch(&[0], (-1, -1, -1), Compression::None);
        let h = BatchHeader::parse(&b).unwrap();
        let set = decode_records(&b, &h).unwrap();
        let mut r = set.records[0].clone();
        r.value = Some(bytes::Bytes::from(vec![0u8; n]));
        let encoded = reencode(std::iter::once(&r), compression, &h).unwrap();
        bytes::Bytes::copy_from_slice(&encoded[HEADER_BYTES..])
    }

    #[test]
    fn inflation_stops_at_the_limit_for_every_codec() {
        for c in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let data = compressed_zeros(100_000, c);
            let whole = inflate(&data, c, 1 << 20).unwrap();
            assert!(whole.len() > 100_000, "{c:?}");
            assert_eq!(inflate(&data, c, whole.len()).unwrap(), whole, "{c:?}");
            assert_eq!(
                inflate(&data, c, whole.len() - 1),
                Err(BatchError::InflatedTooLarge {
                    max: whole.len() - 1
                }),
                "{c:?}"
            );
            // lz4's frame decoder ends a truncated stream quietly; the record decoder then
            // finds the records short.
            match inflate(&data.slice(..data.len() / 2), c, 1 << 20) {
                Err(BatchError::MalformedRecords(_)) => {}
                Ok(part) => assert!(c == Compression::Lz4 && part.len() < whole.len()),
                other => panic!("{c:?}: truncated stream gave {other:?}"),
            }
        }
    }

    #[test]
    fn snappy_lengths_are_checked_before_anything_is_allocated() {
        // Raw snappy claiming 4 GiB in five bytes, and xerial framing with one such block.
        let raw = bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]);
        assert_eq!(snappy_declared_len(&raw), Some(u64::from(u32::MAX)));
        assert_eq!(
            inflate(&raw, Compression::Snappy, 1 << 20),
            Err(BatchError::InflatedTooLarge { max: 1 << 20 })
        );
        let mut framed = SNAPPY_XERIAL_MAGIC.to_vec();
        for _ in 0..2 {
            framed.extend_from_slice(&6u32.to_be_bytes());
            framed.extend_from_slice(&raw);
        }
        assert_eq!(snappy_declared_len(&framed), Some(2 * u64::from(u32::MAX)));
        // A block length past the data, and a varint longer than a u32: malformed framing.
        framed.extend_from_slice(&100u32.to_be_bytes());
        assert_eq!(snappy_declared_len(&framed), None);
        assert_eq!(snappy_declared_len(&[0xff; 6]), None);
    }

    #[test]
    fn sequence_wraps_at_i32_max() {
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        assert_eq!(increment_sequence(5, 2), 7);
        let b = raw_batch(3, (1, 0, i32::MAX - 1), 0, b"");
        assert_eq!(BatchHeader::parse(&b).unwrap().last_sequence(), 0);
    }
}
