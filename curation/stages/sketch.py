"""Mergeable per-dimension quantile sketch (KLL) plus streaming moments.

Why KLL (Karnin, Lang, Liberty 2016) and not t-digest or GK:

* it is *mergeable* with a proven bound: merging sketches built on any split of the data
  (one per Ray task) gives the same error guarantee as one sketch over all of it, which is
  what a distributed N:1 statistics stage needs; GK does not merge cleanly;
* it returns values that occur in the data, so discrete distributions (gripper open/close,
  integer-valued joints) get exact-valued quantiles; t-digest interpolates between
  centroids and can answer a value that no row has, far off in rank when values repeat;
* the error is in *rank*, uniform over q: with top capacity ``k`` the normalised rank
  error is about 1.7/k with high probability (k = 1024 → ≈ 0.17 %), which is the bound the
  manifest's quantiles carry.

Layout: level ``h`` holds items of weight 2^h; level ``h`` of ``H`` has capacity
``max(2, ceil(k · (2/3)^(H-1-h)))``. A level over capacity is *compacted*: sorted, one
item kept back if the count is odd, and every other item (random offset) promoted to
level ``h+1``. One compaction moves any rank by at most 2^h, and the random offset makes
the errors cancel on average.

Vectorised over dimensions: every update adds one value to each of the D dims, so all D
sketches have identical level sizes. Levels are arrays ``[n_h, D]`` sorted per column and
compacted with a shared coin (the analysis is per dimension, so sharing the coin across
dims is harmless). Coins come from a counter hashed with splitmix64, so a sketch is a
deterministic function of its inputs and merge order, and serialises without RNG state.

Streaming moments ride along: count, mean and M2 merged with Chan et al.'s parallel
formula (numerically stable), plus min and max.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

_MAGIC = b"GWPQS1\x00\x00"  # serialised QuantileSketch, format 1

_C = 2.0 / 3.0
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


@dataclass
class Moments:
    """Count, mean, M2 (sum of squared deviations), min and max per dim."""

    count: int
    mean: np.ndarray  # [D] float64
    m2: np.ndarray  # [D]
    min: np.ndarray  # [D]
    max: np.ndarray  # [D]

    @classmethod
    def empty(cls, dims: int) -> Moments:
        return cls(0, np.zeros(dims), np.zeros(dims), np.full(dims, np.inf), np.full(dims, -np.inf))

    @classmethod
    def of(cls, x_ND: np.ndarray) -> Moments:
        mean = x_ND.mean(axis=0)
        return cls(x_ND.shape[0], mean, ((x_ND - mean) ** 2).sum(axis=0), x_ND.min(axis=0), x_ND.max(axis=0))

    def merge(self, other: Moments) -> Moments:
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        # replace, not Moments(...): a subclass's own fields (lerobot_stats.RunningStats) carry over
        return replace(
            self,
            count=n,
            mean=mean,
            m2=m2,
            min=np.minimum(self.min, other.min),
            max=np.maximum(self.max, other.max),
        )

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof = 0)."""
        return np.sqrt(self.m2 / self.count) if self.count else np.zeros_like(self.mean)


class QuantileSketch:
    """KLL sketch of D-dimensional rows: ``update([N, D])``, ``merge``, ``quantile(q) -> [D]``."""

    def __init__(self, dims: int, k: int = 1024):
        if dims < 1:
            raise ValueError(f"QuantileSketch needs dims >= 1, got {dims}")
        if k < 8:
            raise ValueError(f"QuantileSketch needs k >= 8, got {k}")
        self.dims = int(dims)
        self.k = int(k)
        self.n = 0
        self._coins = 0  # how many coins were drawn: the whole random state
        self._levels: list[np.ndarray] = [np.empty((0, self.dims))]
        self.moments = Moments.empty(self.dims)

    # ---- building -------------------------------------------------------------------
    def _capacity(self, h: int) -> int:
        depth = len(self._levels) - 1 - h
        return max(2, math.ceil(self.k * _C**depth))

    def _coin(self) -> int:
        self._coins += 1
        return _splitmix64(self._coins) & 1

    def _compress(self) -> None:
        h = 0
        while h < len(self._levels):
            level = self._levels[h]
            if level.shape[0] <= self._capacity(h):
                h += 1
                continue
            if h == len(self._levels) - 1:
                self._levels.append(np.empty((0, self.dims)))
            level = np.sort(level, axis=0)
            keep = level[:1] if level.shape[0] % 2 else level[:0]
            rest = level[keep.shape[0] :]
            promoted = rest[self._coin() :: 2]
            self._levels[h] = keep
            self._levels[h + 1] = np.concatenate([self._levels[h + 1], promoted])
            h = 0  # a new top level shrinks every capacity below it: re-check from the bottom

    def update(self, values_ND: np.ndarray) -> QuantileSketch:
        """Add rows ``[N, D]`` (a 1-D array counts as one dim when D = 1). NaN/inf is an error."""
        x = np.asarray(values_ND, dtype=np.float64)
        if x.ndim == 1 and self.dims == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != self.dims:
            raise ValueError(f"QuantileSketch.update: expected [N, {self.dims}], got {x.shape}")
        if x.shape[0] == 0:
            return self
        if not np.isfinite(x).all():
            raise ValueError(f"QuantileSketch.update: {int((~np.isfinite(x)).sum())} NaN/inf value(s)")
        self.n += x.shape[0]
        self.moments = self.moments.merge(Moments.of(x))
        self._levels[0] = np.concatenate([self._levels[0], x])
        self._compress()
        return self

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """Fold ``other`` into this sketch (in place) and return self."""
        if other.dims != self.dims or other.k != self.k:
            raise ValueError(
                f"cannot merge sketches of (dims={other.dims}, k={other.k}) into (dims={self.dims}, k={self.k})"
            )
        while len(self._levels) < len(other._levels):
            self._levels.append(np.empty((0, self.dims)))
        for h, level in enumerate(other._levels):
            self._levels[h] = np.concatenate([self._levels[h], level])
        self.n += other.n
        self._coins += other._coins
        self.moments = self.moments.merge(other.moments)
        self._compress()
        return self

    # ---- queries --------------------------------------------------------------------
    @property
    def num_retained(self) -> int:
        return sum(level.shape[0] for level in self._levels)

    def quantiles(self, qs: np.ndarray | list[float]) -> np.ndarray:
        """``[len(qs), D]``: for each q the smallest retained value whose weighted rank reaches q·n."""
        if self.n == 0:
            raise ValueError("quantile of an empty sketch")
        qs = np.asarray(qs, dtype=np.float64).reshape(-1)
        if np.any((qs < 0) | (qs > 1)):
            raise ValueError(f"quantiles must be in [0, 1], got {qs.tolist()}")
        items_MD = np.concatenate(self._levels)
        weights_M = np.concatenate([np.full(lv.shape[0], 2.0**h) for h, lv in enumerate(self._levels)])
        order_MD = np.argsort(items_MD, axis=0, kind="stable")
        sorted_MD = np.take_along_axis(items_MD, order_MD, axis=0)
        cum_MD = np.cumsum(weights_M[order_MD], axis=0)
        out = np.empty((qs.size, self.dims))
        cols = np.arange(self.dims)
        for i, q in enumerate(qs):
            target = max(q * self.n, 1.0) - 1e-9 * self.n
            idx = np.argmax(cum_MD >= target, axis=0)
            out[i] = sorted_MD[idx, cols]
        return out

    def quantile(self, q: float) -> np.ndarray:
        """``[D]`` estimated q-quantile of every dim."""
        return self.quantiles([q])[0]

    # ---- serialisation --------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-safe form (lists of floats)."""
        m = self.moments
        return {
            "dims": self.dims,
            "k": self.k,
            "n": self.n,
            "coins": self._coins,
            "levels": [lv.tolist() for lv in self._levels],
            "moments": {
                "count": m.count,
                "mean": m.mean.tolist(),
                "m2": m.m2.tolist(),
                "min": m.min.tolist(),
                "max": m.max.tolist(),
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> QuantileSketch:
        s = cls(int(data["dims"]), int(data["k"]))
        s.n = int(data["n"])
        s._coins = int(data["coins"])
        s._levels = [np.asarray(lv, dtype=np.float64).reshape(-1, s.dims) for lv in data["levels"]]
        m = data["moments"]
        s.moments = Moments(
            int(m["count"]), *(np.asarray(m[key], dtype=np.float64) for key in ("mean", "m2", "min", "max"))
        )
        return s

    def to_bytes(self) -> bytes:
        """Compact binary form (no pickle) for Ray task results and part metadata: a magic,
        the int64 header ``[dims, k, n, coins, levels, count, rows of each level…]``, then the
        float64 moments (mean, m2, min, max) and the levels' values. Reading it is three
        ``frombuffer`` calls and one copy (unzipping an ``.npz`` per sketch was most of the
        driver's statistics phase)."""
        m = self.moments
        header = [self.dims, self.k, self.n, self._coins, len(self._levels), m.count]
        header += [lv.shape[0] for lv in self._levels]
        values = [
            np.ascontiguousarray(a, dtype=np.float64) for a in (m.mean, m.m2, m.min, m.max, *self._levels)
        ]
        return (
            _MAGIC
            + np.asarray(header, dtype="<i8").tobytes()
            + b"".join(v.astype("<f8").tobytes() for v in values)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> QuantileSketch:
        if data[: len(_MAGIC)] != _MAGIC:
            raise ValueError("not a serialised QuantileSketch (bad magic)")
        pos = len(_MAGIC)
        dims, k, n, coins, num_levels, count = (int(v) for v in np.frombuffer(data, "<i8", 6, pos))
        pos += 6 * 8
        rows = [int(v) for v in np.frombuffer(data, "<i8", num_levels, pos)]
        pos += num_levels * 8
        values = np.frombuffer(data, "<f8", offset=pos).astype(np.float64)  # a copy: writable
        if values.size != dims * (4 + sum(rows)):
            raise ValueError(
                f"serialised QuantileSketch: {values.size} values, header says {dims * (4 + sum(rows))}"
            )
        s = cls(dims, k)
        s.n, s._coins = n, coins
        mean, m2, lo, hi = (values[i * dims : (i + 1) * dims] for i in range(4))
        s.moments = Moments(count, mean, m2, lo, hi)
        stops = np.cumsum([4 * dims] + [r * dims for r in rows])
        s._levels = [values[a:b].reshape(-1, dims) for a, b in itertools.pairwise(stops)]
        return s
