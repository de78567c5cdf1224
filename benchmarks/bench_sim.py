"""Meta-World env steps per second with two cameras: fast renderer vs ``env.render()``, one run.

    python benchmarks/bench_sim.py [--task push-v3] [--size 128] [--steps 300] [--cores 1]

Three loops on the same task, seed and expert actions, interleaved in rounds so that a noisy
shared machine slows all of them alike (the ratio is the figure that transfers):

* physics only — ``env.step`` without images (the ceiling);
* fast — :class:`policy.envs.MetaWorldSim`: one ``mujoco.Renderer``, no multisampling,
  shadows or reflections, ``high`` (corner) + ``wrist`` (gripperPOV) images per step;
* ``env.render()`` — gymnasium's viewer (``render_mode="rgb_array"``) switching its camera
  between the same two cameras each step.

``--cores 1`` pins the process to one CPU and sets ``LP_NUM_THREADS=1`` (Mesa llvmpipe) before
any GL library loads. Prints a Markdown table (header + one row) for BENCHMARKS.md.

Caveat found here: gymnasium's ``OffScreenViewer.render`` does not make its GL context
current, so mixing ``env.render()`` with any other MuJoCo renderer in one process silently
renders into the wrong context; the baseline loop makes its context current first.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from collections.abc import Callable


def _pin(cores: int) -> str:
    if cores > 0 and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[:cores]
        os.sched_setaffinity(0, cpus)
        os.environ["LP_NUM_THREADS"] = str(cores)  # Mesa's software rasteriser threads
        return f"{cores} core(s) {cpus}"
    return f"{os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="push-v3")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=150, help="timed steps per loop (split into rounds)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cores", type=int, default=1, help="0 = do not pin")
    args = p.parse_args(argv)
    cores = _pin(args.cores)

    import numpy as np

    from policy.envs import MetaWorldConfig, MetaWorldSim, expert_policy, make_env

    warnings.simplefilter("ignore", UserWarning)  # expert gains > 1, glfw without display
    cfg = MetaWorldConfig(task=args.task, image_size=args.size)
    policy = expert_policy(args.task)
    fast = MetaWorldSim(cfg)
    physics = MetaWorldSim(cfg, render=False)
    slow = make_env(
        args.task, 0, render_mode="rgb_array", width=args.size, height=args.size, camera_name="corner"
    )
    cam_ids = [slow.model.camera(name).id for name in cfg.cameras.values()]

    def stepper(sim: MetaWorldSim) -> Callable[[int, int], None]:
        """``n`` expert steps in ``sim`` from ``seed``, resetting at the end of an episode."""

        def run(n: int, seed: int) -> None:
            obs = sim.reset(seed)
            for _ in range(n):
                obs, _, _, done = sim.step(policy.get_action(obs.full_obs))
                if done:
                    obs = sim.reset(seed)

        return run

    run_fast, run_physics = stepper(fast), stepper(physics)

    def run_env_render(n: int, seed: int) -> None:
        # gymnasium's viewer never makes its own GL context current; after the fast loop the
        # fast renderer's context is current and env.render() would draw into it (wrong images).
        slow.mujoco_renderer._get_viewer("rgb_array").make_context_current()
        slow.seed(seed)
        obs, _ = slow.reset()
        for _ in range(n):
            obs, _, _, truncated, _ = slow.step(np.clip(policy.get_action(obs), -1, 1))
            for cam in cam_ids:  # two images per step, as the fast loop renders
                slow.mujoco_renderer.camera_id = cam
                slow.render()
            if truncated:
                slow.seed(seed)
                obs, _ = slow.reset()

    loops = {"physics": run_physics, "fast": run_fast, "env.render()": run_env_render}
    for fn in loops.values():  # warm-up: GL contexts, caches
        fn(5, 0)
    seconds = dict.fromkeys(loops, 0.0)
    per_round = max(1, args.steps // args.rounds)
    for r in range(args.rounds):
        for name, fn in loops.items():
            t0 = time.perf_counter()
            fn(per_round, r)
            seconds[name] += time.perf_counter() - t0
    n = per_round * args.rounds
    sps = {name: n / s for name, s in seconds.items()}
    fast.close()
    physics.close()
    slow.close()

    cpu = platform.processor() or platform.machine()
    print(
        f"# {args.task}, 2 cameras × {args.size}², {n} steps per loop, {cores}, MUJOCO_GL={os.environ['MUJOCO_GL']}"
    )
    print(
        "| task | images | cores | physics only (steps/s) | fast renderer (steps/s, ms/step) "
        "| env.render() (steps/s, ms/step) | speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.task} | 2 × {args.size}² | {args.cores or os.cpu_count()} ({cpu}) | {sps['physics']:.0f} "
        f"| {sps['fast']:.0f} ({1000 / sps['fast']:.1f}) "
        f"| {sps['env.render()']:.0f} ({1000 / sps['env.render()']:.1f}) "
        f"| {sps['fast'] / sps['env.render()']:.1f}x |"
    )


if __name__ == "__main__":
    main()
