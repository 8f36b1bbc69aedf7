"""The TensorFlow tensor-bundle reader (engine.pretrained.tf_bundle) on the real musicnn checkpoints: what it
reads, and that damaged files are refused with a specific reason instead of yielding wrong weights."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from engine.pretrained import musicnn as M
from engine.pretrained.tf_bundle import BundleError, _crc_bytes, crc32c, read_bundle, read_index, read_tensor


@pytest.fixture(scope="module")
def vgg_files() -> tuple[bytes, bytes]:
    source = M.find_source()
    return source.read("MSD_vgg/.index"), source.read(f"MSD_vgg/{M.DATA_FILE}")


def test_crc32c_known_values() -> None:
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283  # the Castagnoli check value
    data = np.random.default_rng(0).integers(0, 256, 200_003, dtype=np.uint8).tobytes()
    # the vectorised path (long inputs) equals the byte loop (short inputs) over the same bytes
    assert crc32c(data) == _crc_bytes(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    assert crc32c(data) != zlib.crc32(data)  # not the zip polynomial


def test_index_lists_every_variable_with_dtype_shape_and_extent(vgg_files) -> None:
    index, data = vgg_files
    entries = read_index(index)
    assert len(entries) == 86  # 38 model variables (weights, BN) + Adam's two slots each + beta1/2_power
    e = entries["2CNN/kernel"]
    assert e.shape == (3, 3, 128, 128) and e.dtype == np.float32 and e.size == 3 * 3 * 128 * 128 * 4
    extents = sorted((x.offset, x.offset + x.size) for x in entries.values())
    assert extents[0][0] == 0 and extents[-1][1] == len(data)  # the shard is exactly the tensors, end to end
    assert all(a[1] == b[0] for a, b in zip(extents, extents[1:]))


def test_reads_the_values(vgg_files) -> None:
    index, data = vgg_files
    arrays = read_bundle(index, data, ["batch_normalization_1/moving_variance", "beta1_power"])
    assert (arrays["batch_normalization_1/moving_variance"] > 0).all()  # variances
    assert float(arrays["beta1_power"]) == 0.0  # Adam's 0.9 ** steps, underflowed after a long training run


def test_a_flipped_data_byte_is_caught(vgg_files) -> None:
    index, data = vgg_files
    entry = read_index(index)["dense/kernel"]
    bad = bytearray(data)
    bad[entry.offset + 100] ^= 0x01
    with pytest.raises(BundleError, match="dense/kernel: CRC32C mismatch"):
        read_tensor(entry, bytes(bad))


def test_a_damaged_index_is_refused(vgg_files) -> None:
    index, _ = vgg_files
    with pytest.raises(BundleError, match="magic"):
        read_index(index[:-1] + b"\x00")
    with pytest.raises(BundleError, match="shorter than an SSTable footer"):
        read_index(index[:20])
    bad = bytearray(index)
    bad[40] ^= 0x01  # inside the first data block
    with pytest.raises(BundleError, match="CRC32C"):
        read_index(bytes(bad))


def test_a_truncated_data_shard_is_refused(vgg_files) -> None:
    index, data = vgg_files
    last = max(read_index(index).values(), key=lambda e: e.offset)
    with pytest.raises(BundleError, match="ends before byte"):
        read_tensor(last, data[:-4])
