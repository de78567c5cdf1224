"""Per-embodiment normalisation statistics (N:1, distributed).

Statistics are taken over exactly what the model trains on:

* actions in the *training representation* of each window: the chunk ``a[t : t+p]`` with
  delta dims made relative to ``s[t]`` (:func:`schemas.normalize.to_training_action`),
  real steps only (padding from ``tail="pad"`` would bias the tails);
* states ``s[t]`` at the window starts;
* rows with actions only: action-free video (:mod:`schemas.episode`) adds nothing, so an
  embodiment seen only without actions has no statistics (its rows need none: they carry
  neither action nor state).

One :class:`StatsAccumulator` per embodiment holds a :class:`~curation.stages.sketch.QuantileSketch`
for each vector; accumulators built in different Ray tasks serialise to bytes, merge, and
finalise to :class:`schemas.EmbodimentStats` (mean, population std, min, max, q01, q99,
count). The ``q01``/``q99`` fields hold ``NormConfig.low_quantile``/``high_quantile``
(0.01/0.99 unless configured otherwise). Quantiles carry the sketch's rank error, about
1.7 / ``NormConfig.sketch_k``; mean/std/min/max are exact up to float64 rounding.

In the job each episode's accumulator is built from its raw sample rows in its Ray task
(:func:`raw_rows_accumulator`) and saved beside its part; the driver merges them in
discovery order (:mod:`curation.phases.statistics`). :func:`compute_stats` is the same
arithmetic over whole episodes, in one process.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.config import WindowConfig
from curation.stages.sketch import QuantileSketch
from curation.stages.windowing import Window, plan_windows
from schemas import DimStats, EmbodimentStats, Episode, get_embodiment
from schemas.normalize import NormConfig, to_training_action

_NORM = NormConfig()


def episode_training_values(episode: Episode, wcfg: WindowConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(actions [M, Da], states [N, Ds])`` float64 the windows of ``episode`` train on."""
    spec = get_embodiment(episode.embodiment)
    starts = np.asarray(plan_windows(episode.length, wcfg).made, dtype=np.int64)
    if starts.size == 0 or not episode.has_action:
        return np.empty((0, spec.action_dim)), np.empty((0, spec.state_dim))
    steps_NP = starts[:, None] + np.arange(wcfg.chunk)[None, :]
    real_NP = steps_NP < episode.length
    chunks_NPD = episode.action[np.minimum(steps_NP, episode.length - 1)]
    states_ND = episode.state[starts]
    x_NPD = to_training_action(chunks_NPD, states_ND, spec)
    return x_NPD[real_NP], states_ND.astype(np.float64)


class StatsAccumulator:
    """Action and state sketches of one embodiment."""

    def __init__(self, embodiment: str, k: int = _NORM.sketch_k):
        spec = get_embodiment(embodiment)
        self.embodiment = embodiment
        self.action = QuantileSketch(spec.action_dim, k)
        self.state = QuantileSketch(spec.state_dim, k)

    def add_values(self, actions_MDa: np.ndarray, states_NDs: np.ndarray) -> StatsAccumulator:
        self.action.update(actions_MDa)
        self.state.update(states_NDs)
        return self

    def add_episode(self, episode: Episode, wcfg: WindowConfig) -> StatsAccumulator:
        if episode.embodiment != self.embodiment:
            raise ValueError(
                f"episode {episode.episode_id} is {episode.embodiment}, accumulator is {self.embodiment}"
            )
        return self.add_values(*episode_training_values(episode, wcfg))

    def add_window(self, window: Window) -> StatsAccumulator:
        if window.embodiment != self.embodiment:
            raise ValueError(
                f"window {window.sample_id} is {window.embodiment}, accumulator is {self.embodiment}"
            )
        return self.add_chunks(window.action[None], window.state[None], np.asarray([window.valid_steps]))

    def add_chunks(
        self, action_NPDa: np.ndarray, state_NDs: np.ndarray, valid_N: np.ndarray
    ) -> StatsAccumulator:
        """N windows at once: raw chunks ``[N, p, Da]``, their start states ``[N, Ds]`` and the
        real (non-padded) steps of each chunk ``[N]``; one sketch update for all of them."""
        spec = get_embodiment(self.embodiment)
        state = np.asarray(state_NDs, dtype=np.float64)
        action = np.asarray(action_NPDa, dtype=np.float64)
        if action.shape[0] == 0:
            return self
        real_NP = np.arange(action.shape[1])[None, :] < np.asarray(valid_N)[:, None]
        return self.add_values(to_training_action(action, state, spec)[real_NP], state)

    def merge(self, other: StatsAccumulator) -> StatsAccumulator:
        if other.embodiment != self.embodiment:
            raise ValueError(f"cannot merge stats of {other.embodiment} into {self.embodiment}")
        self.action.merge(other.action)
        self.state.merge(other.state)
        return self

    def to_bytes(self) -> bytes:
        a, s = self.action.to_bytes(), self.state.to_bytes()
        name = self.embodiment.encode()
        return b"".join(len(p).to_bytes(8, "little") + p for p in (name, a, s))

    @classmethod
    def from_bytes(cls, data: bytes) -> StatsAccumulator:
        parts, pos = [], 0
        for _ in range(3):
            n = int.from_bytes(data[pos : pos + 8], "little")
            parts.append(data[pos + 8 : pos + 8 + n])
            pos += 8 + n
        if pos != len(data):
            raise ValueError(
                f"stats accumulator bytes: {len(data) - pos} trailing bytes (corrupt or not ours)"
            )
        acc = cls.__new__(cls)
        acc.embodiment = parts[0].decode()
        acc.action = QuantileSketch.from_bytes(parts[1])
        acc.state = QuantileSketch.from_bytes(parts[2])
        return acc

    def finalize(self, cfg: NormConfig = _NORM) -> EmbodimentStats:
        return EmbodimentStats(self.embodiment, _dim_stats(self.action, cfg), _dim_stats(self.state, cfg))


def _dim_stats(sketch: QuantileSketch, cfg: NormConfig) -> DimStats:
    if sketch.n == 0:
        raise ValueError("no values to compute statistics from (no window was made)")
    m = sketch.moments
    lo, hi = sketch.quantiles([cfg.low_quantile, cfg.high_quantile])

    def t(v: np.ndarray) -> tuple[float, ...]:
        return tuple(float(x) for x in v)

    return DimStats(t(m.mean), t(m.std), t(m.min), t(m.max), t(lo), t(hi), count=int(sketch.n)).validate()


def raw_rows_accumulator(table: pa.Table, k: int = _NORM.sketch_k) -> StatsAccumulator:
    """The accumulator of raw sample rows of one embodiment (columns ``embodiment``,
    ``raw_action`` [p, Da], ``raw_state`` [Ds], ``valid_steps``; see
    :data:`curation.episode_samples.RAW_SCHEMA`), built in one update from the flattened
    columns. The curation job keeps one per episode and merges them in discovery order."""
    names = set(table.column("embodiment").to_pylist())
    if len(names) != 1:
        raise ValueError(f"raw rows must be of one embodiment to accumulate, got {sorted(names)}")
    (name,) = names
    spec = get_embodiment(name)
    # action-free rows (empty raw_state and action steps) are left out of the statistics
    with_action_N = pc.list_value_length(table.column("raw_state")).to_numpy(zero_copy_only=False) > 0
    table = table.filter(pa.array(with_action_N))
    n = table.num_rows
    if n == 0:
        return StatsAccumulator(name, k)
    steps = table.column("raw_action").combine_chunks()
    lengths = set(steps.value_lengths().to_pylist())
    if len(lengths) != 1:
        raise ValueError(f"raw rows of {name}: action chunks of different lengths {sorted(lengths)}")
    action = (
        steps.flatten().flatten().to_numpy(zero_copy_only=False).reshape(n, lengths.pop(), spec.action_dim)
    )
    state = table.column("raw_state").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    valid = table.column("valid_steps").to_numpy()
    return StatsAccumulator(name, k).add_chunks(action, state.reshape(n, spec.state_dim), valid)


def accumulate(
    episodes: Iterable[Episode], wcfg: WindowConfig, k: int = _NORM.sketch_k
) -> dict[str, StatsAccumulator]:
    """One accumulator per embodiment over ``episodes``."""
    out: dict[str, StatsAccumulator] = {}
    for ep in episodes:
        if not ep.has_action:  # action-free video adds nothing to the statistics
            continue
        acc = out.get(ep.embodiment) or out.setdefault(ep.embodiment, StatsAccumulator(ep.embodiment, k))
        acc.add_episode(ep, wcfg)
    return out


def compute_stats(
    episodes: Iterable[Episode], wcfg: WindowConfig, cfg: NormConfig = _NORM
) -> dict[str, EmbodimentStats]:
    """In-process convenience: ``embodiment -> EmbodimentStats`` over ``episodes``."""
    return {name: acc.finalize(cfg) for name, acc in accumulate(episodes, wcfg, cfg.sketch_k).items()}
