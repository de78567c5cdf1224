"""KLL quantile sketch: merged accuracy against numpy, moments, serialisation, errors."""

from __future__ import annotations

import numpy as np
import pytest

from curation.stages.sketch import QuantileSketch

QS = (0.01, 0.5, 0.99)


def rank_error(data: np.ndarray, value: float, q: float) -> float:
    """Distance from q to the rank interval [F(value−), F(value)] of ``value`` in ``data``."""
    s = np.sort(data)
    lo = np.searchsorted(s, value, "left") / s.size
    hi = np.searchsorted(s, value, "right") / s.size
    return 0.0 if lo <= q <= hi else min(abs(q - lo), abs(q - hi))


def sketch_in_tasks(x_ND: np.ndarray, tasks: int = 8, batches: int = 5, k: int = 1024) -> QuantileSketch:
    """Simulate Ray: each task streams its share in batches, sends bytes, the driver merges."""
    blobs = []
    for part in np.array_split(x_ND, tasks):
        s = QuantileSketch(x_ND.shape[1], k)
        for batch in np.array_split(part, batches):
            s.update(batch)
        blobs.append(s.to_bytes())
    merged = QuantileSketch.from_bytes(blobs[0])
    for b in blobs[1:]:
        merged.merge(QuantileSketch.from_bytes(b))
    return merged


def _distributions(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "normal+uniform": np.stack([rng.normal(3, 2, n), rng.uniform(-1, 1, n)], axis=1),
        "heavy tails": np.stack([rng.standard_cauchy(n), rng.lognormal(0, 2, n)], axis=1),
        "discrete": np.stack(
            [rng.integers(0, 2, n), rng.choice([-1.0, 0.0, 0.5, 7.0], n, p=[0.02, 0.9, 0.07, 0.01])], 1
        ),
        "sorted input": np.sort(rng.normal(size=(n, 1)), axis=0),
    }


@pytest.mark.parametrize("name", list(_distributions(10)))
def test_merged_quantiles_within_half_a_percent_rank(name):
    x = _distributions(1_000_000)[name].astype(np.float64)
    s = sketch_in_tasks(x)
    assert s.n == x.shape[0]
    assert s.num_retained < 4 * 1024  # a few thousand values summarise a million
    est = s.quantiles(QS)
    for i, q in enumerate(QS):
        for d in range(x.shape[1]):
            err = rank_error(x[:, d], est[i, d], q)
            assert err <= 0.005, f"{name} dim {d} q{q}: rank error {err:.4%}"
            assert est[i, d] in x[:, d]  # KLL answers values that occur in the data


def test_moments_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(1e3, 5.0, size=(200_000, 3))  # large offset: a naive sum-of-squares would lose digits
    s = sketch_in_tasks(x, tasks=5, batches=3)
    m = s.moments
    np.testing.assert_allclose(m.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.std, x.std(0), rtol=1e-9)
    np.testing.assert_array_equal(m.min, x.min(0))
    np.testing.assert_array_equal(m.max, x.max(0))
    assert m.count == 200_000


def test_small_inputs_are_exact():
    x = np.random.default_rng(2).normal(size=(300, 2))
    s = QuantileSketch(2, k=1024).update(x)
    for q in (0.0, 0.01, 0.37, 0.99, 1.0):
        rank = max(int(np.ceil(q * 300)), 1) - 1  # inverse empirical CDF
        np.testing.assert_array_equal(s.quantile(q), np.sort(x, axis=0)[rank])


def test_serialisation_round_trips_and_is_deterministic():
    x = np.random.default_rng(3).exponential(size=(50_000, 2))
    a = sketch_in_tasks(x, tasks=3, k=128)
    b = sketch_in_tasks(x, tasks=3, k=128)
    np.testing.assert_array_equal(a.quantiles(QS), b.quantiles(QS))
    for back in (QuantileSketch.from_bytes(a.to_bytes()), QuantileSketch.from_dict(a.to_dict())):
        assert back.n == a.n
        np.testing.assert_array_equal(back.quantiles(QS), a.quantiles(QS))
        np.testing.assert_array_equal(back.moments.mean, a.moments.mean)
    more = np.random.default_rng(4).exponential(size=(10_000, 2))
    c = QuantileSketch.from_bytes(a.to_bytes()).merge(QuantileSketch(2, 128).update(more))
    assert c.n == 60_000
    full = np.concatenate([x, more])
    for i, q in enumerate(QS):
        assert rank_error(full[:, 0], c.quantiles(QS)[i, 0], q) < 0.02


def test_errors():
    s = QuantileSketch(2, k=64)
    with pytest.raises(ValueError, match="empty sketch"):
        s.quantile(0.5)
    with pytest.raises(ValueError, match=r"expected \[N, 2\]"):
        s.update(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN/inf"):
        s.update(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="cannot merge"):
        s.merge(QuantileSketch(3, k=64))
    s.update(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        s.quantile(1.5)


def test_serialised_sketch_that_is_not_one_or_is_cut_is_refused():
    blob = QuantileSketch(3, 64).update(np.arange(3000, dtype=float).reshape(-1, 3)).to_bytes()
    with pytest.raises(ValueError, match="bad magic"):
        QuantileSketch.from_bytes(b"PK\x03\x04" + blob[4:])
    with pytest.raises(ValueError, match="values, header says"):
        QuantileSketch.from_bytes(blob[:-8])
