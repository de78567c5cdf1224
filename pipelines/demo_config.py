"""The demo's settings: what data, which model and training recipe, how much evaluation, per preset
(``gwp demo --preset NAME``); typed and frozen, in one registry."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from curation.config import CurationConfig, VideoCodec, get_preset
from pretrain.config import get_model_config
from pretrain.run_config import get_train_config
from schemas.config import ConfigError, check_choices
from schemas.registry import Registry


@dataclass(frozen=True)
class DemoTraining:
    """Both trainings of the demo: the pretraining, then the two fine-tunes (λ_v = 1 and 0)."""

    model: str = "debug"  # model preset (pretrain/config.py)
    train_preset: str = "demo"  # train preset (pretrain/run_config.py), both trainings
    pretrain_steps: int = 200
    finetune_steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    heldout_fraction: float = 0.1  # of the fine-tune's episodes, for its held-out loss and open-loop eval
    eval_every: int | None = 500  # fine-tune steps between held-out evaluations (None: only at the end)

    def __post_init__(self) -> None:
        # a misspelt preset fails when the demo starts, with the registry's "did you mean", not an hour in
        get_model_config(self.model)
        get_train_config(self.train_preset)
        for name in ("pretrain_steps", "finetune_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError("DemoTraining", name, f"must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.heldout_fraction < 1:
            raise ConfigError(
                "DemoTraining", "heldout_fraction", f"must be in [0, 1), got {self.heldout_fraction}"
            )

    def finetune_args(self) -> list[str]:
        every = [] if self.eval_every is None else ["--eval-every", str(self.eval_every)]
        return ["--heldout-fraction", str(self.heldout_fraction), *every]


@dataclass(frozen=True)
class DemoConfig:
    name: str
    tasks: tuple[str, ...]
    episodes_per_task: int  # per source format (two formats → twice as many demonstrations)
    image_size: int
    codec: VideoCodec = "h264"  # of the LeRobot v3.0 half: the codec the RLDS half was converted from, too
    curation: CurationConfig = field(default_factory=lambda: get_preset("debug"))  # the job's "curation"
    chunk: int | None = field(
        default=None,
        metadata={
            "help": "action chunk P of the curated windows, hence of the policy (none: the curation's own, "
            "8 in the 64-pixel presets); asynchronous execution at delay d needs P >= 2d"
        },
    )
    train: DemoTraining = field(default_factory=DemoTraining)
    eval_episodes: int = field(default=50, metadata={"help": "closed-loop episodes per task and policy"})
    replan_every: int = 4
    eval_max_steps: int = 200
    workers: int = 2
    threads: int = 1  # torch threads per training process: more spin against other work (BENCHMARKS.md)
    openloop_samples: int = 256  # held-out samples in the open-loop evaluation
    pretrain_video_tasks: tuple[str, ...] = field(
        default=(),
        metadata={"help": "more Meta-World tasks whose video, without actions, only pretraining sees"},
    )
    pretrain_video_episodes: int = field(
        default=10, metadata={"help": "expert episodes per pretrain_video_tasks task (video only)"}
    )

    def __post_init__(self) -> None:
        check_choices(self, f"demo preset {self.name!r}")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError("DemoConfig", "chunk", f"must be >= 1, got {self.chunk}")
        if self.pretrain_video_episodes < 1:
            raise ConfigError(
                "DemoConfig", "pretrain_video_episodes", f"must be >= 1, got {self.pretrain_video_episodes}"
            )
        overlap = sorted(set(self.pretrain_video_tasks) & set(self.tasks))
        if overlap:  # the policy's own tasks have their demonstrations, with actions, already
            raise ConfigError(
                "DemoConfig", "pretrain_video_tasks", f"{overlap} are the policy's tasks already"
            )

    def curation_config(self) -> CurationConfig:
        """The curation job's settings: ``curation`` with ``chunk``, when set, as its windows' chunk.
        The model's chunk is not configured anywhere else: pretraining and fine-tuning read it
        from the curated rows."""
        if self.chunk is None:  # unset: the job is byte for byte the preset's (its stage markers hold)
            return self.curation
        return replace(self.curation, windows=replace(self.curation.windows, chunk=self.chunk))


# The default recipe; its wall time and held-out success rates are in BENCHMARKS.md, "The demo".
# Fine-tunes of a fifth of its steps left the policy undertrained.
PRESETS: Registry[DemoConfig] = Registry("demo preset")
_DEBUG = get_preset("debug")
# the curation of the 64-pixel presets: 8-action chunks, two future frames 4 steps apart
_CURATION_64 = replace(
    _DEBUG,
    windows=replace(_DEBUG.windows, chunk=8, frame_stride=4, num_future=2, stride=2),
    video=replace(_DEBUG.video, width=64, height=64),
)
PRESETS.register(
    "default",
    DemoConfig(
        name="default",
        tasks=("drawer-open-v3", "button-press-topdown-v3"),
        episodes_per_task=30,
        image_size=64,
        curation=_CURATION_64,
    ),
)
PRESETS.register(
    "smoke",
    DemoConfig(
        name="smoke",
        tasks=("drawer-open-v3", "button-press-topdown-v3"),
        episodes_per_task=2,
        image_size=64,
        train=DemoTraining(
            train_preset="debug",
            pretrain_steps=4,
            finetune_steps=4,
            batch_size=4,
            lr=3e-4,
            heldout_fraction=0.25,
            eval_every=None,
        ),
        # one seed per task, but long enough for the scripted expert (60-95 steps on these tasks):
        # with fewer, every policy scores 0 and the comparison orders nothing
        eval_episodes=1,
        eval_max_steps=120,
        workers=1,
        openloop_samples=16,
    ),
)
# The smallest run found whose GWP policy beats random in closed loop (tests/e2e/test_demo.py
# asserts expert > GWP > random on it): one easy task, a few hundred fine-tune steps; the λ_v = 0
# fine-tune runs beside it on the other core.
PRESETS.register(
    "ordering",
    DemoConfig(
        name="ordering",
        tasks=("button-press-topdown-v3",),
        episodes_per_task=5,
        image_size=64,
        curation=_CURATION_64,
        train=DemoTraining(
            train_preset="demo",
            pretrain_steps=20,
            finetune_steps=300,
            batch_size=16,
            lr=1e-3,
            heldout_fraction=0.1,
            eval_every=None,
        ),
        eval_episodes=6,
        eval_max_steps=150,
        workers=2,
        openloop_samples=16,
    ),
)


# DemoConfig fields a flag may override
DEMO_FLAGS = ("eval_episodes", "pretrain_video_tasks", "pretrain_video_episodes", "chunk")


def get_demo_config(name: str) -> DemoConfig:
    """The preset called ``name``; an unknown one is the registries' ``UnknownNameError``."""
    return PRESETS.get(name)
