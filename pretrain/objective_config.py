"""Settings of the rectified-flow objective, torch-free so a command line can build and check them.

``FlowConfig`` is the noise schedule and loss weighting shared by pretraining and fine-tuning
(``pretrain/flow.py`` uses it: the shifts of the training σ for actions and video, the loss
weights λ_a and λ_v, the Euler steps at inference); ``ObjectiveConfig`` is the pretraining
objective around it (``pretrain/objective.py``: action dropout, the state token). Both are frozen
dataclasses validated on construction, each field's ``metadata["help"]`` is the help of the flag
that overrides it (:mod:`pipelines.config_flags`), and a checkpoint's copy reads back through the
strict loader (:func:`schemas.config.from_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from schemas.config import from_dict


@dataclass(frozen=True)
class FlowConfig:
    action_shift: float = field(default=5.0, metadata={"help": "action timestep shift"})
    video_shift: float = field(default=2.0, metadata={"help": "video timestep shift"})
    action_weight: float = field(default=5.0, metadata={"help": "λ_a, action loss weight"})
    video_weight: float = field(default=1.0, metadata={"help": "λ_v, video loss weight"})
    num_steps: int = field(default=10, metadata={"help": "Euler steps at inference"})

    def __post_init__(self) -> None:
        for f in ("action_shift", "video_shift"):
            if not getattr(self, f) > 0:
                raise ValueError(f"FlowConfig: {f} must be > 0, got {getattr(self, f)}")
        for f in ("action_weight", "video_weight"):
            if not getattr(self, f) >= 0:
                raise ValueError(f"FlowConfig: {f} must be ≥ 0, got {getattr(self, f)}")
        if self.num_steps < 1:
            raise ValueError(f"FlowConfig: num_steps must be ≥ 1, got {self.num_steps}")


@dataclass(frozen=True)
class ObjectiveConfig:
    flow: FlowConfig = field(default_factory=FlowConfig)
    action_dropout: float = field(
        default=0.1, metadata={"help": "probability of hiding the actions of a sample that has them"}
    )
    use_state: bool = field(default=True, metadata={"help": "put the (masked) state token into C"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.action_dropout <= 1.0:
            raise ValueError(f"ObjectiveConfig: action_dropout must be in [0, 1], got {self.action_dropout}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectiveConfig:
        return from_dict(cls, d, "ObjectiveConfig")
