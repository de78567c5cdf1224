"""Meta-World v3 (MuJoCo, Sawyer arm) as a source of demonstrations and a closed-loop test bed.

Design (facts measured with Meta-World 3.1.1):

* **Fresh goal per seed.** Each task otherwise cycles through 50 fixed goal variations; with
  ``_freeze_rand_vec = False`` and ``seeded_rand_vec = True`` the goal is drawn from the env's
  own ``np_random``, which ``env.seed(s)`` resets before ``reset()``. The MuJoCo data is
  reset too (``mj_resetData``), so one simulator reused across seeds gives the same episode
  as a fresh one: same task + seed → bit-identical episode.
* **Observations.** The 39-dim vector carries the goal (``obs[36:39]``) and a copy of the
  previous frame (``obs[18:36]``); a policy must not see them. The state recorded and
  given to policies is the proprioceptive part ``obs[:4]`` (hand xyz in metres, gripper
  opening in [0, 1]); the goal has to come from the images. The full vector is used only
  by the scripted experts (``metaworld.policies``), which need the goal.
* **Actions.** Experts emit up to ~2.8; the env clips to its action space [−1, 1]. We clip
  first and record the clipped action, which is what the robot did.
* **Rate.** One env step = ``frame_skip`` (5) × ``timestep`` (2.5 ms) = 12.5 ms → 80 Hz,
  the embodiment ``metaworld_sawyer``'s control rate (checked, not assumed).
* **Rendering.** ``env.render()`` (gymnasium's viewer, multisampled, shadows, reflections,
  one camera per env) is much slower than one :class:`mujoco.Renderer` per simulator with
  offscreen multisampling, shadows and reflections off (BENCHMARKS.md, "Simulation"). Two
  roles: ``high`` = a fixed third-person camera (default ``corner``), ``wrist`` =
  ``gripperPOV``. The corner cameras are rolled 180° in the model (``corner``'s image y
  axis points down in the world: ``xyaxes="-1 1 0 -0.2 -0.2 -1"``), so a world-fixed
  camera whose y axis has a negative world z is rotated by 180° (both axes flipped — a
  rotation, not a mirror). The result equals MuJoCo's free camera (always upright) placed
  at the same pose, pixel for pixel (tested).
* **Headless.** ``MUJOCO_GL`` must be chosen before ``mujoco`` is imported: the package
  ``policy.envs`` sets ``egl`` when unset (``osmesa`` when no EGL library is found). Debian packages:
  ``libegl1 libgl1 libgl1-mesa-dri libgbm1`` (EGL) or ``libosmesa6`` (OSMesa).

Shapes: ``state [T, 4] float32``, ``action [T, 4] float32``, images ``[T, H, W, 3] uint8``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.metadata
import json
import os
import warnings
import weakref
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import mujoco
import numpy as np

from policy.envs import MUJOCO_IMPORTED_FIRST
from schemas import Episode, FrameRef, episode_id_for, get_embodiment

EMBODIMENT = "metaworld_sawyer"
SOURCE = "metaworld_sim"
STATE_DIM = 4  # obs[:4]: hand xyz + gripper opening
ROLES = ("high", "wrist")

# One plain-English instruction per v3 task (the text the policy is conditioned on).
TASK_INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "put the ring on the peg",
    "basketball-v3": "dunk the basketball into the basket",
    "bin-picking-v3": "pick the cube from one bin and place it in the other bin",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top behind the wall",
    "button-press-v3": "press the button",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "take the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-close-v3": "turn the faucet handle to close the faucet",
    "faucet-open-v3": "turn the faucet handle to open the faucet",
    "hammer-v3": "hammer the nail into the wall",
    "hand-insert-v3": "insert the gripper into the hole",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "pick-out-of-hole-v3": "pick the peg out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "plate-slide-back-side-v3": "slide the plate back into the cabinet from the side",
    "plate-slide-back-v3": "slide the plate back into the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-v3": "slide the plate into the cabinet",
    "push-back-v3": "push the puck back to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck to the goal behind the wall",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "reach the goal position behind the wall",
    "shelf-place-v3": "pick up the puck and place it on the shelf",
    "soccer-v3": "kick the ball into the goal",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "stick-push-v3": "grasp the stick and push the box with it",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-close-v3": "close the window",
    "window-open-v3": "open the window",
}


@dataclass(frozen=True)
class MetaWorldConfig:
    """How one simulator is built and one expert episode is recorded."""

    task: str = "drawer-open-v3"
    image_size: int = 128  # square H = W of every camera
    high_camera: str = "corner"  # third-person camera for role "high"
    wrist_camera: str = "gripperPOV"  # camera for role "wrist"
    max_steps: int = 500  # the env's own episode limit (max_path_length)
    steps_after_success: int = 8  # frames kept after the first success, then stop
    fast_render: bool = True  # False: no multisampling/shadow/reflection switch-off (baseline)

    def __post_init__(self) -> None:
        if self.task not in TASK_INSTRUCTIONS:
            raise ValueError(f"unknown Meta-World task {self.task!r}; {_did_you_mean(self.task)}")
        if not 16 <= self.image_size <= 480:
            raise ValueError(f"image_size must be in [16, 480], got {self.image_size}")
        if not 1 <= self.max_steps <= 500:
            raise ValueError(f"max_steps must be in [1, 500] (the env's limit), got {self.max_steps}")
        if self.steps_after_success < 0:
            raise ValueError(f"steps_after_success must be >= 0, got {self.steps_after_success}")

    @property
    def cameras(self) -> dict[str, str]:
        """Role -> MuJoCo camera name."""
        return {"high": self.high_camera, "wrist": self.wrist_camera}


def _did_you_mean(task: str) -> str:
    from schemas.registry import closest

    close = closest(task, TASK_INSTRUCTIONS, n=1)
    return f"did you mean {close[0]!r}?" if close else f"known tasks: {', '.join(sorted(TASK_INSTRUCTIONS))}"


def _check_task(task: str) -> str:
    if task not in TASK_INSTRUCTIONS:
        raise ValueError(f"unknown Meta-World task {task!r}; {_did_you_mean(task)}")
    return task


def make_env(task: str, seed: int, **env_kwargs: Any) -> Any:
    """A Meta-World v3 env for ``task`` with a fresh goal per seed, seeded, ready for ``reset()``.

    ``env_kwargs`` go to the env constructor (``render_mode``, ``camera_name``, ``width``,
    ``height`` for gymnasium's ``env.render()``). The goal is observable (``obs[36:39]``), as
    the scripted experts need it.
    """
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = ALL_V3_ENVIRONMENTS[_check_task(task)](**env_kwargs)
    env._partially_observable = False
    # cached_property computed in __init__ with the goal hidden; recompute with it visible
    env.__dict__.pop("sawyer_observation_space", None)
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    env._set_task_called = True
    env.seed(int(seed))
    return env


def expert_policy(task: str) -> Any:
    """Meta-World's scripted expert for ``task``: ``.get_action(obs39) -> action[4]`` (unclipped)."""
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP[_check_task(task)]()


def control_hz(env: Any) -> float:
    """Steps per second of ``env``: 1 / (MuJoCo timestep × frame_skip)."""
    return 1.0 / (float(env.model.opt.timestep) * int(env.frame_skip))


def _is_upside_down(model: mujoco.MjModel, camera: str) -> bool:
    """A camera fixed in the world whose image y axis points down (world z < 0) is rolled 180°.

    Meta-World's ``corner``…``corner4`` are; cameras on moving bodies (``gripperPOV``) are
    left as they are, so their images never flip mid-episode.
    """
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    up_world = model.cam_mat0[cam].reshape(3, 3)[:, 1]  # camera y axis in its body (world) frame
    return bool(model.cam_bodyid[cam] == 0 and up_world[2] < 0)


# Renderers still open at exit are closed before EGL is torn down (otherwise mujoco's own
# __del__ prints EGL errors on the way out). mujoco registers eglTerminate with atexit when
# it creates its first context, so ours is registered after that: atexit runs it first.
_LIVE_RENDERERS: weakref.WeakSet[FastRenderer] = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_live_renderers() -> None:
    for renderer in list(_LIVE_RENDERERS):
        with contextlib.suppress(Exception):
            renderer.close()


class FastRenderer:
    """Offscreen renderer of several named cameras at one square size.

    One ``mujoco.Renderer`` (one GL context) renders every camera in turn. ``fast`` turns
    off multisampling (``vis.quality.offsamples = 0``, set on the model before the context
    is created), shadows and reflections (scene flags), which dominate the cost at 128².
    """

    def __init__(self, model: mujoco.MjModel, size: int, cameras: dict[str, str], fast: bool = True):
        for role, name in cameras.items():
            if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name) < 0:
                known = [model.camera(i).name for i in range(model.ncam)]
                raise ValueError(f"camera {name!r} (role {role!r}) is not in the model; cameras: {known}")
        if fast:
            model.vis.quality.offsamples = 0
        self.cameras = dict(cameras)
        self.upside_down = {role: _is_upside_down(model, name) for role, name in cameras.items()}
        self.size = size
        self._renderer = None
        try:
            self._renderer = mujoco.Renderer(model, height=size, width=size)
        except mujoco.FatalError as err:
            hint = (
                "mujoco was imported before MUJOCO_GL was set; import policy.envs first or export MUJOCO_GL=egl"
                if MUJOCO_IMPORTED_FIRST
                else f"MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}: install libegl1 libgl1-mesa-dri (egl) or libosmesa6"
            )
            raise RuntimeError(f"cannot create an offscreen OpenGL context ({err}); {hint}") from None
        _LIVE_RENDERERS.add(self)
        global _ATEXIT_REGISTERED
        if not _ATEXIT_REGISTERED:
            atexit.register(_close_live_renderers)
            _ATEXIT_REGISTERED = True
        if fast:
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def render(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        """Role -> image [H, W, 3] uint8, upright."""
        out: dict[str, np.ndarray] = {}
        for role, name in self.cameras.items():
            self._renderer.update_scene(data, camera=name)
            img_HW3 = self._renderer.render()
            if self.upside_down[role]:
                img_HW3 = img_HW3[::-1, ::-1]  # rotate 180°
            out[role] = np.ascontiguousarray(img_HW3)
        return out

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __del__(self) -> None:
        # An unclosed EGL context raises noisy errors at interpreter exit.
        with contextlib.suppress(Exception):
            self.close()


@dataclass(frozen=True)
class SimObservation:
    state: np.ndarray  # [4] float32: hand xyz, gripper opening
    images: dict[str, np.ndarray] = field(default_factory=dict)  # role -> [H, W, 3] uint8
    full_obs: np.ndarray | None = None  # [39] float64, goal included: for scripted experts only


class MetaWorldSim:
    """One task's simulator + renderer, reusable across seeds (``reset(seed)``).

    ``step`` clips the action to the env's action space and returns the clipped action, so
    what is recorded is what was executed.
    """

    def __init__(self, cfg: MetaWorldConfig, seed: int = 0, render: bool = True):
        self.cfg = cfg
        self.env = make_env(cfg.task, seed)
        self.env.max_path_length = cfg.max_steps
        self.fps = control_hz(self.env)
        self.instruction = TASK_INSTRUCTIONS[cfg.task]
        self._low = self.env.action_space.low.astype(np.float32)
        self._high = self.env.action_space.high.astype(np.float32)
        self.renderer = (
            FastRenderer(self.env.model, cfg.image_size, cfg.cameras, fast=cfg.fast_render)
            if render
            else None
        )
        self.steps = 0

    def _observe(self, obs39: np.ndarray) -> SimObservation:
        images = self.renderer.render(self.env.data) if self.renderer is not None else {}
        return SimObservation(state=obs39[:STATE_DIM].astype(np.float32), images=images, full_obs=obs39)

    def reset(self, seed: int) -> SimObservation:
        """Fresh goal for ``seed``; the MuJoCo state is reset too, so history does not leak."""
        mujoco.mj_resetData(self.env.model, self.env.data)
        self.env.seed(int(seed))
        obs39, _ = self.env.reset()
        self.steps = 0
        return self._observe(obs39)

    def step(self, action: np.ndarray) -> tuple[SimObservation, np.ndarray, bool, bool]:
        """Apply ``action[4]``; returns (observation, clipped action, success, done)."""
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(4), self._low, self._high)
        obs39, _reward, terminated, truncated, info = self.env.step(a)
        self.steps += 1
        success = bool(info.get("success", 0.0))
        done = bool(terminated or truncated or self.steps >= self.cfg.max_steps)
        return self._observe(obs39), a, success, done

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
        self.env.close()


def sim_dataset_id(cfg: MetaWorldConfig) -> str:
    """The identity of the episodes recorded under ``cfg``: its settings (but the task, which the
    episode id names) with the Meta-World and MuJoCo versions. Same identity, task and seed give
    the same episode (module docstring), so its id is ``episode_id_for(this, task, seed)``."""
    settings = {k: v for k, v in asdict(cfg).items() if k != "task"}
    settings["versions"] = {name: _version(name) for name in ("metaworld", "mujoco")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"{SOURCE}-{digest[:32]}"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def rollout_expert(
    task: str, seed: int, cfg: MetaWorldConfig | None = None, sim: MetaWorldSim | None = None
) -> Episode | None:
    """One scripted-expert demonstration of ``task`` with the goal drawn from ``seed``.

    Frame t holds the observation before action t. Recording stops ``steps_after_success``
    steps after the first success (the episode then has the success frame and a short
    rest), or gives ``None`` when the expert has not succeeded within ``max_steps``.
    ``task`` wins over ``cfg.task``; pass ``sim`` (built for the same task) to reuse one
    simulator and GL context across seeds.
    """
    cfg = replace(cfg or MetaWorldConfig(task=_check_task(task)), task=_check_task(task))
    own_sim = sim is None
    if sim is None:
        sim = MetaWorldSim(cfg, seed)
    elif sim.cfg != cfg:
        raise ValueError(f"sim was built for {sim.cfg}, not {cfg}")
    spec = get_embodiment(EMBODIMENT)
    if abs(sim.fps - spec.control_hz) > 1e-6:
        raise RuntimeError(f"Meta-World steps at {sim.fps} Hz but {EMBODIMENT} declares {spec.control_hz} Hz")
    policy = expert_policy(task)
    try:
        obs = sim.reset(seed)
        states, actions = [], []
        frames: dict[str, list[np.ndarray]] = {role: [] for role in cfg.cameras}
        success_at: int | None = None
        with warnings.catch_warnings():  # the experts warn that their gains exceed [-1, 1]
            warnings.simplefilter("ignore", UserWarning)
            while True:
                states.append(obs.state)
                for role, img in obs.images.items():
                    frames[role].append(img)
                raw = policy.get_action(obs.full_obs)
                obs, a, success, done = sim.step(raw)
                actions.append(a)
                t = len(actions)
                if success and success_at is None:
                    success_at = t
                if success_at is not None and t >= success_at + cfg.steps_after_success:
                    break
                if done:
                    break
    finally:
        if own_sim:
            sim.close()
    if success_at is None:
        return None
    n = len(actions)
    episode = Episode(
        episode_id=episode_id_for(sim_dataset_id(cfg), task, seed),
        source=SOURCE,
        embodiment=EMBODIMENT,
        instruction=TASK_INSTRUCTIONS[task],
        fps=sim.fps,
        state=np.stack(states).astype(np.float32),  # [T, 4]
        action=np.stack(actions).astype(np.float32),  # [T, 4]
        timestamps=np.arange(n, dtype=np.float64) / sim.fps,  # [T]
        cameras={
            role: FrameRef(kind="inline", array=np.stack(imgs), fps=sim.fps)  # [T, H, W, 3]
            for role, imgs in frames.items()
        },
        source_path=task,
        source_index=int(seed),
    )
    return episode.validate()
