"""``gwp serve``'s engine: a websocket policy server that speaks openpi's protocol.

Design:

* **Protocol** (:mod:`policy.wire`): metadata on connect, then one reply per binary msgpack
  request; a text frame is an error for that request. ``GET /healthz`` on the same port answers
  ``200 OK`` over plain HTTP (openpi's health check), so a load balancer or a robot's start-up
  script can poll it without speaking websocket.
* **One inference at a time, off the event loop.** Sampling is blocking torch work. It runs in
  a single worker thread (:class:`concurrent.futures.ThreadPoolExecutor` of one, and a lock for
  callers outside the server), so several clients are answered in turn while the event loop
  keeps reading, answering pings and health checks.
* **Errors stay with their client.** A request that is not msgpack, an unknown key, a bad
  observation (:class:`policy.api.ObservationError`) gets a one-paragraph text frame back and the
  connection stays open; an unexpected failure of the model sends its traceback and closes that
  connection with 1011 (as openpi does). Other clients are not affected either way.
* **Graceful shutdown**: SIGINT / SIGTERM stop accepting, close every connection with 1001
  (going away) after the request in flight is answered, and return from :meth:`serve`.

:func:`respond` is the request → reply step without the network, used by the server and by the
overhead benchmark (in-process time vs round trip).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http
import logging
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from policy.wire import WireError, packb, to_observation, unpackb

log = logging.getLogger("gwp.serve")


def policy_metadata(policy: Any, name: str) -> dict[str, Any]:
    """What a client learns on connect: the embodiments' keys and shapes, the chunk, the options."""
    cfg = policy.model.cfg
    return {
        "server": "gwp",
        "protocol": "openpi-websocket-msgpack",
        "policy": name,
        "chunk": cfg.model.chunk,
        "num_future": cfg.model.num_future,
        "image": {"width": cfg.image.width, "height": cfg.image.height, "fit": cfg.image.fit},
        "embodiments": [
            {
                "name": s.name,
                "cameras": list(s.cameras),
                "state_dim": s.state_dim,
                "action_dim": s.action_dim,
                "observation_keys": [f"observation/{r}" for r in s.cameras] + ["observation/state", "prompt"],
            }
            for s in cfg.embodiments
        ],
        "options": [
            "with_video",
            "seed",
            "prev_actions",
            "inference_delay",
            "rtc_schedule",
            "max_guidance_weight",
        ],
    }


def respond(policy: Any, msg: Any) -> dict[str, Any]:
    """One decoded request -> its reply (raises WireError / ObservationError for bad input)."""
    obs, opt = to_observation(msg)
    seed = opt.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise WireError(f"'seed' must be an integer, got {seed!r}")
    seed = None if seed is None else int(seed)
    with_video = opt.get("with_video", False)
    if not isinstance(with_video, bool | np.bool_):
        raise WireError(f"'with_video' must be true or false, got {with_video!r}")
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if "prev_actions" in opt and with_video:
        raise WireError("'with_video' and 'prev_actions' cannot be combined (RTC samples actions only)")
    if "prev_actions" in opt:
        delay = opt.get("inference_delay", 0)
        if isinstance(delay, bool) or not isinstance(delay, int | np.integer):
            raise WireError(f"'inference_delay' must be an integer, got {delay!r}")
        actions = policy.predict_action_guided(
            obs,
            np.asarray(opt["prev_actions"]),
            int(delay),
            schedule=str(opt.get("rtc_schedule", "exp")),
            max_guidance_weight=float(opt.get("max_guidance_weight", 5.0)),
            seed=seed,
        )
    elif with_video:
        pred = policy.predict(obs, with_video=True, seed=seed)
        actions, out["frames"] = pred.actions_PDa, pred.frames_KHW3
    else:
        actions = policy.predict_action(obs, seed=seed)
    out["actions"] = np.asarray(actions, dtype=np.float32)
    out["policy_timing"] = {"infer_ms": (time.perf_counter() - t0) * 1e3}
    return out


class PolicyServer:
    def __init__(self, policy: Any, host: str = "127.0.0.1", port: int = 8000, metadata: dict | None = None):
        from policy.api import ObservationError

        self.policy, self.host, self.port = policy, host, port
        self.metadata = metadata or {}
        self._bad_input = (WireError, ObservationError)
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gwp-infer")
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.bound_port: int | None = None

    def infer(self, msg: Any) -> dict[str, Any]:
        with self._lock:
            return respond(self.policy, msg)

    # ------------------------------------------------------------ network
    @staticmethod
    def _health(connection: Any, request: Any) -> Any:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        return None

    async def _handler(self, ws: Any) -> None:
        import websockets

        peer = ws.remote_address
        log.info("client %s connected", peer)
        loop = asyncio.get_running_loop()
        await ws.send(packb(self.metadata))
        prev_total_ms: float | None = None
        try:
            async for frame in ws:
                t0 = time.perf_counter()
                try:
                    if isinstance(frame, str):
                        raise WireError("requests must be binary msgpack frames, got a text frame")
                    msg = unpackb(frame)
                    t1 = time.perf_counter()
                    reply = await loop.run_in_executor(self._pool, self.infer, msg)
                except self._bad_input as err:
                    log.info("client %s: bad request: %s", peer, err)
                    await ws.send(f"bad observation: {err}")
                    continue
                except Exception:
                    log.exception("client %s: inference failed", peer)
                    await ws.send(traceback.format_exc())
                    await ws.close(code=1011, reason="inference failed; traceback in the previous frame")
                    return
                timing = {"infer_ms": (time.perf_counter() - t1) * 1e3}
                if prev_total_ms is not None:
                    timing["prev_total_ms"] = prev_total_ms
                reply["server_timing"] = timing
                await ws.send(packb(reply))
                prev_total_ms = (time.perf_counter() - t0) * 1e3
        except websockets.ConnectionClosed:
            pass
        log.info("client %s disconnected", peer)

    async def serve(self, ready: Callable[[int], None] | None = None) -> None:
        """Serve until :meth:`stop` (or SIGINT / SIGTERM in the main thread); ``ready(port)`` once bound."""
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._stop.set)
        try:
            async with serve(
                self._handler,
                self.host,
                self.port,
                compression=None,
                max_size=None,
                process_request=self._health,
            ) as server:
                self.bound_port = server.sockets[0].getsockname()[1]
                if ready is not None:
                    ready(self.bound_port)
                await self._stop.wait()
                server.close(close_connections=True)
                await server.wait_closed()
        finally:
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._loop.remove_signal_handler(sig)
            self._pool.shutdown(wait=True)

    def stop(self) -> None:
        """Ask a running :meth:`serve` to shut down (thread-safe)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
