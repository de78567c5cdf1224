"""The policy server's wire format: openpi's websocket protocol, and the observation it carries.

Framing (the same bytes as ``openpi_client.msgpack_numpy``, so openpi's client and ours are
interchangeable): every message is one binary websocket frame of msgpack, numpy arrays
encoded as the map ``{b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str,
b"shape": [...]}`` and numpy scalars as ``{b"__npgeneric__": True, b"data": item, b"dtype": str}``.
Object, void and complex arrays are refused (they would need pickle). A text frame from the
server is an error message for that request.

Conversation: on connect the server sends its metadata (a map); then each binary request
(an observation) gets one reply, ``{"actions": float32 [P, Da] robot units,
"server_timing": {"infer_ms", "prev_total_ms"}, "policy_timing": {...}}`` (+ ``"frames"``
uint8 ``[K, H, W, 3]`` when ``with_video`` was asked), or a text frame naming the problem.

Observation keys, either style (not mixed within one message):

* openpi's flat style: ``observation/<camera role>`` (uint8 H×W×3, the policy's own role
  names), ``observation/state`` (robot units), ``prompt`` (the instruction);
* the project's nested style: ``images`` ({role: H×W×3}), ``state``, ``instruction``.

Both may carry ``embodiment`` and the request options in :data:`OPTIONS`: ``with_video``,
``seed`` (fixed sampling noise), and for real-time chunking ``prev_actions`` (the old chunk's
remaining actions ``[q, Da]``), ``inference_delay``, ``rtc_schedule``, ``max_guidance_weight``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

FLAT_PREFIX = "observation/"
NESTED = ("images", "state", "instruction")
OPTIONS = ("with_video", "seed", "prev_actions", "inference_delay", "rtc_schedule", "max_guidance_weight")


class WireError(ValueError):
    """A request that cannot be read as an observation; the message says what is wrong."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind in "VOc":
        raise TypeError(f"cannot send a numpy {obj.dtype} value (only plain numeric/bool/bytes arrays)")
    if isinstance(obj, np.ndarray):
        return {
            b"__ndarray__": True,
            b"data": np.ascontiguousarray(obj).tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__}")


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind in "VOc":
            raise WireError(f"array of dtype {dtype} refused")
        return np.ndarray(buffer=obj[b"data"], dtype=dtype, shape=tuple(obj[b"shape"]))
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_encode)


def unpackb(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, object_hook=_decode, strict_map_key=False)
    except WireError:
        raise
    except Exception as err:  # truncated or foreign bytes: msgpack raises several types
        raise WireError(f"request is not msgpack+numpy: {type(err).__name__}: {err}") from None


def to_observation(msg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(observation in the nested form policy.api.Policy reads, request options)``."""
    if not isinstance(msg, Mapping):
        raise WireError(f"request must be a map of observation keys, got {type(msg).__name__}")
    keys = [k for k in msg if not isinstance(k, str)]
    if keys:
        raise WireError(f"request keys must be strings, got {keys[:3]}")
    flat = [k for k in msg if k.startswith(FLAT_PREFIX) or k == "prompt"]
    nested = [k for k in msg if k in NESTED]
    if flat and nested:
        raise WireError(f"request mixes openpi's flat keys {sorted(flat)} with nested keys {sorted(nested)}")
    known = set(NESTED) | set(OPTIONS) | {"embodiment", "prompt"}
    unknown = sorted(k for k in msg if k not in known and not k.startswith(FLAT_PREFIX))
    if unknown:
        raise WireError(
            f"unknown request key(s) {unknown}; expected observation/<camera>, observation/state, prompt "
            f"(or images, state, instruction), embodiment, and options {list(OPTIONS)}"
        )
    options = {k: msg[k] for k in OPTIONS if k in msg}
    obs: dict[str, Any] = {}
    if "embodiment" in msg:
        obs["embodiment"] = msg["embodiment"]
    if nested or not flat:
        obs.update({k: msg[k] for k in NESTED if k in msg})
        return obs, options
    images = {
        k[len(FLAT_PREFIX) :]: v
        for k, v in msg.items()
        if k.startswith(FLAT_PREFIX) and k != "observation/state"
    }
    obs["images"] = images
    if "observation/state" in msg:
        obs["state"] = msg["observation/state"]
    if "prompt" in msg:
        obs["instruction"] = msg["prompt"]
    return obs, options
