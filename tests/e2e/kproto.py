"""Just enough of the Kafka wire protocol, written by hand, to probe the broker where a client
library would hide what happened: malformed frames, exact error codes, hand-built record batches
with chosen producer ids and sequences, and raw Fetch responses (to see the stored batch bytes).

Only non-flexible request versions that Apache Kafka 4.x still accepts are used (Produce v3,
Fetch v4, CreateTopics v2, InitProducerId v0, ApiVersions v0), so the encodings stay small.
"""

import socket
import struct
import time

# API keys
PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
API_VERSIONS = 18
CREATE_TOPICS = 19
DELETE_TOPICS = 20
INIT_PRODUCER_ID = 22
ADD_PARTITIONS_TO_TXN = 24
END_TXN = 26

# Error codes (Kafka's numbering)
NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
COORDINATOR_LOAD_IN_PROGRESS = 14
COORDINATOR_NOT_AVAILABLE = 15
NOT_COORDINATOR = 16
INVALID_TOPIC_EXCEPTION = 17
NOT_ENOUGH_REPLICAS = 19
UNSUPPORTED_VERSION = 35
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
DUPLICATE_SEQUENCE_NUMBER = 46
INVALID_PRODUCER_EPOCH = 47
INVALID_TXN_STATE = 48
PRODUCER_FENCED = 90

# ---------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli), needed to build valid v2 record batches.

_CRC32C_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard check value


# ---------------------------------------------------------------------------------------------
# Primitive encoders / decoder


def i8(v):
    return struct.pack(">b", v)


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def i64(v):
    return struct.pack(">q", v)


def string(s):
    if s is None:
        return i16(-1)
    b = s.encode() if isinstance(s, str) else s
    return i16(len(b)) + b


def nbytes(b):
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def array(items, enc):
    if items is None:
        return i32(-1)
    return i32(len(items)) + b"".join(enc(x) for x in items)


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


def varint(v):
    return uvarint((v << 1) ^ (v >> 63))  # zigzag


class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def _take(self, fmt):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ValueError(f"truncated response: need {size} bytes at {self.pos}, have {len(self.data) - self.pos}")
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return v

    def i8(self):
        return self._take(">b")

    def i16(self):
        return self._take(">h")

    def i32(self):
        return self._take(">i")

    def u32(self):
        return self._take(">I")

    def i64(self):
        return self._take(">q")

    def raw(self, n):
        if self.pos + n > len(self.data):
            raise ValueError(f"truncated response: need {n} bytes at {self.pos}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def string(self):
        n = self.i16()
        return None if n < 0 else self.raw(n).decode()

    def nbytes_i16(self):
        """A nullable string's bytes, undecoded (an int16 length, -1 for null)."""
        n = self.i16()
        return None if n < 0 else self.raw(n)

    def nbytes(self):
        n = self.i32()
        return None if n < 0 else self.raw(n)

    def array(self, dec):
        n = self.i32()
        return None if n < 0 else [dec(self) for _ in range(n)]

    def uvarint(self):
        shift = 0
        v = 0
        while True:
            b = self.raw(1)[0]
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
            shift += 7

    def varint(self):
        v = self.uvarint()
        return (v >> 1) ^ -(v & 1)

    def compact_string(self):
        n = self.uvarint()
        return None if n == 0 else self.raw(n - 1).decode()

    def compact_array(self, dec):
        n = self.uvarint()
        return None if n == 0 else [dec(self) for _ in range(n - 1)]

    def skip_tagged_fields(self):
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.raw(self.uvarint())

    def remaining(self):
        return len(self.data) - self.pos


# ---------------------------------------------------------------------------------------------
# Connection


class Closed(Exception):
    """The broker closed the connection (what it must do on malformed input)."""


class Conn:
    def __init__(self, bootstrap: str, timeout=10.0):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.settimeout(timeout)
        self.correlation_id = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionResetError as e:
                raise Closed(f"connection reset after {len(buf)} of {n} bytes") from e
            if not chunk:
                raise Closed(f"EOF after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv_frame(self) -> bytes:
        (size,) = struct.unpack(">i", self.recv_exact(4))
        assert 0 <= size < 200 * 1024 * 1024, f"broker sent frame size {size}"
        return self.recv_exact(size)

    def wait_closed(self, timeout=10.0) -> bytes:
        """Read until EOF/reset; return whatever bytes came first (a well-behaved broker sends none).

        Raises AssertionError if the connection is still open after `timeout`.
        """
        self.sock.settimeout(timeout)
        got = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return bytes(got)
            except socket.timeout:
                raise AssertionError(
                    f"broker kept the connection open for {timeout}s after bad input "
                    f"(received {len(got)} bytes: {bytes(got[:64])!r})")
            if not chunk:
                return bytes(got)
            got += chunk
            if time.monotonic() > deadline:
                raise AssertionError("broker kept sending data after bad input")

    def header(self, api_key, api_version, client_id="spate-e2e", flexible=False):
        self.correlation_id += 1
        h = i16(api_key) + i16(api_version) + i32(self.correlation_id) + string(client_id)
        if flexible:
            h += uvarint(0)  # empty tagged fields (request header v2)
        return h

    def request(self, api_key, api_version, body: bytes, flexible_header=False, expect_response=True):
        """Send one request; return the response body after the v0 response header."""
        payload = self.header(api_key, api_version, flexible=flexible_header) + body
        self.send_raw(i32(len(payload)) + payload)
        if not expect_response:
            return None
        frame = self.recv_frame()
        r = Reader(frame)
        cid = r.i32()
        assert cid == self.correlation_id, f"correlation id {cid} != {self.correlation_id}"
        return frame[4:]


# ---------------------------------------------------------------------------------------------
# ApiVersions


def parse_api_versions_v0(body: bytes):
    """Return (error_code, {api_key: (min, max)}); asserts the body is exactly v0-shaped."""
    r = Reader(body)
    err = r.i16()
    keys = r.array(lambda r: (r.i16(), r.i16(), r.i16()))
    assert r.remaining() == 0, f"ApiVersions v0 body has {r.remaining()} trailing bytes: {body!r}"
    return err, {k: (lo, hi) for k, lo, hi in keys or []}


def compact_string(s):
    b = s.encode()
    return uvarint(len(b) + 1) + b


def api_versions_v3_body(name="spate-e2e", version="1.0"):
    return compact_string(name) + compact_string(version) + uvarint(0)


def api_versions(conn: Conn):
    """ApiVersions v0 round trip: returns {api_key: (min, max)}; asserts error 0."""
    err, keys = parse_api_versions_v0(conn.request(API_VERSIONS, 0, b""))
    assert err == NONE, f"ApiVersions v0 error {err}"
    assert API_VERSIONS in keys, f"ApiVersions response lacks ApiVersions itself: {keys}"
    return keys


def require_version(conn: Conn, api_key: int, version: int):
    keys = api_versions(conn)
    assert api_key in keys, f"broker does not advertise API key {api_key}; advertised {sorted(keys)}"
    lo, hi = keys[api_key]
    assert lo <= version <= hi, f"broker supports API key {api_key} v{lo}-v{hi}, this probe needs v{version}"


# ---------------------------------------------------------------------------------------------
# Record batches (magic v2)

CODEC_NAMES = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


def record_batch(values, *, base_timestamp=None, producer_id=-1, producer_epoch=-1, base_sequence=-1,
                 keys=None, transactional=False):
    """An uncompressed v2 batch holding `values` (bytes) with optional `keys`; `transactional`
    sets the batch's transactional attribute."""
    ts = int(time.time() * 1000) if base_timestamp is None else base_timestamp
    recs = b""
    for i, v in enumerate(values):
        k = None if keys is None else keys[i]
        body = i8(0) + varint(0) + varint(i)
        body += varint(-1) if k is None else varint(len(k)) + k
        body += varint(-1) if v is None else varint(len(v)) + v
        body += varint(0)  # no headers
        recs += varint(len(body)) + body
    attributes = 0x10 if transactional else 0
    after_crc = (i16(attributes) + i32(len(values) - 1) + i64(ts) + i64(ts) + i64(producer_id)
                 + i16(producer_epoch) + i32(base_sequence) + i32(len(values)) + recs)
    after_len = i32(-1) + i8(2) + struct.pack(">I", crc32c(after_crc)) + after_crc
    return i64(0) + i32(len(after_len)) + after_len


class Batch:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __repr__(self):
        return f"Batch({self.__dict__})"


def parse_batches(data: bytes):
    """Parse concatenated v2 batches (as in a Fetch response). A partial trailing batch is dropped,
    as Kafka clients do. Records are decoded for uncompressed batches only."""
    out = []
    pos = 0
    while pos + 12 <= len(data):
        base_offset, length = struct.unpack_from(">qi", data, pos)
        if pos + 12 + length > len(data):
            break
        r = Reader(data[pos + 12:pos + 12 + length])
        leader_epoch = r.i32()
        magic = r.i8()
        assert magic == 2, f"batch at offset {base_offset} has magic {magic}"
        crc = r.u32()
        crc_region = r.data[r.pos:]
        attributes = r.i16()
        last_offset_delta = r.i32()
        base_ts = r.i64()
        max_ts = r.i64()
        pid = r.i64()
        epoch = r.i16()
        base_seq = r.i32()
        count = r.i32()
        b = Batch(base_offset=base_offset, length=length, leader_epoch=leader_epoch, crc=crc,
                  crc_ok=crc32c(crc_region) == crc, attributes=attributes,
                  codec=CODEC_NAMES.get(attributes & 7, attributes & 7),
                  last_offset_delta=last_offset_delta, base_timestamp=base_ts, max_timestamp=max_ts,
                  producer_id=pid, producer_epoch=epoch, base_sequence=base_seq, count=count,
                  records=None)
        if attributes & 7 == 0:
            recs = []
            for _ in range(count):
                r.varint()  # record length
                r.i8()
                ts_delta = r.varint()
                off_delta = r.varint()
                kl = r.varint()
                key = None if kl < 0 else r.raw(kl)
                vl = r.varint()
                value = None if vl < 0 else r.raw(vl)
                headers = []
                for _ in range(r.varint()):
                    hk = r.raw(r.varint()).decode()
                    hl = r.varint()
                    headers.append((hk, None if hl < 0 else r.raw(hl)))
                recs.append(dict(offset=base_offset + off_delta, timestamp=base_ts + ts_delta,
                                 key=key, value=value, headers=headers))
            b.records = recs
        out.append(b)
        pos += 12 + length
    return out


# ---------------------------------------------------------------------------------------------
# Produce v3, Fetch v4, InitProducerId v0, CreateTopics v2


def produce(conn: Conn, topic, partition, batch: bytes, acks=-1, timeout_ms=10000,
            transactional_id=None):
    """Returns (error_code, base_offset) for the one partition, or None for acks=0."""
    body = (string(transactional_id) + i16(acks) + i32(timeout_ms)
            + array([topic], lambda t: string(t) + array([partition], lambda p: i32(p) + nbytes(batch))))
    resp = conn.request(PRODUCE, 3, body, expect_response=acks != 0)
    if resp is None:
        return None
    r = Reader(resp)
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16(), r.i64(), r.i64()))))
    r.i32()  # throttle
    (name, parts), = topics
    assert name == topic
    (idx, err, base_offset, _log_append_time), = parts
    assert idx == partition
    return err, base_offset


def fetch_multi(conn: Conn, topic, parts, *, max_wait_ms=0, min_bytes=0, max_bytes=50 * 1024 * 1024,
                isolation_level=0):
    """parts: [(partition, offset, partition_max_bytes)]. Returns the partition dicts in response order."""
    body = (i32(-1) + i32(max_wait_ms) + i32(min_bytes) + i32(max_bytes) + i8(isolation_level)
            + array([topic], lambda t: string(t) + array(
                parts, lambda p: i32(p[0]) + i64(p[1]) + i32(p[2]))))
    resp = conn.request(FETCH, 4, body)
    r = Reader(resp)
    r.i32()  # throttle
    topics = r.array(lambda r: (r.string(), r.array(lambda r: dict(
        partition=r.i32(), error=r.i16(), high_watermark=r.i64(), last_stable_offset=r.i64(),
        aborted=r.array(lambda r: (r.i64(), r.i64())), records=r.nbytes()))))
    (name, got), = topics
    assert name == topic
    return got


def fetch(conn: Conn, topic, partition, offset, *, max_wait_ms=0, min_bytes=0, max_bytes=50 * 1024 * 1024,
          partition_max_bytes=10 * 1024 * 1024, isolation_level=0):
    """One partition; returns dict(partition, error, high_watermark, last_stable_offset, aborted, records)."""
    (p,) = fetch_multi(conn, topic, [(partition, offset, partition_max_bytes)], max_wait_ms=max_wait_ms,
                       min_bytes=min_bytes, max_bytes=max_bytes, isolation_level=isolation_level)
    assert p["partition"] == partition
    return p


def fetch_all_batches(conn: Conn, topic, partition, start=0):
    """Fetch from `start` until the high watermark; return the list of batches."""
    batches = []
    offset = start
    for _ in range(10000):
        p = fetch(conn, topic, partition, offset)
        assert p["error"] == NONE, f"fetch {topic}/{partition}@{offset}: error {p['error']}"
        got = parse_batches(p["records"] or b"")
        if not got:
            assert offset >= p["high_watermark"], (
                f"fetch at {offset} returned no complete batch below high watermark {p['high_watermark']}")
            return batches
        batches += got
        offset = got[-1].base_offset + got[-1].last_offset_delta + 1
    raise AssertionError("fetch loop did not terminate")


def init_producer_id(conn: Conn):
    """Returns (error, producer_id, producer_epoch)."""
    r = Reader(conn.request(INIT_PRODUCER_ID, 0, string(None) + i32(60000)))
    r.i32()
    return r.i16(), r.i64(), r.i16()


def init_transactional_producer_id(conn: Conn, transactional_id, timeout_ms=60000):
    """InitProducerId v0 for `transactional_id`: (error, producer_id, producer_epoch)."""
    r = Reader(conn.request(INIT_PRODUCER_ID, 0, string(transactional_id) + i32(timeout_ms)))
    r.i32()
    return r.i16(), r.i64(), r.i16()


def add_partitions_to_txn(conn: Conn, transactional_id, producer_id, producer_epoch, topic, partitions):
    """AddPartitionsToTxn v0: {partition: error}."""
    body = (string(transactional_id) + i64(producer_id) + i16(producer_epoch)
            + array([topic], lambda t: string(t) + array(partitions, i32)))
    r = Reader(conn.request(ADD_PARTITIONS_TO_TXN, 0, body))
    r.i32()
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16()))))
    return {p: err for _, parts in topics for p, err in parts}


def end_txn(conn: Conn, transactional_id, producer_id, producer_epoch, commit):
    """EndTxn v0: the error code."""
    body = string(transactional_id) + i64(producer_id) + i16(producer_epoch) + i8(1 if commit else 0)
    r = Reader(conn.request(END_TXN, 0, body))
    r.i32()
    return r.i16()


def produce_v12(conn: Conn, transactional_id, topic, partition, batch: bytes, timeout_ms=10000):
    """Produce v12 (flexible; a transaction version 2 producer's), acks=all: the partition's
    error code."""
    body = (compact_string(transactional_id) + i16(-1) + i32(timeout_ms)
            + uvarint(2) + compact_string(topic)
            + uvarint(2) + i32(partition) + uvarint(len(batch) + 1) + batch + uvarint(0)
            + uvarint(0) + uvarint(0))
    r = Reader(conn.request(PRODUCE, 12, body, flexible_header=True))
    r.skip_tagged_fields()  # response header v1
    assert r.uvarint() == 2 and r.compact_string() == topic
    assert r.uvarint() == 2 and r.i32() == partition
    return r.i16()


def end_txn_v5(conn: Conn, transactional_id, producer_id, producer_epoch, commit):
    """EndTxn v5 (transaction version 2): (error, producer_id, bumped producer_epoch)."""
    body = (compact_string(transactional_id) + i64(producer_id) + i16(producer_epoch)
            + i8(1 if commit else 0) + uvarint(0))
    r = Reader(conn.request(END_TXN, 5, body, flexible_header=True))
    r.skip_tagged_fields()  # response header v1
    r.i32()  # throttle
    return r.i16(), r.i64(), r.i16()


def create_topics(conn: Conn, topics, validate_only=False, timeout_ms=10000):
    """topics: list of (name, num_partitions, replication_factor, {config: value}).
    Returns {name: (error_code, error_message)}."""
    def enc(t):
        name, n, rf, cfg = t
        return (string(name) + i32(n) + i16(rf) + array([], None)
                + array(list(cfg.items()), lambda kv: string(kv[0]) + string(kv[1])))
    body = array(topics, enc) + i32(timeout_ms) + i8(1 if validate_only else 0)
    r = Reader(conn.request(CREATE_TOPICS, 2, body))
    r.i32()
    res = r.array(lambda r: (r.string(), r.i16(), r.string()))
    return {name: (err, msg) for name, err, msg in res}


def delete_topics(conn: Conn, names, timeout_ms=10000):
    """DeleteTopics v1 by name; returns {name: error_code}."""
    body = array(names, string) + i32(timeout_ms)
    r = Reader(conn.request(DELETE_TOPICS, 1, body))
    r.i32()  # throttle
    return dict(r.array(lambda r: (r.string(), r.i16())))


def create_topic_echo(bootstrap, name):
    """CreateTopics v5 (flexible) of one topic with every default; returns the configs the
    response echoes: {name: (value, config_source)}."""
    topic = compact_string(name) + i32(-1) + i16(-1) + uvarint(1) + uvarint(1) + uvarint(0)
    body = uvarint(2) + topic + i32(10000) + i8(0) + uvarint(0)
    with Conn(bootstrap) as conn:
        r = Reader(conn.request(CREATE_TOPICS, 5, body, flexible_header=True))
    r.skip_tagged_fields()  # response header v1
    r.i32()  # throttle time

    def config(r):
        entry = (r.compact_string(), r.compact_string(), r.i8(), r.i8(), r.i8())
        r.skip_tagged_fields()
        return entry

    def result(r):
        entry = (r.compact_string(), r.i16(), r.compact_string(), r.i32(), r.i16(), r.compact_array(config))
        r.skip_tagged_fields()
        return entry

    ((_, err, message, _, _, configs),) = r.compact_array(result)
    assert err == NONE, f"CreateTopics v5 of {name}: error {err} {message}"
    return {n: (value, source) for n, value, _read_only, source, _sensitive in configs}


def metadata(conn: Conn, topics, allow_auto_topic_creation=True):
    """Metadata v4. topics=None asks for all. Returns {name: (error_code, [partition dicts])} plus
    the brokers under key None."""
    body = (i32(-1) if topics is None else array(topics, string)) + i8(1 if allow_auto_topic_creation else 0)
    r = Reader(conn.request(METADATA, 4, body))
    r.i32()
    brokers = r.array(lambda r: (r.i32(), r.string(), r.i32(), r.string()))
    r.string()  # cluster id
    r.i32()  # controller id
    out = {None: brokers}
    for err, name, _internal, parts in r.array(lambda r: (r.i16(), r.string(), r.i8(), r.array(lambda r: dict(
            error=r.i16(), partition=r.i32(), leader=r.i32(), replicas=r.array(Reader.i32),
            isr=r.array(Reader.i32))))):
        out[name] = (err, parts)
    return out


def list_offsets(conn: Conn, topic, partition, timestamp):
    """ListOffsets v1: returns (error_code, timestamp, offset). timestamp -1 latest, -2 earliest."""
    body = i32(-1) + array([topic], lambda t: string(t) + array([partition], lambda p: i32(p) + i64(timestamp)))
    r = Reader(conn.request(LIST_OFFSETS, 1, body))
    ((name, [(idx, err, ts, off)]),) = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16(), r.i64(), r.i64()))))
    assert (name, idx) == (topic, partition)
    return err, ts, off


DELETE_RECORDS = 21


def delete_records(conn: Conn, topic, partition, offset, timeout_ms=10000):
    """DeleteRecords v0: returns (error_code, low_watermark)."""
    body = array([topic], lambda t: string(t) + array([partition], lambda p: i32(p) + i64(offset))) + i32(timeout_ms)
    r = Reader(conn.request(DELETE_RECORDS, 0, body))
    r.i32()
    ((name, [(idx, low, err)]),) = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i64(), r.i16()))))
    assert (name, idx) == (topic, partition)
    return err, low


OFFSET_FETCH = 9


def offset_fetch(conn: Conn, group, topic, partitions):
    """OffsetFetch v1 (to the group's coordinator): returns {partition: (offset, metadata, error_code)},
    the metadata as the raw bytes the broker sent (None when null)."""
    body = string(group) + array([topic], lambda t: string(t) + array(partitions, i32))
    r = Reader(conn.request(OFFSET_FETCH, 1, body))
    out = {}
    for name, parts in r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i64(), r.nbytes_i16(), r.i16())))):
        assert name == topic, name
        for p, off, meta, err in parts:
            out[p] = (off, meta, err)
    return out
