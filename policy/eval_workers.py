"""Env side of closed-loop evaluation: the episode runner and the pool of env workers.

Design:

* **One runner per worker.** :class:`_EnvRunner` owns one simulator per task and answers two
  messages for one episode at a time: ``reset`` (an :class:`EpisodeJob`) and ``act`` (a chunk
  ``[k, 4]``, ``k <= replan_every``, run open loop). It replies with the next observation, or
  with the episode's end (success, length, final state, video path, contact-sheet frames).
* **Processes.** :class:`EnvWorkers` holds ``W`` workers. ``W = 1`` runs the runner inline in
  the main process (no IPC) through the same interface; ``W > 1`` spawns processes, each with
  its own GL context (EGL/OSMesa contexts do not survive ``fork``), talking over a pipe. The
  policy stays in the main process (:mod:`policy.evaluate`), which waits on whichever workers
  have replied (:meth:`EnvWorkers.ready`). Spawned workers re-import the caller's
  ``__main__``: scripts need the ``if __name__ == "__main__"`` guard (the CLI keeps its
  top-level imports light for the same reason).
* **Rendering only what is looked at.** On CPU, rendering two cameras costs many times the
  physics step; inside an open-loop chunk only the observation of the next query is rendered
  (every frame of a recorded episode is), and none at all when the job says the policy needs
  no images (the scripted baselines).
* **Recording.** A recorded episode keeps every frame (camera roles side by side,
  ``[H, R·W, 3]``) in its worker, which writes the mp4 (``schemas.video.encode_video_bytes``) and
  sends back ``sheet_frames`` evenly spaced frames for the contact sheet.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_connections
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from policy.envs import MetaWorldConfig, MetaWorldSim
from policy.envs.metaworld_env import ROLES

if TYPE_CHECKING:
    from policy.evaluate import EvalConfig


@dataclass(frozen=True)
class EpisodeJob:
    task: str
    index: int
    env_seed: int
    record: bool  # keep frames: contact-sheet row, and an mp4 when video_path is set
    video_path: str | None
    privileged: bool  # send the full simulator observation (scripted baselines only)
    images: bool = True  # render observations for the policy (False: policy.needs_images is False)


class _EnvRunner:
    """One simulator per task; answers ``reset`` / ``act`` messages for one episode at a time."""

    def __init__(
        self, tasks: tuple[str, ...], image_size: int, max_steps: int, codec: str, sheet_frames: int
    ):
        self.codec, self.sheet_frames = codec, sheet_frames
        self.sims = {
            task: MetaWorldSim(
                MetaWorldConfig(task=task, image_size=image_size, max_steps=max_steps, steps_after_success=0)
            )
            for task in tasks
        }
        self.job: EpisodeJob | None = None
        self.frames: list[np.ndarray] = []

    def _payload(self, obs: Any) -> dict[str, Any]:
        images = obs.images if self.job.images else {}
        out = {"images": images, "state": obs.state, "steps": self.sims[self.job.task].steps}
        if self.job.privileged:
            out["full_obs"] = obs.full_obs
        return out

    def _record(self, obs: Any) -> None:
        if self.job.record:
            self.frames.append(np.concatenate([obs.images[r] for r in ROLES], axis=1))  # [H, R·W, 3]

    def handle(self, kind: str, arg: Any) -> tuple[str, Any]:
        if kind == "reset":
            self.job, self.frames = arg, []
            sim = self.sims[self.job.task]
            renderer = sim.renderer
            sim.renderer = renderer if self.job.record or self.job.images else None
            try:
                obs = sim.reset(self.job.env_seed)
            finally:
                sim.renderer = renderer
            self._record(obs)
            return "obs", self._payload(obs)
        if kind == "act":
            sim = self.sims[self.job.task]
            success = done = False
            renderer = sim.renderer
            try:
                for j, action in enumerate(arg):  # [k, 4], k <= replan_every
                    # render only what is looked at: every frame of a recorded episode, else the
                    # observation of the next query (the sim skips rendering without a renderer)
                    last = j == len(arg) - 1
                    sim.renderer = renderer if self.job.record or (last and self.job.images) else None
                    obs, _, success, done = sim.step(action)
                    self._record(obs)
                    if success or done:
                        break
            finally:
                sim.renderer = renderer
            if not (success or done):
                return "obs", self._payload(obs)
            return "end", self._finish(success, sim.steps, obs.state)
        raise ValueError(f"unknown message {kind!r}")

    def _finish(self, success: bool, length: int, state: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {
            "success": success,
            "length": length,
            "final_state": tuple(float(x) for x in state),
            "video": None,
            "sheet": None,
        }
        if self.job.record and self.frames:
            frames_THWC = np.stack(self.frames)
            if self.job.video_path is not None:
                from schemas.video import encode_video_bytes

                video = encode_video_bytes(frames_THWC, fps=self.sims[self.job.task].fps, codec=self.codec)
                part = Path(self.job.video_path).with_name(Path(self.job.video_path).name + ".part")
                part.parent.mkdir(parents=True, exist_ok=True)
                part.write_bytes(video)
                part.replace(self.job.video_path)  # readers never see a half-written video
                out["video"] = self.job.video_path
            steps = np.unique(np.linspace(0, len(frames_THWC) - 1, self.sheet_frames).round().astype(int))
            out["sheet"] = (tuple(int(s) for s in steps), frames_THWC[steps])
        self.frames = []
        return out

    def close(self) -> None:
        for sim in self.sims.values():
            sim.close()
        self.sims = {}


def _worker_main(conn: Any, settings: dict[str, Any]) -> None:
    try:
        runner = _EnvRunner(**settings)
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", None))
    try:
        while True:
            kind, arg = conn.recv()
            if kind == "close":
                break
            try:
                reply = runner.handle(kind, arg)
            except Exception:
                reply = ("error", traceback.format_exc())
            conn.send(reply)
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        runner.close()


class _InlineWorker:
    def __init__(self, index: int, settings: dict[str, Any]):
        self.index = index
        self.runner = _EnvRunner(**settings)
        self._reply: tuple[str, Any] | None = None

    def send(self, msg: tuple[str, Any]) -> None:
        try:
            self._reply = self.runner.handle(*msg)
        except Exception:
            self._reply = ("error", traceback.format_exc())

    def recv(self) -> tuple[str, Any]:
        reply, self._reply = self._reply, None
        return reply

    def discard_reply(self) -> bool:
        self._reply = None
        return True

    def close(self) -> None:
        self.runner.close()


class _ProcessWorker:
    def __init__(self, index: int, settings: dict[str, Any], ctx: Any):
        self.index = index
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main, args=(child, settings), daemon=True, name=f"gwp-eval-{index}"
        )
        self.proc.start()
        child.close()
        self.pending = False  # a message was sent whose reply has not been read

    def send(self, msg: tuple[str, Any]) -> None:
        self.conn.send(msg)
        self.pending = True

    def discard_reply(self, timeout_s: float = 60.0) -> bool:
        """Read and drop an outstanding reply; False when none came in time."""
        if self.pending and self.conn.poll(timeout_s):
            self.recv()
        return not self.pending

    def recv(self) -> tuple[str, Any]:
        self.pending = False
        try:
            return self.conn.recv()
        except (EOFError, ConnectionResetError):
            self.proc.join(timeout=5)
            raise RuntimeError(
                f"evaluation worker {self.index} died (exit code {self.proc.exitcode})"
            ) from None

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send(("close", None))
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)
        self.conn.close()


class EnvWorkers:
    """``n`` env workers with one simulator per task each; reusable across policies.

    ``n == 1`` steps the env inline; ``n > 1`` uses ``n`` spawned processes (each with its
    own GL context, as EGL/OSMesa contexts do not survive ``fork``). The constructor returns
    once every worker has built its simulators.
    """

    def __init__(
        self,
        n: int,
        tasks: tuple[str, ...],
        image_size: int,
        max_steps: int,
        codec: str = "h264",
        sheet_frames: int = 6,
        start_method: str = "spawn",
    ):
        if n < 1:
            raise ValueError(f"need at least one worker, got {n}")
        self.settings = {
            "tasks": tuple(tasks),
            "image_size": image_size,
            "max_steps": max_steps,
            "codec": codec,
            "sheet_frames": sheet_frames,
        }
        t0 = time.perf_counter()
        self.workers: list[Any] = []
        try:
            if n == 1:
                self.workers = [_InlineWorker(0, self.settings)]
            else:
                ctx = mp.get_context(start_method)
                self.workers = [_ProcessWorker(i, self.settings, ctx) for i in range(n)]
                for w in self.workers:
                    kind, payload = w.recv()
                    if kind != "ready":
                        raise RuntimeError(f"evaluation worker {w.index} failed to start:\n{payload}")
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - t0

    @classmethod
    def for_config(cls, cfg: EvalConfig) -> EnvWorkers:
        return cls(cfg.workers, cfg.tasks, cfg.image_size, cfg.max_steps, cfg.video_codec, cfg.sheet_frames)

    def matches(self, cfg: EvalConfig) -> bool:
        return (
            set(cfg.tasks) <= set(self.settings["tasks"])
            and cfg.image_size == self.settings["image_size"]
            and cfg.max_steps == self.settings["max_steps"]
            and cfg.video_codec == self.settings["codec"]
            and cfg.sheet_frames == self.settings["sheet_frames"]
        )

    def drain(self) -> None:
        """After an aborted evaluation: drop replies still in flight, so the pool can be reused.

        A worker that does not answer in time makes the pool unusable; it is closed.
        """
        if not all(w.discard_reply() for w in self.workers):
            self.close()

    def ready(self, busy: list[Any]) -> list[Any]:
        """The busy workers whose reply has arrived (blocks until at least one)."""
        if isinstance(busy[0], _InlineWorker):
            return [w for w in busy if w._reply is not None]
        by_conn = {w.conn: w for w in busy}
        return [by_conn[c] for c in wait_connections(list(by_conn))]

    def close(self) -> None:
        for w in self.workers:
            w.close()
        self.workers = []

    def __enter__(self) -> EnvWorkers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
