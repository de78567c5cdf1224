"""CRC-32C (Castagnoli), the checksum of TFRecord framing, without a new dependency.

Design: the reflected polynomial 0x82F63B78. Short inputs use a table-driven loop in Python;
long ones split the data into L lanes of n bytes, run the table step over all lanes at once in
numpy (n vectorised steps), then chain the lane CRCs with the linear "append n zero bytes"
operator (precomputed as four 256-entry tables). TFRecord stores *masked* CRCs::

    masked(c) = ((c >> 15) | (c << 17)) + 0xA282EAD8  (mod 2**32)

:func:`window_masked_crcs` computes the masked CRC of every 8-byte window of a block at once,
which is what the TFRecord resync (:func:`curation.formats.tfrecord.find_next_record`) searches.
"""

from __future__ import annotations

import numpy as np

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8
_NUMPY_MIN_BYTES = 4096  # below this the plain loop is as fast as setting up numpy


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()
_TABLE_NP = np.asarray(_TABLE, dtype=np.uint32)
_ZERO_OPS: dict[int, tuple[list[int], ...]] = {}  # n -> 4 byte tables of "append n zero bytes"


def _raw_update(crc: int, data: bytes | memoryview) -> int:
    """The register after feeding ``data`` (no initial/final inversion)."""
    table = _TABLE
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _zero_operator(n: int) -> tuple[list[int], ...]:
    """Tables A0..A3 with raw_update(c, n zero bytes) = A0[c&255] ^ A1[c>>8&255] ^ A2[..] ^ A3[..]."""
    if n in _ZERO_OPS:
        return _ZERO_OPS[n]
    basis_32 = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
    for _ in range(n):  # all 32 basis registers through n zero bytes at once
        basis_32 = _TABLE_NP[basis_32 & 0xFF] ^ (basis_32 >> 8)
    cols = [int(v) for v in basis_32]
    tables = []
    for byte in range(4):
        t = [0] * 256
        for v in range(1, 256):
            low = v & -v
            t[v] = t[v ^ low] ^ cols[8 * byte + low.bit_length() - 1]
        tables.append(t)
    _ZERO_OPS[n] = tuple(tables)
    return _ZERO_OPS[n]


def _raw_update_lanes(crc: int, data: memoryview) -> int:
    size = len(data)
    n = 1 << max(10, (int(size**0.5)).bit_length() - 1)  # lane length, a power of two ~ sqrt(size)
    lanes = size // n
    block_LN = np.frombuffer(data[: lanes * n], dtype=np.uint8).reshape(lanes, n)
    cols_NL = np.ascontiguousarray(block_LN.T).astype(np.uint32)
    reg_L = np.zeros(lanes, dtype=np.uint32)
    for j in range(n):
        reg_L = _TABLE_NP[(reg_L ^ cols_NL[j]) & 0xFF] ^ (reg_L >> 8)
    a0, a1, a2, a3 = _zero_operator(n)
    for g in reg_L.tolist():  # raw(c, D1..Dk) = Z_n(raw(c, D1..Dk-1)) ^ raw(0, Dk), by linearity
        crc = a0[crc & 0xFF] ^ a1[(crc >> 8) & 0xFF] ^ a2[(crc >> 16) & 0xFF] ^ a3[crc >> 24] ^ g
    return _raw_update(crc, data[lanes * n :])


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) of ``data``; ``crc32c(b"123456789") == 0xE3069283``."""
    view = memoryview(data).cast("B")
    if len(view) < _NUMPY_MIN_BYTES:
        return _raw_update(0xFFFFFFFF, view) ^ 0xFFFFFFFF
    return _raw_update_lanes(0xFFFFFFFF, view) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    c = crc32c(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def window_masked_crcs(buf_B: np.ndarray, n: int) -> np.ndarray:
    """masked_crc32c of the 8 bytes at each of the positions 0..n-1 of ``buf_B`` (uint32 [n])."""
    reg = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    for j in range(8):
        reg = _TABLE_NP[(reg ^ buf_B[j : j + n]) & 0xFF] ^ (reg >> 8)
    crc = reg ^ np.uint32(0xFFFFFFFF)
    return ((crc >> 15) | (crc << 17)) + np.uint32(_MASK_DELTA)
