"""A client of ``gwp serve`` (and of any openpi-protocol policy server); imports no torch.

::

    from policy.client import PolicyClient
    with PolicyClient("ws://gpu-box:8000") as client:
        print(client.metadata["embodiments"])
        out = client.infer({"observation/high": img_HW3, "observation/state": state, "prompt": "open the drawer"})
        actions_PDa = out["actions"]                        # robot units

``infer`` has the shape of openpi's ``WebsocketClientPolicy.infer`` (a dict in, a dict out; an
error from the server raises :class:`ServerError` with its message). ``predict_action`` /
``reseed`` / ``predict_action_guided`` make the client a drop-in for a local
:class:`policy.api.Policy` in the closed-loop evaluator: a seed given by ``reseed`` travels with
the next request, so the server draws the same noise a local policy seeded the same way would.
The connection is synchronous (``websockets.sync``): one request in flight per client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from policy.wire import packb, unpackb


class ServerError(RuntimeError):
    """The server answered a request with an error message (a bad observation, a failed inference)."""


def normalise_url(url: str) -> str:
    """``host:port`` or ``ws://host:port`` -> a ws:// URL."""
    return url if url.startswith(("ws://", "wss://")) else f"ws://{url}"


class PolicyClient:
    def __init__(self, url: str, *, open_timeout: float = 30.0, name: str | None = None):
        from websockets.sync.client import connect

        self.url = normalise_url(url)
        self.name = name or self.url
        try:
            self._ws = connect(self.url, compression=None, max_size=None, open_timeout=open_timeout)
        except (OSError, TimeoutError) as err:
            raise ConnectionError(f"cannot reach the policy server at {self.url}: {err}") from None
        self.metadata: dict[str, Any] = unpackb(self._ws.recv())
        self._seed: int | None = None

    # ------------------------------------------------------------ openpi's shape
    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        self._ws.send(packb(dict(obs)))
        reply = self._ws.recv()
        if isinstance(reply, str):
            raise ServerError(f"policy server {self.url}: {reply}")
        return unpackb(reply)

    # ------------------------------------------------------------ a local Policy's shape
    def reseed(self, seed: int) -> None:
        self._seed = int(seed)

    def _request(self, observation: Mapping[str, Any], **options: Any) -> dict[str, Any]:
        msg = dict(observation)
        if self._seed is not None:
            msg["seed"] = self._seed
            self._seed = None
        msg.update(options)
        return msg

    def predict_action(self, observation: Mapping[str, Any], *, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self.reseed(seed)
        return np.asarray(self.infer(self._request(observation))["actions"])

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
        if seed is not None:
            self.reseed(seed)
        msg = self._request(
            observation,
            prev_actions=np.asarray(prev_actions, dtype=np.float32),
            inference_delay=int(delay),
            rtc_schedule=schedule,
            max_guidance_weight=float(max_guidance_weight),
        )
        return np.asarray(self.infer(msg)["actions"])

    @property
    def chunk(self) -> int | None:
        return self.metadata.get("chunk")

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
