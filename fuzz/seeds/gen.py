#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets (run from anywhere; rewrites the .bin files
beside this script). Each seed is a valid input, so libFuzzer starts from inputs that get past
framing and into the decoders instead of having to discover the wire format byte by byte.

decode_request/: request frames without their 4-byte length prefix, for APIs the broker serves,
                 in both a classic and a flexible (tagged-field) version.
validate_batch/: record sets of magic-v2 batches with correct CRC-32C.

../regressions/<target>/ holds inputs that once crashed a target (scripts/fuzz replays them);
the crafted ones are written here too, so that what they encode is readable.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def i8(v): return struct.pack(">b", v)
def i16(v): return struct.pack(">h", v)
def i32(v): return struct.pack(">i", v)
def i64(v): return struct.pack(">q", v)


def uvarint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint(v):  # zigzag
    return uvarint((v << 1) ^ (v >> 63))


def string(s): return i16(len(s)) + s.encode()
def nullable_string(s): return i16(-1) if s is None else string(s)
def compact_string(s): return uvarint(len(s) + 1) + s.encode()
def compact_nullable_string(s): return uvarint(0) if s is None else compact_string(s)
def array(items): return i32(len(items)) + b"".join(items)
def compact_array(items): return uvarint(len(items) + 1) + b"".join(items)


NO_TAGS = uvarint(0)


def header_v1(key, version, correlation_id=7, client_id="seed"):
    return i16(key) + i16(version) + i32(correlation_id) + nullable_string(client_id)


def header_v2(key, version, correlation_id=7, client_id="seed"):
    return header_v1(key, version, correlation_id, client_id) + NO_TAGS


def record(offset_delta, value, key=None):
    body = i8(0) + varint(0) + varint(offset_delta)
    body += varint(-1) if key is None else varint(len(key)) + key
    body += varint(len(value)) + value
    body += varint(0)  # headers
    return varint(len(body)) + body


def batch(values, producer=(-1, -1, -1), base_offset=0, ts=1_700_000_000_000):
    records = b"".join(record(i, v) for i, v in enumerate(values))
    pid, epoch, seq = producer
    after_crc = (i16(0) + i32(len(values) - 1) + i64(ts) + i64(ts) + i64(pid) + i16(epoch) + i32(seq)
                 + i32(len(values)) + records)
    crc = crc32c(after_crc)
    after_length = i32(-1) + i8(2) + struct.pack(">I", crc) + after_crc
    return i64(base_offset) + i32(len(after_length)) + after_length


def seeds():
    one = batch([b"hello"])
    three = batch([b"a" * 10, b"b" * 100, b"c"])
    idem = batch([b"x", b"y"], producer=(1000, 0, 0))
    yield "validate_batch/one_record", one
    yield "validate_batch/three_records", three
    yield "validate_batch/idempotent", idem
    yield "validate_batch/two_batches", one + idem

    # ApiVersions (18): v0 has an empty body; v3 is flexible.
    yield "decode_request/api_versions_v0", header_v1(18, 0)
    yield "decode_request/api_versions_v3", (header_v2(18, 3) + compact_string("seed-client")
                                             + compact_string("1.0") + NO_TAGS)
    # Metadata (3): v1 classic with one topic; v12 flexible with topic ids.
    yield "decode_request/metadata_v1", header_v1(3, 1) + array([string("t")])
    yield "decode_request/metadata_v12", (header_v2(3, 12)
                                          + compact_array([bytes(16) + compact_nullable_string("t") + NO_TAGS])
                                          + i8(1) + i8(0) + NO_TAGS)
    # Produce (0): v3 classic and v9 flexible, each carrying a valid batch.
    yield "decode_request/produce_v3", (header_v1(0, 3) + nullable_string(None) + i16(1) + i32(30000)
                                        + array([string("t") + array([i32(0) + i32(len(three)) + three])]))
    yield "decode_request/produce_v9", (header_v2(0, 9) + compact_nullable_string(None) + i16(-1) + i32(30000)
                                        + compact_array([compact_string("t") + compact_array(
                                            [i32(0) + uvarint(len(idem) + 1) + idem + NO_TAGS]) + NO_TAGS])
                                        + NO_TAGS)
    # Fetch (1) v4: replica, max wait, min bytes, max bytes, isolation, topics.
    yield "decode_request/fetch_v4", (header_v1(1, 4) + i32(-1) + i32(500) + i32(1) + i32(52428800) + i8(0)
                                      + array([string("t") + array([i32(0) + i64(0) + i32(1048576)])]))
    # ListOffsets (2) v1: replica, topics of (partition, timestamp).
    yield "decode_request/list_offsets_v1", (header_v1(2, 1) + i32(-1)
                                             + array([string("t") + array([i32(0) + i64(-1)])]))
    # InitProducerId (22) v0: transactional id, timeout.
    yield "decode_request/init_producer_id_v0", header_v1(22, 0) + nullable_string(None) + i32(60000)
    # DescribeCluster (60) v0: include authorized operations.
    yield "decode_request/describe_cluster_v0", header_v2(60, 0) + i8(0) + NO_TAGS


def regressions():
    # kafka-protocol 0.18 sizes a Vec from an array's declared length before decoding any element
    # (Vec::with_capacity(n)): a ~30-byte frame declaring 2^31-1 topics asks for ~170 GB and aborts
    # the process. Found by decode_request; each must decode to an error instead.
    yield "decode_request/list_offsets_v1_topics_i32max", (header_v1(2, 1) + i32(-1) + i32(0x7FFFFFFF)
                                                           + string("t"))
    yield "decode_request/metadata_v12_topics_compact_huge", (header_v2(3, 12) + uvarint(0x7FFFFFFF)
                                                              + bytes(16) + compact_nullable_string("t"))
    yield "decode_request/produce_v3_partitions_i32max", (header_v1(0, 3) + nullable_string(None) + i16(1)
                                                          + i32(30000) + array([string("t") + i32(0x7FFFFFFF)]))


def main():
    for name, data in regressions():
        path = os.path.join(HERE, "..", "regressions", name + ".bin")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        print(f"{os.path.normpath(path)}: {len(data)} bytes")
    for name, data in seeds():
        path = os.path.join(HERE, name + ".bin")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        print(f"{path}: {len(data)} bytes")


if __name__ == "__main__":
    main()
