"""Reference policies for closed-loop evaluation, behind the same protocol as the GWP policy.

Protocol (what :mod:`policy.evaluate` calls): ``predict_action(observation) -> action[p, Da]``
in robot units, where ``observation = {"images": {role: [H, W, 3] uint8}, "state": [Ds],
"instruction": str, "embodiment": str}``. Optional hooks the evaluator uses when present:

* ``reseed(seed)`` — called before every query with a seed derived from (episode, step), so
  a stochastic policy gives the same chunk whatever the worker count or query order;
* ``predict_action_batch(observations, seeds) -> [B, p, Da]`` — one call for every env
  waiting for a chunk (``seeds[i]`` plays the role of ``reseed`` for row ``i``);
* ``needs_privileged_obs = True`` — the observation then also carries
  ``"privileged": {"task": str, "full_obs": [39]}``, the simulator's full state with the goal.
  Only scripted baselines may ask for it; a learnt policy sees what a robot would;
* ``needs_images = False`` — observations come without images (``{}``), which saves the
  rendering (the dominant cost of a CPU rollout) for policies that do not look.

Baselines:

* :class:`ExpertPolicy` — Meta-World's scripted expert (``metaworld.policies``), clipped to
  the action space. It is closed-loop by nature, so its natural chunk is one step; a longer
  ``chunk_size`` holds the action (useful to see what open-loop execution costs an expert).
* :class:`RandomPolicy` — uniform random actions in the action space (the floor: 0 % on
  every Meta-World task we measured).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

ACTION_DIM = 4  # Meta-World Sawyer: dx, dy, dz (end effector), gripper effort
ACTION_LOW, ACTION_HIGH = -1.0, 1.0  # the env's action space


class ExpertPolicy:
    """Meta-World's scripted expert for whichever task the observation is from."""

    name = "expert"
    needs_privileged_obs = True
    needs_images = False

    def __init__(self, chunk_size: int = 1):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self._experts: dict[str, Any] = {}  # task -> metaworld.policies.Policy (stateless)
        import metaworld.policies  # noqa: F401  (imported here, not inside the first timed query)

    def predict_action(self, observation: dict[str, Any]) -> np.ndarray:
        """Action chunk [chunk_size, 4]: the expert's action for the current state, held."""
        privileged = observation.get("privileged")
        if not privileged or "task" not in privileged or "full_obs" not in privileged:
            raise ValueError(
                "ExpertPolicy needs observation['privileged'] = {'task', 'full_obs'} (the simulator state "
                "with the goal); the evaluator adds it for policies with needs_privileged_obs = True"
            )
        task = privileged["task"]
        expert = self._experts.get(task)
        if expert is None:
            from policy.envs import expert_policy

            expert = self._experts[task] = expert_policy(task)
        with warnings.catch_warnings():  # the experts warn that their gains exceed [-1, 1]
            warnings.simplefilter("ignore", UserWarning)
            action_4 = np.asarray(expert.get_action(np.asarray(privileged["full_obs"])), dtype=np.float32)
        action_4 = np.clip(action_4, ACTION_LOW, ACTION_HIGH)
        return np.repeat(action_4[None], self.chunk_size, axis=0)  # [p, 4]


class RandomPolicy:
    """Uniform random actions in [low, high]^action_dim, ``chunk_size`` per query."""

    name = "random"
    needs_images = False

    def __init__(
        self,
        chunk_size: int = 8,
        action_dim: int = ACTION_DIM,
        low: float = ACTION_LOW,
        high: float = ACTION_HIGH,
        seed: int = 0,
    ):
        if chunk_size < 1 or action_dim < 1:
            raise ValueError(f"chunk_size and action_dim must be >= 1, got {chunk_size}, {action_dim}")
        if not low < high:
            raise ValueError(f"need low < high, got [{low}, {high}]")
        self.chunk_size, self.action_dim, self.low, self.high = chunk_size, action_dim, low, high
        self._rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(self.low, self.high, size=(self.chunk_size, self.action_dim)).astype(np.float32)

    def predict_action(self, observation: dict[str, Any]) -> np.ndarray:
        """Action chunk [chunk_size, action_dim]; ignores the observation."""
        return self._draw(self._rng)

    def predict_action_batch(self, observations: list[dict[str, Any]], seeds: list[int]) -> np.ndarray:
        """[B, chunk_size, action_dim]; row i depends only on ``seeds[i]``."""
        if len(seeds) != len(observations):
            raise ValueError(f"{len(observations)} observations but {len(seeds)} seeds")
        return np.stack([self._draw(np.random.default_rng(s)) for s in seeds])
