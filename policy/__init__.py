"""The GWP policy: model (``policy.model``), sampling (``policy.inference``), deployable API
(``policy.api.Policy``), evaluation (``policy.evaluate``) and simulation envs (``policy.envs``).

``Policy`` is imported lazily so that ``policy.envs`` / ``policy.evaluate`` stay light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Policy"]


def __getattr__(name: str) -> Any:
    if name == "Policy":
        from policy.api import Policy

        return Policy
    raise AttributeError(f"module 'policy' has no attribute {name!r}")
