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
3. the instruction is embedded the way the dataset embedded it (hashed fallback or the CLIP
   text tower named in the config) and zero-padded to the model's text width;
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
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from policy.inference import Context, sample_actions, sample_joint
from policy.model import GWPPolicyModel, text_tokens
from pretrain.pixels import tensor_to_uint8, tensor_to_unit_range
from schemas import EmbodimentSpec, EmbodimentStats
from schemas.compose import compose_views
from schemas.embodiment import MAX_DIM
from schemas.normalize import denormalize_action, normalize_state

# smaller camera images carry no usable view (0×0 is empty, 1×1 one colour): refused, not upscaled
MIN_IMAGE_SIDE = 8


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
        self._captioner: Any = None

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
    ) -> Policy:
        """Load a folder written by ``GWPPolicyModel.save_pretrained`` (or the fine-tune export),
        or a Hub model repo id at ``revision``; ``dtype`` (e.g. ``torch.bfloat16``) is the
        transformer's serving precision (None: as saved, float32)."""
        model = GWPPolicyModel.from_pretrained(
            path_or_repo_id, revision=revision, cache_dir=cache_dir, token=token, device="cpu"
        )
        return cls(model, device=device, num_steps=num_steps, dtype=dtype)

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

    def embed_instruction(self, text: str) -> np.ndarray:
        """[E] float32, as the dataset embedded it."""
        tc = self.model.cfg.text
        if tc.kind == "fallback":
            from schemas.text import text_embedding_fallback

            return text_embedding_fallback([text], tc.dim)[0]
        if self._captioner is None:
            from pretrain.text_encoder import Captioner, CaptionerSettings

            self._captioner = Captioner(
                CaptionerSettings(model=tc.model, pretrained=tc.pretrained, captions=False, seed=tc.seed)
            )
        emb = self._captioner.embed_text([text])[0]
        if emb.shape[0] != tc.dim:
            raise ValueError(
                f"text encoder {tc.model} gives {emb.shape[0]} dims, the dataset stored {tc.dim}"
            )
        return emb

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
        emb = torch.from_numpy(self.embed_instruction(text)).to(dev)[None]
        ctx = Context(
            obs_latent_BC1hw=obs_latent,
            state_B32=torch.from_numpy(state32).to(dev, dtype)[None],
            embodiment_id_B=torch.tensor([spec.id], device=dev),
            text_BLD=text_tokens(emb.float(), self.model.cfg.model.text_dim).to(dtype),
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

    def predict_action(self, observation: Mapping[str, Any], *, seed: int | None = None) -> np.ndarray:
        """float32 ``[p, Da]`` actions in the robot's units (action-only decoding)."""
        ctx, spec, state = self.prepare(observation)
        fc = self.model.cfg.flow
        a = sample_actions(
            self.model.transformer,
            ctx,
            num_steps=self.num_steps,
            shift=fc.action_shift,
            generator=self._generator(seed),
        )
        return self._to_robot(a, state, spec)

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
            text_BLD=torch.cat([p[0].text_BLD for p in prepared]),
            action_mask_B32=torch.cat([p[0].action_mask_B32 for p in prepared]),
        )
        noise = torch.stack(
            [
                torch.randn(cfg.chunk, cfg.action_dim, generator=self._generator(s), device=self.device)
                for s in seeds
            ]
        )
        a = sample_actions(
            self.model.transformer,
            ctx,
            num_steps=self.num_steps,
            shift=self.model.cfg.flow.action_shift,
            action_noise_BP32=noise,
        )
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
            v = self.model.cfg.model.video_future(ctx.obs_latent_BC1hw, v)
            frames = self.model.codec.decode(v)  # [1, 3, K, H, W]; the codec keeps its own precision
        u8 = tensor_to_uint8(frames[0])
        return Prediction(self._to_robot(a, state, spec), u8.permute(1, 2, 3, 0).cpu().numpy())
