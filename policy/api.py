"""The deployable policy: raw observation in, actions in the robot's own units out.

::

    policy = Policy.from_pretrained("owner/gwp-policy")          # or a local folder
    actions_PDa = policy.predict_action({
        "images": {"high": img_HW3, "wrist": img2_HW3},          # uint8 RGB per camera role
        "state": state_Ds,                                        # the robot's raw state
        "instruction": "open the drawer",
        "embodiment": "metaworld_sawyer",                          # optional with one embodiment
    })
    out = policy.predict(obs, with_video=True)                    # + out.frames_KHW3 (uint8)

What happens to an observation (each step the inverse or the twin of what curation did):

1. the camera views are composed into one image exactly as curation's stage 5
   (:func:`schemas.compose.compose_views` at the dataset's width × height and fit,
   stored in the policy config), scaled to [-1, 1] and encoded by the policy's codec;
2. the state is normalised with the dataset's statistics (``norm_stats.json``) and padded to 32;
3. the instruction becomes token states and a mask from the text encoder the dataset used (its
   identity is in the policy config: the hashed word tokens, or umT5), zero-padded to the
   model's text width; the encoder is built when the policy is, so weights that cannot be had
   fail at start-up, and each instruction is encoded once and cached;
4. actions are sampled (action-only, cached context, 10 Euler steps), then de-normalised with
   :func:`schemas.normalize.denormalize_action`, which adds the current state back to
   delta dims; ``with_video`` samples jointly and decodes the K future frames.

Bad input fails before the model runs: a missing or unknown camera, a wrong image type or
shape, an image with a side under ``MIN_IMAGE_SIDE`` pixels (0×0, 1×1: no scene to act on), a
state of the wrong size or with NaN, an unknown embodiment, an empty instruction. Actions that
come out NaN or infinite (broken weights, an overflow in low precision) raise
:class:`PredictionError` instead of reaching the robot.

**Precision**: ``Policy.from_pretrained(..., dtype=torch.bfloat16)`` serves the transformer in
bf16; its fp32-critical parts (time embedding, modulation, norms) stay float32
(``pretrain/model.py``), noise and the Euler integration stay float32, the codec is untouched.
Padded action dims are masked in the sampler with the embodiment's valid dims
(:mod:`policy.inference`), as in training.

**Compiled sampling**: ``Policy(..., compile=True)`` (or ``from_pretrained(..., compile=True)``)
runs each action-only Euler step as one ``torch.compile`` graph (:class:`policy.inference.CompiledStep`:
CUDA graphs on CUDA, inductor's default mode on CPU; a mode name instead of ``True`` picks
another). It compiles on the first prediction — seconds to minutes, so serve a warm-up request
first — and again only for a new input shape (another batch size, a new instruction length; after
the first such change dynamo makes that size dynamic). Joint (``with_video``) and guided
(real-time chunking) sampling stay eager. On CPU inductor needs a C++ compiler (``g++``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from policy.inference import CompiledStep, Context, Guide, default_compile_mode, sample_actions, sample_joint
from policy.model import GWPPolicyModel
from pretrain.objective import text_states
from pretrain.pixels import tensor_to_uint8, tensor_to_unit_range
from pretrain.text_encoder import text_encoder_from_config
from schemas import EmbodimentSpec, EmbodimentStats
from schemas.compose import compose_views
from schemas.embodiment import MAX_DIM
from schemas.normalize import denormalize_action, normalize_action, normalize_state

# smaller camera images carry no usable view (0×0 is empty, 1×1 one colour): refused, not upscaled
MIN_IMAGE_SIDE = 8
_TEXT_CACHE_SIZE = 256  # instructions kept encoded; a robot's task set is far smaller


class ObservationError(ValueError):
    """The observation does not fit the policy; the message says which part and why."""


class PredictionError(RuntimeError):
    """The model produced actions that must not be sent to a robot (NaN or infinite values)."""


@dataclass(frozen=True)
class Prediction:
    actions_PDa: np.ndarray  # float32, robot units
    frames_KHW3: np.ndarray | None  # uint8 predicted future composed frames (with_video)


class Policy:
    def __init__(
        self,
        model: GWPPolicyModel,
        device: str | torch.device = "cpu",
        num_steps: int | None = None,
        dtype: torch.dtype | None = None,
        compile: bool | str = False,
    ):
        if not model.norm_stats:
            raise ValueError("Policy: the model carries no normalisation statistics (norm_stats.json)")
        missing = [s.name for s in model.cfg.embodiments if s.name not in model.norm_stats]
        if missing:
            raise ValueError(f"Policy: no normalisation statistics for embodiments {missing}")
        if not model.cfg.embodiments:
            raise ValueError("Policy: the model config lists no embodiments")
        if dtype is not None and dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"Policy: dtype must be torch.float32, bfloat16 or float16, got {dtype}")
        self.model = model.to(device).eval()
        if dtype is not None:
            self.model.transformer.to(dtype)  # the codec keeps its own precision
        self.device = torch.device(device)
        self.num_steps = num_steps or model.cfg.flow.num_steps
        if compile is True:
            compile = default_compile_mode(self.device)
        self.compiled_step = CompiledStep(compile) if compile else None  # a bad mode name fails here
        self.text_encoder = text_encoder_from_config(model.cfg.text)
        if hasattr(self.text_encoder, "to"):  # umT5 runs where the model runs
            self.text_encoder.to(self.device)
        self._text_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        revision: str | None = None,
        *,
        device: str | torch.device = "cpu",
        num_steps: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | None = None,
        dtype: torch.dtype | None = None,
        compile: bool | str = False,
    ) -> Policy:
        """Load a folder written by ``GWPPolicyModel.save_pretrained`` (or the fine-tune export),
        or a Hub model repo id at ``revision``; ``dtype`` (e.g. ``torch.bfloat16``) is the
        transformer's serving precision (None: as saved, float32); ``compile``: compiled
        action-only steps (module docstring)."""
        model = GWPPolicyModel.from_pretrained(
            path_or_repo_id, revision=revision, cache_dir=cache_dir, token=token, device="cpu"
        )
        return cls(model, device=device, num_steps=num_steps, dtype=dtype, compile=compile)

    @property
    def embodiments(self) -> list[str]:
        return [s.name for s in self.model.cfg.embodiments]

    # ------------------------------------------------------------ observation → model inputs

    def _spec(self, obs: Mapping[str, Any]) -> EmbodimentSpec:
        name = obs.get("embodiment")
        if name is None:
            if len(self.embodiments) != 1:
                raise ObservationError(
                    f"observation: 'embodiment' is required, this policy serves {self.embodiments}"
                )
            name = self.embodiments[0]
        try:
            return self.model.cfg.embodiment(str(name))
        except KeyError:
            raise ObservationError(
                f"observation: unknown embodiment {name!r}; this policy was trained on {self.embodiments}"
            ) from None

    def _image(self, obs: Mapping[str, Any], spec: EmbodimentSpec) -> np.ndarray:
        images = obs.get("images")
        if not isinstance(images, Mapping) or not images:
            raise ObservationError(
                "observation: 'images' must be a non-empty dict {camera role: HxWx3 uint8}"
            )
        missing = [r for r in spec.cameras if r not in images]
        if missing:
            raise ObservationError(
                f"observation: missing camera(s) {missing} of embodiment {spec.name!r} "
                f"(expects {list(spec.cameras)}, got {sorted(images)})"
            )
        extra = sorted(set(images) - set(spec.cameras))
        if extra:
            raise ObservationError(
                f"observation: camera(s) {extra} are not cameras of embodiment {spec.name!r} "
                f"(expects {list(spec.cameras)})"
            )
        views = {}
        for role, img in images.items():
            a = np.asarray(img)
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
                raise ObservationError(
                    f"observation: image {role!r} must be uint8 [H, W, 3] RGB, got {a.dtype} {list(a.shape)}"
                )
            if min(a.shape[:2]) < MIN_IMAGE_SIDE:
                raise ObservationError(
                    f"observation: image {role!r} is {a.shape[1]}×{a.shape[0]} pixels; each side must be "
                    f"at least {MIN_IMAGE_SIDE}"
                )
            views[role] = a[None]
        ic = self.model.cfg.image
        return compose_views(views, ic.width, ic.height, ic.fit)[0]

    def _state(self, obs: Mapping[str, Any], spec: EmbodimentSpec) -> np.ndarray:
        if "state" not in obs:
            raise ObservationError(
                f"observation: 'state' is required ({spec.state_dim} values for {spec.name!r})"
            )
        s = np.asarray(obs["state"], dtype=np.float64)
        if s.ndim != 1 or s.shape[0] != spec.state_dim:
            raise ObservationError(
                f"observation: state of {spec.name!r} must have shape [{spec.state_dim}] "
                f"({', '.join(spec.state_names)}), got {list(s.shape)}"
            )
        if not np.isfinite(s).all():
            raise ObservationError(f"observation: state has NaN/inf values: {s.tolist()}")
        return s

    def embed_instruction(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(states [1, L, T] in the model's dtype, mask [1, L] or None)`` as the dataset embedded it;
        cached. L is this instruction's own length, so every token is valid and the mask is None
        (the unmasked attention kernel, the same whatever the number of queries)."""
        if text in self._text_cache:
            self._text_cache.move_to_end(text)
            return self._text_cache[text]
        states_1LE, mask_1L = self.text_encoder.encode([text])
        tc = self.model.cfg.text
        if states_1LE.shape[-1] != tc.dim:
            raise ValueError(
                f"text encoder {self.text_encoder.identity} gives {states_1LE.shape[-1]} dims, the dataset "
                f"stored {tc.dim}"
            )
        batch = {"text_states": torch.from_numpy(states_1LE), "text_mask": torch.from_numpy(mask_1L)}
        text_1LT, mask_1L_t = text_states(batch, self.model.cfg.model.text_dim, self.device)
        mask = None if mask_1L.all() else mask_1L_t
        self._text_cache[text] = (text_1LT.to(self.model.transformer.dtype), mask)
        while len(self._text_cache) > _TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return self._text_cache[text]

    def prepare(self, obs: Mapping[str, Any]) -> tuple[Context, EmbodimentSpec, np.ndarray]:
        """``(model-space context, embodiment spec, raw state)`` of one observation."""
        if not isinstance(obs, Mapping):
            raise ObservationError(f"observation must be a dict, got {type(obs).__name__}")
        spec = self._spec(obs)
        state = self._state(obs, spec)
        image_HW3 = self._image(obs, spec)
        text = obs.get("instruction")
        if not isinstance(text, str) or not text.strip():
            raise ObservationError("observation: 'instruction' must be a non-empty string")
        stats: EmbodimentStats = self.model.norm_stats[spec.name]
        state32, _ = normalize_state(state, spec, stats, self.model.cfg.norm)
        dev, dtype = self.device, self.model.transformer.dtype
        frames = tensor_to_unit_range(torch.from_numpy(image_HW3).to(dev))
        obs_latent = self.model.encode_frames(frames.permute(2, 0, 1)[None, :, None])
        text_1LT, text_mask_1L = self.embed_instruction(text)
        ctx = Context(
            obs_latent_BC1hw=obs_latent,
            state_B32=torch.from_numpy(state32).to(dev, dtype)[None],
            embodiment_id_B=torch.tensor([spec.id], device=dev),
            text_BLD=text_1LT,
            text_mask_BL=text_mask_1L,
            action_mask_B32=torch.from_numpy(self._action_mask(spec)).to(dev)[None],
        )
        return ctx, spec, state

    # ------------------------------------------------------------ prediction

    def _generator(self, seed: int | None) -> torch.Generator | None:
        return None if seed is None else torch.Generator(device=self.device).manual_seed(seed)

    @staticmethod
    def _action_mask(spec: EmbodimentSpec) -> np.ndarray:
        """[32] bool: the padded dims the embodiment uses."""
        return np.arange(MAX_DIM) < spec.action_dim

    def _to_robot(self, actions_1P32: torch.Tensor, state: np.ndarray, spec: EmbodimentSpec) -> np.ndarray:
        stats = self.model.norm_stats[spec.name]
        y = actions_1P32[0].float().cpu().numpy()
        out = denormalize_action(y, state, spec, stats, self.model.cfg.norm)
        if not np.isfinite(out).all():
            bad = sorted({int(i) for i in np.argwhere(~np.isfinite(out))[:, 1]})
            raise PredictionError(
                f"policy produced non-finite actions (NaN/inf) for embodiment {spec.name!r} in dims "
                f"{[spec.action_names[i] for i in bad]}; refusing to return them (check the weights, "
                f"and the serving dtype {self.model.transformer.dtype})"
            )
        return out

    def _sample_actions(
        self,
        ctx: Context,
        *,
        seed: int | None = None,
        action_noise_BP32: torch.Tensor | None = None,
        guide: Guide | None = None,
    ) -> torch.Tensor:
        """Action-only decoding ``[B, p, 32]`` (normalised) at the policy's steps and shift; the noise
        comes from ``action_noise_BP32`` when given, else from ``seed``."""
        return sample_actions(
            self.model.transformer,
            ctx,
            num_steps=self.num_steps,
            shift=self.model.cfg.flow.action_shift,
            action_noise_BP32=action_noise_BP32,
            generator=self._generator(seed),
            guide=guide,
            step_fn=self.compiled_step if guide is None else None,  # guided sampling differentiates: eager
        )

    def predict_action(self, observation: Mapping[str, Any], *, seed: int | None = None) -> np.ndarray:
        """float32 ``[p, Da]`` actions in the robot's units (action-only decoding)."""
        ctx, spec, state = self.prepare(observation)
        return self._to_robot(self._sample_actions(ctx, seed=seed), state, spec)

    def predict_action_guided(
        self,
        observation: Mapping[str, Any],
        prev_actions: np.ndarray,
        delay: int,
        *,
        schedule: str = "exp",
        max_guidance_weight: float = 5.0,
        seed: int | None = None,
    ) -> np.ndarray:
        """Real-time chunking: ``[p, Da]`` actions that continue ``prev_actions``.

        ``prev_actions`` ``[p − s, Da]`` (robot units) are the old chunk's actions from the step
        this observation was taken on; the first ``delay`` of them run while this inference does,
        so the returned chunk starts with them exactly, and the rest of the overlap is guided
        toward them (:mod:`policy.execution`, :class:`policy.inference.Guide`).
        """
        from policy.execution import prefix_weights

        ctx, spec, state = self.prepare(observation)
        P = self.model.cfg.model.chunk
        prev = np.asarray(prev_actions, dtype=np.float64)
        if prev.ndim != 2 or prev.shape[1] != spec.action_dim or not 1 <= prev.shape[0] < P:
            raise ObservationError(
                f"observation: prev_actions must have shape [q, {spec.action_dim}] with 1 <= q < {P} "
                f"(the old chunk's remaining actions), got {list(prev.shape)}"
            )
        if not np.isfinite(prev).all():
            raise ObservationError("observation: prev_actions has NaN/inf values")
        if not 0 <= delay <= prev.shape[0]:
            raise ObservationError(
                f"observation: inference delay must be in [0, {prev.shape[0]}] (the old chunk's "
                f"remaining actions), got {delay}"
            )
        stats = self.model.norm_stats[spec.name]
        y, mask = normalize_action(prev, state, spec, stats, self.model.cfg.norm)
        q = prev.shape[0]
        target = torch.zeros(1, P, y.shape[-1])
        target[0, :q] = torch.from_numpy(y)
        w = prefix_weights(P, delay, P - q, schedule)  # type: ignore[arg-type]
        weights = torch.from_numpy(w)[None, :, None] * torch.from_numpy(mask.astype(np.float32))[None, None]
        guide = Guide(target.to(self.device), weights.to(self.device), max_guidance_weight)
        out = self._to_robot(self._sample_actions(ctx, seed=seed, guide=guide), state, spec)
        out[:delay] = prev[:delay]
        return out

    def reseed(self, seed: int) -> None:
        """Seed the global torch RNG the next ``predict_action`` draws its noise from."""
        torch.manual_seed(seed)

    def predict_action_batch(
        self, observations: list[Mapping[str, Any]], seeds: list[int]
    ) -> list[np.ndarray]:
        """One batched action-only pass for several observations (each with its own noise seed)."""
        if len(seeds) != len(observations):
            raise ValueError(f"predict_action_batch: {len(observations)} observations but {len(seeds)} seeds")
        prepared = [self.prepare(o) for o in observations]
        cfg = self.model.cfg.model
        ctx = Context(
            obs_latent_BC1hw=torch.cat([p[0].obs_latent_BC1hw for p in prepared]),
            state_B32=torch.cat([p[0].state_B32 for p in prepared]),
            embodiment_id_B=torch.cat([p[0].embodiment_id_B for p in prepared]),
            **_stack_text([p[0] for p in prepared]),
            action_mask_B32=torch.cat([p[0].action_mask_B32 for p in prepared]),
        )
        noise = torch.stack(
            [
                torch.randn(cfg.chunk, cfg.action_dim, generator=self._generator(s), device=self.device)
                for s in seeds
            ]
        )
        a = self._sample_actions(ctx, action_noise_BP32=noise)
        return [self._to_robot(a[i : i + 1], st, sp) for i, (_, sp, st) in enumerate(prepared)]

    def predict(
        self, observation: Mapping[str, Any], with_video: bool = True, *, seed: int | None = None
    ) -> Prediction:
        """Actions, and with ``with_video`` the predicted future frames ``[K, H, W, 3]`` uint8."""
        if not with_video:
            return Prediction(self.predict_action(observation, seed=seed), None)
        ctx, spec, state = self.prepare(observation)
        fc = self.model.cfg.flow
        a, v = sample_joint(
            self.model.transformer,
            ctx,
            num_steps=self.num_steps,
            action_shift=fc.action_shift,
            video_shift=fc.video_shift,
            generator=self._generator(seed),
        )
        with torch.no_grad():
            fut = self.model.cfg.model.video_future(
                ctx.obs_latent_BC1hw, v
            )  # residual: observation added back
            frames = self.model.decode_future(
                ctx.obs_latent_BC1hw, fut
            )  # [1, 3, F, H, W]; the codec keeps its own precision
        u8 = tensor_to_uint8(frames[0])
        return Prediction(self._to_robot(a, state, spec), u8.permute(1, 2, 3, 0).cpu().numpy())


def _stack_text(contexts: list[Context]) -> dict[str, torch.Tensor | None]:
    """The contexts' text states and masks as one batch, padded to the longest instruction."""
    L = max(c.text_BLD.shape[1] for c in contexts)
    if all(c.text_BLD.shape[1] == L and c.text_mask_BL is None for c in contexts):
        return {"text_BLD": torch.cat([c.text_BLD for c in contexts]), "text_mask_BL": None}
    states, masks = [], []
    for c in contexts:
        n = c.text_BLD.shape[1]
        mask_1n = c.text_mask_BL if c.text_mask_BL is not None else torch.ones(1, n, dtype=torch.bool)
        states.append(F.pad(c.text_BLD, (0, 0, 0, L - n)))
        masks.append(F.pad(mask_1n.to(c.text_BLD.device), (0, L - n)))
    return {"text_BLD": torch.cat(states), "text_mask_BL": torch.cat(masks)}
