"""Read TensorFlow checkpoints (the "tensor bundle" format, TF 1.x / 2.x ``tf.train.Saver``) without TensorFlow.

A checkpoint ``PREFIX`` is two files:

* ``PREFIX.index``: a LevelDB-style SSTable (``tensorflow/core/lib/io/table*``): data blocks of prefix-compressed
  ``key -> value`` entries, an index block pointing at them, and a 48-byte footer (two block handles + the
  magic number ``0xdb4775248b80fb57``). The entry with the empty key is a ``BundleHeaderProto``; every other
  key is a variable name whose value is a ``BundleEntryProto`` (dtype, shape, shard id, byte offset, byte
  size, masked CRC32C of the bytes).
* ``PREFIX.data-00000-of-00001``: the raw little-endian tensor bytes, concatenated.

Only what the musicnn checkpoints use is supported (one shard, uncompressed table blocks, whole -- not
partitioned -- tensors of numeric dtypes); anything else is refused with a specific :class:`BundleError`.
The two protobuf messages are decoded by hand (a few varint / length-delimited fields), so neither
TensorFlow nor ``protobuf`` is needed. Every tensor's CRC32C is checked when it is read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

__all__ = ["BundleError", "TensorEntry", "read_index", "read_tensor", "read_bundle", "crc32c"]

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two BlockHandles padded to 40 bytes + 8-byte magic
BLOCK_TRAILER_SIZE = 5  # 1-byte compression type + 4-byte CRC after every block
CRC_MASK_DELTA = 0xA282EAD8

# tensorflow/core/framework/types.proto DataType -> numpy (little-endian)
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    19: np.dtype("<f2"),  # DT_HALF
}


class BundleError(ValueError):
    """A file that is not a readable (or not a supported) TensorFlow tensor bundle."""


@dataclass(frozen=True)
class TensorEntry:
    """One variable of the bundle: numpy dtype, shape, and where its bytes lie in the data shard."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked CRC32C of the bytes, as stored


# ---------------------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), as TF computes it. Pure Python per byte is ~0.8 s per MB; the large tensors go through
# numpy instead: the CRC register update is linear over GF(2), so the data is cut into L equal lanes whose
# CRCs (from a zero register) are computed side by side, then folded together with the operator "advance the
# register over m zero bytes" (A^m, a 32 x 32 bit matrix kept as the images of the 32 basis vectors).


def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table[n] = c
    return table


_CRC_TABLE = _crc_table()
_CRC_LIST = [int(v) for v in _CRC_TABLE]
_LANE = 1024  # bytes per lane in the vectorised path


def _crc_bytes(reg: int, data: bytes) -> int:
    table = _CRC_LIST
    for b in data:
        reg = table[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _apply(cols: list[int], reg: int) -> int:
    """A 32 x 32 GF(2) matrix (its 32 column images) times the register ``reg``."""
    out = 0
    k = 0
    while reg:
        if reg & 1:
            out ^= cols[k]
        reg >>= 1
        k += 1
    return out


def _advance_zeros(m: int) -> list[int]:
    """A^m as column images: the register after ``m`` zero bytes is linear in the register before them."""
    result = [1 << k for k in range(32)]
    power = [_CRC_LIST[(1 << k) & 0xFF] ^ ((1 << k) >> 8) for k in range(32)]  # A: one zero byte
    while m:
        if m & 1:
            result = [_apply(power, c) for c in result]
        power = [_apply(power, c) for c in power]
        m >>= 1
    return result


_ADVANCE_LANE = _advance_zeros(_LANE)


def crc32c(data: bytes) -> int:
    """CRC32C of ``data`` (unmasked; ``crc32c(b"123456789") == 0xE3069283``)."""
    n = len(data)
    if n < 16 * _LANE:
        return _crc_bytes(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    # register after the data from 0xFFFFFFFF = A^n(0xFFFFFFFF) ^ (register after the data from 0)
    lanes = -(-n // _LANE)
    buf = np.zeros(lanes * _LANE, dtype=np.uint8)
    buf[lanes * _LANE - n :] = np.frombuffer(data, dtype=np.uint8)  # leading zeros leave a zero register at 0
    rows = buf.reshape(lanes, _LANE)
    reg = np.zeros(lanes, dtype=np.uint32)
    for j in range(_LANE):
        reg = _CRC_TABLE[(reg ^ rows[:, j]) & 0xFF] ^ (reg >> 8)
    acc = 0
    for r in reg.tolist():  # fold: acc = A^m(acc) ^ lane
        acc = _apply(_ADVANCE_LANE, acc) ^ r
    # the 0xFFFFFFFF start register advanced over the n real bytes
    return acc ^ _apply(_advance_zeros(n), 0xFFFFFFFF) ^ 0xFFFFFFFF


def _mask(crc: int) -> int:
    """TF's (LevelDB's) masked CRC, stored so a CRC of data containing CRCs is not degenerate."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + CRC_MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------------
# varints, protobuf fields, SSTable blocks


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; returns ``(value, next position)``."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise BundleError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise BundleError("varint longer than 64 bits")


def _fields(msg: bytes) -> list[tuple[int, int | bytes]]:
    """A protobuf message -> ``[(field number, int value or bytes)]`` (wire types 0, 1, 2, 5)."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(msg):
        tag, pos = _varint(msg, pos)
        num, wire = tag >> 3, tag & 7
        if wire == 0:
            val, pos = _varint(msg, pos)
            out.append((num, val))
        elif wire == 1:
            out.append((num, struct.unpack_from("<Q", msg, pos)[0]))
            pos += 8
        elif wire == 2:
            n, pos = _varint(msg, pos)
            out.append((num, msg[pos : pos + n]))
            pos += n
        elif wire == 5:
            out.append((num, struct.unpack_from("<I", msg, pos)[0]))
            pos += 4
        else:
            raise BundleError(f"unsupported protobuf wire type {wire} (field {num})")
        if pos > len(msg):
            raise BundleError("truncated protobuf message")
    return out


def _block(table: bytes, handle: bytes) -> tuple[bytes, bytes]:
    """The block a ``BlockHandle`` (varint offset, varint size) points at; returns ``(block, rest of handle)``."""
    offset, pos = _varint(handle, 0)
    size, pos = _varint(handle, pos)
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(table):
        raise BundleError(f"block [{offset}, {end}) lies beyond the end of the index ({len(table)} bytes)")
    if table[end] != 0:
        raise BundleError(f"compressed index block (type {table[end]}); only uncompressed tables are supported")
    stored = struct.unpack_from("<I", table, end + 1)[0]
    if _mask(crc32c(table[offset : end + 1])) != stored:  # the CRC covers the block and its type byte
        raise BundleError(f"index block at {offset} fails its CRC32C check (corrupt file)")
    return table[offset:end], handle[pos:]


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Decode one block's prefix-compressed ``(key, value)`` entries in order."""
    if len(block) < 4:
        raise BundleError("index block shorter than its restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise BundleError("index block restart array is larger than the block")
    out: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    while pos < limit:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise BundleError("malformed index block entry")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        out.append((key, block[pos : pos + value_len]))
        pos += value_len
    return out


def _shape(msg: bytes) -> tuple[int, ...]:
    dims: list[int] = []
    for num, val in _fields(msg):
        if num == 2:  # repeated Dim {int64 size = 1; string name = 2}
            size = next((v for n, v in _fields(val) if n == 1), 0)  # type: ignore[arg-type]
            dims.append(int(size))  # type: ignore[arg-type]
        elif num == 3 and val:
            raise BundleError("tensor of unknown rank")
    return tuple(dims)


def _entry(name: str, msg: bytes) -> TensorEntry:
    f: dict[int, int | bytes] = {}
    for num, val in _fields(msg):
        if num == 7:
            raise BundleError(f"{name}: partitioned (sliced) variables are not supported")
        f[num] = val
    dtype_code = int(f.get(1, 0))  # type: ignore[arg-type]
    if dtype_code not in DTYPES:
        raise BundleError(f"{name}: unsupported TensorFlow dtype code {dtype_code}")
    shape = _shape(f.get(2, b""))  # type: ignore[arg-type]
    dtype = DTYPES[dtype_code]
    entry = TensorEntry(
        name=name,
        dtype=dtype,
        shape=shape,
        shard_id=int(f.get(3, 0)),  # type: ignore[arg-type]
        offset=int(f.get(4, 0)),  # type: ignore[arg-type]
        size=int(f.get(5, 0)),  # type: ignore[arg-type]
        crc32c=int(f.get(6, 0)),  # type: ignore[arg-type]
    )
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if entry.size != expected:
        raise BundleError(f"{name}: {entry.size} bytes stored for shape {shape} {dtype} ({expected} expected)")
    return entry


# ---------------------------------------------------------------------------------------------------------
# public API


def read_index(index: bytes) -> dict[str, TensorEntry]:
    """Parse the bytes of a ``.index`` file -> ``{variable name: TensorEntry}`` (sorted by name)."""
    if len(index) < FOOTER_SIZE:
        raise BundleError(f"index is {len(index)} bytes, shorter than an SSTable footer")
    footer = index[-FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)
    if magic != TABLE_MAGIC:
        raise BundleError(f"bad SSTable magic {magic:#x} (not a TensorFlow checkpoint index)")
    _meta_block, rest = _block(index, footer)  # the metaindex block comes first (unused)
    index_block, _ = _block(index, rest)
    entries: dict[str, TensorEntry] = {}
    header_seen = False
    for _sep, handle in _block_entries(index_block):
        data_block, _ = _block(index, handle)
        for key, value in _block_entries(data_block):
            if key == b"":  # BundleHeaderProto {int32 num_shards = 1; Endianness endianness = 2; ...}
                header = dict(_fields(value))
                if int(header.get(1, 1)) != 1:  # type: ignore[arg-type]
                    raise BundleError(f"bundle has {header.get(1)} data shards; only 1 is supported")
                if int(header.get(2, 0)) != 0:  # type: ignore[arg-type]
                    raise BundleError("big-endian bundle; only little-endian is supported")
                header_seen = True
                continue
            name = key.decode("utf-8")
            entries[name] = _entry(name, value)
    if not header_seen:
        raise BundleError("index has no bundle header (not a tensor-bundle checkpoint)")
    return entries


def read_tensor(entry: TensorEntry, data: bytes | memoryview) -> np.ndarray:
    """One tensor from the data shard's bytes, CRC32C-checked -> numpy array of ``entry.shape``."""
    raw = bytes(data[entry.offset : entry.offset + entry.size])
    if len(raw) != entry.size:
        raise BundleError(f"{entry.name}: data shard ends before byte {entry.offset + entry.size}")
    if _mask(crc32c(raw)) != entry.crc32c:
        raise BundleError(f"{entry.name}: CRC32C mismatch (corrupt data shard)")
    return np.frombuffer(raw, dtype=entry.dtype).reshape(entry.shape).copy()


def read_bundle(index: bytes, data: bytes, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """``{name: array}`` for ``names`` (default: every variable) of a bundle given its two files' bytes."""
    entries = read_index(index)
    wanted = list(entries) if names is None else names
    missing = [n for n in wanted if n not in entries]
    if missing:
        raise BundleError(f"variables not in the checkpoint: {missing[:8]}")
    return {n: read_tensor(entries[n], data) for n in wanted}
