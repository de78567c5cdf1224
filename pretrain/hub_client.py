"""Kept only for ``tests/test_reliability.py``, which is frozen this round and imports it by this name.

The Hub transport is :mod:`schemas.hub.client`; nothing in the project imports this module. Point
that test at ``schemas.hub.client`` and delete this file.
"""

from schemas.hub.client import *  # noqa: F403
from schemas.hub.client import time  # noqa: F401  (the test patches ``time.sleep`` through it)
