"""Meta-World wrapper: seeding, state/action conventions, fast renderer orientation, expert rollouts."""

from __future__ import annotations

import numpy as np
import pytest

from policy.envs import (
    EMBODIMENT,
    TASK_INSTRUCTIONS,
    MetaWorldConfig,
    MetaWorldSim,
    control_hz,
    expert_policy,
    make_env,
    rollout_expert,
)
from policy.envs.metaworld_env import sim_dataset_id
from schemas import episode_id_for, get_embodiment

SIZE = 48


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def push_sim():
    sim = MetaWorldSim(MetaWorldConfig(task="push-v3", image_size=SIZE))
    yield sim
    sim.close()


@pytest.fixture(scope="module")
def drawer_episode():
    return rollout_expert("drawer-open-v3", 7, MetaWorldConfig(image_size=SIZE, steps_after_success=3))


def test_instructions_cover_every_v3_task():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    from metaworld.policies import ENV_POLICY_MAP

    assert set(TASK_INSTRUCTIONS) == set(ALL_V3_ENVIRONMENTS) == set(ENV_POLICY_MAP)
    assert all(text and text == text.strip() for text in TASK_INSTRUCTIONS.values())


def test_unknown_task_and_bad_config_are_explained():
    with pytest.raises(ValueError, match="did you mean 'drawer-open-v3'"):
        MetaWorldConfig(task="drawer-opn-v3")
    with pytest.raises(ValueError, match="did you mean"):
        expert_policy("push-v2")
    with pytest.raises(ValueError, match="image_size"):
        MetaWorldConfig(image_size=4)
    with pytest.raises(ValueError, match="not in the model"):
        MetaWorldSim(MetaWorldConfig(task="push-v3", image_size=SIZE, high_camera="nope"))


def test_fresh_goal_per_seed_and_same_goal_for_same_seed():
    goals = []
    for seed in (0, 1, 0):
        env = make_env("push-v3", seed)
        obs, _ = env.reset()
        assert obs.shape == (39,)
        goals.append(obs[36:39].copy())
        env.close()
    assert np.array_equal(goals[0], goals[2])
    assert not np.allclose(goals[0], goals[1])


def test_control_rate_matches_embodiment():
    env = make_env("reach-v3", 0)
    assert control_hz(env) == pytest.approx(80.0)
    assert get_embodiment(EMBODIMENT).control_hz == pytest.approx(control_hz(env))
    env.close()


def test_state_is_proprioceptive_and_actions_are_clipped(push_sim):
    obs = push_sim.reset(3)
    assert obs.state.shape == (4,) and obs.state.dtype == np.float32
    assert np.array_equal(obs.state, obs.full_obs[:4].astype(np.float32))
    assert 0.0 <= obs.state[3] <= 1.0  # gripper opening
    nxt, applied, success, done = push_sim.step(np.array([5.0, -3.0, 0.25, 2.8]))
    assert applied.dtype == np.float32
    np.testing.assert_array_equal(applied, np.array([1.0, -1.0, 0.25, 1.0], np.float32))
    assert nxt.state[0] > obs.state[0] and nxt.state[1] < obs.state[1]  # the hand moved +x, -y
    assert not success and not done


def test_images_have_the_right_size_and_are_not_blank(push_sim):
    obs = push_sim.reset(0)
    assert set(obs.images) == {"high", "wrist"}
    for img in obs.images.values():
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        assert img.std() > 10  # a scene, not a flat colour
    assert _corr(obs.images["high"], obs.images["wrist"]) < 0.9


def test_corner_camera_comes_out_upright_not_mirrored(push_sim):
    """MuJoCo's free camera has no roll (its up is world +z): rendered at the corner camera's
    pose it is the upright view. Ours must equal it, and not its flips."""
    import mujoco  # after policy.envs, which picks the headless GL backend

    obs = push_sim.reset(2)
    model, data = push_sim.env.model, push_sim.env.data
    cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "corner")
    fwd = -data.cam_xmat[cam_id].reshape(3, 3)[:, 2]  # cameras look along their -z
    free = mujoco.MjvCamera()
    free.type = mujoco.mjtCamera.mjCAMERA_FREE
    free.distance = 1.0
    free.lookat[:] = data.cam_xpos[cam_id] + fwd
    free.azimuth = float(np.degrees(np.arctan2(fwd[1], fwd[0])))
    free.elevation = float(np.degrees(np.arcsin(fwd[2])))
    r = mujoco.Renderer(model, SIZE, SIZE)
    try:
        r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        r.update_scene(data, camera=free)
        upright = r.render().copy()
    finally:
        r.close()
    high = obs.images["high"]
    assert _corr(high, upright) > 0.95
    for flipped in (high[::-1], high[:, ::-1], high[::-1, ::-1]):
        assert _corr(flipped, upright) < 0.5


def test_expert_episode_is_valid_and_short(drawer_episode):
    ep = drawer_episode
    assert ep is not None
    ep.validate()
    t = ep.length
    assert 20 < t < 200
    assert ep.embodiment == EMBODIMENT and ep.source == "metaworld_sim" and ep.fps == 80.0
    assert ep.instruction == "open the drawer"
    cfg = MetaWorldConfig(image_size=SIZE, steps_after_success=3)
    assert ep.episode_id == episode_id_for(sim_dataset_id(cfg), "drawer-open-v3", 7)
    # another recording setting is another dataset: the same task and seed get another id
    assert sim_dataset_id(cfg) != sim_dataset_id(MetaWorldConfig(image_size=SIZE + 16, steps_after_success=3))
    assert ep.state.shape == (t, 4) and ep.action.shape == (t, 4)
    assert np.abs(ep.action).max() <= 1.0 and np.abs(ep.action).max() == 1.0  # the expert saturates
    np.testing.assert_allclose(np.diff(ep.timestamps), 1 / 80.0)
    for role in ("high", "wrist"):
        assert ep.cameras[role].kind == "inline"
        assert ep.cameras[role].array.shape == (t, SIZE, SIZE, 3)
    high = ep.cameras["high"].array
    assert np.abs(high[-1].astype(int) - high[0].astype(int)).mean() > 1  # the drawer moved


def test_same_task_and_seed_is_bit_identical_even_on_a_reused_sim(drawer_episode):
    cfg = MetaWorldConfig(image_size=SIZE, steps_after_success=3)
    sim = MetaWorldSim(cfg)
    try:
        other = rollout_expert("drawer-open-v3", 8, cfg, sim=sim)  # some history first
        again = rollout_expert("drawer-open-v3", 7, cfg, sim=sim)
    finally:
        sim.close()
    assert again == drawer_episode  # states, actions, frames: every byte
    assert other is not None and other.episode_id != again.episode_id
    assert not np.array_equal(other.state[:20], again.state[:20]) or other.length != again.length


def test_expert_that_does_not_finish_gives_none():
    assert rollout_expert("door-open-v3", 0, MetaWorldConfig(image_size=16, max_steps=5)) is None
