"""Statistics in the training representation, normalisation and its exact inverse."""

from __future__ import annotations

import numpy as np
import pytest

from curation.config import WindowConfig
from curation.stages.stats import (
    StatsAccumulator,
    compute_stats,
    episode_training_values,
)
from curation.stages.windowing import windows
from schemas import MAX_DIM, DimStats, EmbodimentStats, get_embodiment
from schemas.normalize import (
    NormConfig,
    denormalize_action,
    denormalize_state,
    normalize_action,
    normalize_state,
    to_training_action,
)
from tests.curation.test_windowing import make_episode

WCFG = WindowConfig(chunk=8, frame_stride=2, num_future=2, stride=3)


def _episodes(embodiment: str, n: int = 6, scale: float = 1.0):
    eps = [make_episode(40 + 3 * i, embodiment, seed=i, with_cameras=False) for i in range(n)]
    return [e.with_(state=e.state * scale, action=e.action * scale) for e in eps]


def _dims(values):
    return tuple(float(v) for v in values)


def _stats(name: str, q01a, q99a, q01s, q99s) -> EmbodimentStats:
    def ds(lo, hi):
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        return DimStats(_dims((lo + hi) / 2), _dims(hi - lo), _dims(lo), _dims(hi), _dims(lo), _dims(hi), 100)

    return EmbodimentStats(name, ds(q01a, q99a), ds(q01s, q99s))


# ---- statistics -----------------------------------------------------------------------


def test_training_values_are_chunk_deltas_for_delta_dims():
    spec = get_embodiment("agilex_dual_arm")
    ep = _episodes("agilex_dual_arm", 1)[0]
    actions, states = episode_training_values(ep, WCFG)
    ws = windows(ep, WCFG)
    want = np.concatenate([to_training_action(w.action, w.state, spec) for w in ws])
    np.testing.assert_allclose(actions, want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(states, np.stack([w.state for w in ws]))
    w = ws[1]  # spot-check one value by hand: left_joint_0 (delta) and left_gripper (absolute)
    assert actions[8 + 3, 0] == pytest.approx(float(w.action[3, 0]) - float(w.state[0]), abs=1e-6)
    assert actions[8 + 3, 6] == pytest.approx(float(w.action[3, 6]), abs=1e-6)


def test_stats_match_exact_numbers():
    eps = _episodes("agilex_dual_arm")
    stats = compute_stats(eps, WCFG)["agilex_dual_arm"]
    acts = np.concatenate([episode_training_values(e, WCFG)[0] for e in eps])
    states = np.concatenate([episode_training_values(e, WCFG)[1] for e in eps])
    for got, x in ((stats.action, acts), (stats.state, states)):
        assert got.count == x.shape[0]
        np.testing.assert_allclose(got.mean, x.mean(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.std, x.std(0), rtol=1e-9)
        np.testing.assert_array_equal(got.min, x.min(0))
        np.testing.assert_array_equal(got.max, x.max(0))
        # fewer values than the sketch holds: quantiles are the exact inverse-CDF values
        n = x.shape[0]
        s = np.sort(x, axis=0)
        np.testing.assert_array_equal(got.q01, s[int(np.ceil(0.01 * n)) - 1])
        np.testing.assert_array_equal(got.q99, s[int(np.ceil(0.99 * n)) - 1])


def test_per_episode_sketches_merged_equal_in_process_stats():
    """As the job makes them: one serialised accumulator per episode (in its Ray task), merged
    per embodiment on the driver, give the statistics of one pass over every episode."""
    eps = _episodes("agilex_dual_arm", 4) + _episodes("metaworld_sawyer", 3)
    blobs = [StatsAccumulator(e.embodiment).add_episode(e, WCFG).to_bytes() for e in eps]
    accs: dict[str, StatsAccumulator] = {}
    for acc in map(StatsAccumulator.from_bytes, blobs):
        accs[acc.embodiment] = accs[acc.embodiment].merge(acc) if acc.embodiment in accs else acc
    merged = {name: acc.finalize() for name, acc in accs.items()}
    direct = compute_stats(eps, WCFG)
    assert merged.keys() == direct.keys() == {"agilex_dual_arm", "metaworld_sawyer"}
    for name in direct:
        for part in ("action", "state"):
            a, b = getattr(merged[name], part), getattr(direct[name], part)
            np.testing.assert_allclose(a.mean, b.mean, rtol=1e-9)
            assert (a.q01, a.q99, a.min, a.max, a.count) == (b.q01, b.q99, b.min, b.max, b.count)


def test_window_and_episode_accumulation_agree():
    ep = _episodes("agilex_dual_arm", 1)[0]
    by_ep = StatsAccumulator("agilex_dual_arm").add_episode(ep, WCFG).finalize()
    acc = StatsAccumulator("agilex_dual_arm")
    for w in windows(ep, WCFG):
        acc.add_window(w)
    by_w = acc.finalize()
    np.testing.assert_allclose(by_ep.action.mean, by_w.action.mean, rtol=1e-6)
    np.testing.assert_allclose(by_ep.action.q99, by_w.action.q99, rtol=1e-6)
    np.testing.assert_allclose(by_ep.state.mean, by_w.state.mean, rtol=1e-9)
    assert (by_ep.state.q01, by_ep.state.q99, by_ep.state.count) == (
        by_w.state.q01,
        by_w.state.q99,
        by_w.state.count,
    )


# ---- normalisation --------------------------------------------------------------------


@pytest.mark.parametrize("embodiment, scale", [("metaworld_sawyer", 1.0), ("agilex_dual_arm", 3.0)])
def test_normalise_then_denormalise_is_exact(embodiment, scale):
    spec = get_embodiment(embodiment)
    eps = _episodes(embodiment, scale=scale)
    stats = compute_stats(eps, WCFG)[embodiment]
    for w in windows(eps[2], WCFG):
        a32, amask = normalize_action(w.action, w.state, spec, stats)
        s32, smask = normalize_state(w.state, spec, stats)
        assert a32.shape == (8, MAX_DIM) and a32.dtype == np.float32
        assert amask.sum() == spec.action_dim and amask[: spec.action_dim].all()
        assert smask.sum() == spec.state_dim and s32.shape == (MAX_DIM,)
        assert not a32[:, ~amask].any() and not s32[~smask].any()
        assert np.abs(a32).max() < 3  # inside the data's range, roughly [-1, 1]
        np.testing.assert_allclose(denormalize_action(a32, w.state, spec, stats), w.action, rtol=0, atol=1e-5)
        np.testing.assert_allclose(denormalize_state(s32, spec, stats), w.state, rtol=0, atol=1e-5)


def test_quantiles_map_to_minus_one_and_plus_one():
    spec = get_embodiment("agilex_dual_arm")
    da, ds = spec.action_dim, spec.state_dim
    q01a, q99a = np.linspace(-2, -1, da), np.linspace(1, 4, da)
    stats = _stats(spec.name, q01a, q99a, np.full(ds, -1.0), np.full(ds, 1.0))
    state = np.linspace(0.1, 0.9, ds).astype(np.float32)
    ref = np.asarray(spec.delta_state_index())
    # raw actions whose training value is exactly q01 (row 0) and q99 (row 1)
    raw = np.stack([q01a, q99a]).astype(np.float64)
    raw[:, ref >= 0] += state[ref[ref >= 0]]
    y, _ = normalize_action(raw.astype(np.float32), state, spec, stats)
    np.testing.assert_allclose(y[0, :da], -1.0, atol=1e-5)
    np.testing.assert_allclose(y[1, :da], 1.0, atol=1e-5)
    # the gripper (absolute) ignores the state; a joint (delta) does not
    moved = state.copy()
    moved[0] += 0.5
    moved[6] += 0.5
    y2, _ = normalize_action(raw.astype(np.float32), moved, spec, stats)
    assert y2[0, 6] == pytest.approx(y[0, 6])
    assert y2[0, 0] == pytest.approx(y[0, 0] - 0.5 / ((q99a[0] - q01a[0]) / 2), abs=1e-5)


def test_degenerate_range_is_centred_not_divided():
    spec = get_embodiment("metaworld_sawyer")
    stats = _stats(spec.name, [-1, -1, -1, 0.5], [1, 1, 1, 0.5], [0] * 4, [1] * 4)  # gripper constant
    action = np.array([[0.2, -0.3, 0.9, 0.5], [0.0, 0.0, 0.0, 0.7]], np.float32)
    y, _ = normalize_action(action, np.zeros(4, np.float32), spec, stats)
    assert np.isfinite(y).all() and y[0, 3] == 0.0 and y[1, 3] == pytest.approx(0.2)
    np.testing.assert_allclose(denormalize_action(y, np.zeros(4), spec, stats), action, atol=1e-6)
    # min_range is a config knob
    y3, _ = normalize_action(action, np.zeros(4), spec, stats, NormConfig(min_range=5.0))
    assert y3[0, 0] == pytest.approx(0.2)


def test_batched_inputs():
    spec = get_embodiment("agilex_dual_arm")
    stats = compute_stats(_episodes(spec.name, 3), WCFG)[spec.name]
    ws = windows(_episodes(spec.name, 1)[0], WCFG)[:4]
    a_BTD = np.stack([w.action for w in ws])
    s_BD = np.stack([w.state for w in ws])
    y, _ = normalize_action(a_BTD, s_BD, spec, stats)
    for i, w in enumerate(ws):
        np.testing.assert_allclose(y[i], normalize_action(w.action, w.state, spec, stats)[0], atol=1e-6)
    np.testing.assert_allclose(denormalize_action(y, s_BD, spec, stats), a_BTD, atol=1e-5)


def test_mismatched_inputs_are_named():
    spec = get_embodiment("agilex_dual_arm")
    stats = compute_stats(_episodes(spec.name, 2), WCFG)[spec.name]
    with pytest.raises(ValueError, match="action of agilex_dual_arm must have 14 dims"):
        normalize_action(np.zeros((8, 4)), np.zeros(14), spec, stats)
    with pytest.raises(ValueError, match="stats are for embodiment 'agilex_dual_arm'"):
        normalize_action(np.zeros((8, 4)), np.zeros(4), get_embodiment("metaworld_sawyer"), stats)
    with pytest.raises(ValueError, match="must have 32 dims"):
        denormalize_action(np.zeros((8, 14)), np.zeros(14), spec, stats)
