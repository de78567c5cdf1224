"""A tiny random ``debug`` GWP policy with synthetic normalisation statistics, for policy tests.

Nothing is trained or downloaded: the weights come from ``torch.manual_seed(seed)`` and the
per-embodiment statistics from ``numpy.random.default_rng(seed)``, so two calls with the same
arguments build the same model (the serving tests compare a served policy with one in-process).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from policy.model import GWPPolicyModel, PolicyConfig
from pretrain.config import get_model_config
from schemas import DimStats, EmbodimentSpec, EmbodimentStats


def random_stats(spec: EmbodimentSpec, rng: np.random.Generator) -> EmbodimentStats:
    """Plausible statistics for ``spec``: every dim's range is 0.5-2.5 wide around a random centre."""

    def dims(n: int) -> DimStats:
        lo = rng.normal(size=n)
        hi = lo + rng.uniform(0.5, 2.0, size=n)
        t = lambda a: tuple(float(v) for v in a)  # noqa: E731
        return DimStats(t((lo + hi) / 2), t(hi - lo), t(lo - 1), t(hi + 1), t(lo), t(hi), 100)

    return EmbodimentStats(spec.name, dims(spec.action_dim), dims(spec.state_dim))


def tiny_policy_model(specs: Sequence[EmbodimentSpec], seed: int = 0, **model: object) -> GWPPolicyModel:
    """The ``debug`` model config with ``model`` overrides (e.g. ``chunk=6``) over ``specs``."""
    torch.manual_seed(seed)
    cfg = PolicyConfig(
        model=dataclasses.replace(get_model_config("debug"), **model), embodiments=tuple(specs)
    )
    net = GWPPolicyModel(cfg)
    rng = np.random.default_rng(seed)
    net.norm_stats = {s.name: random_stats(s, rng) for s in specs}
    return net
