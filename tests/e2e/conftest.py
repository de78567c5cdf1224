"""End-to-end tests (the demo, whole jobs through the CLI, crash and fault runs): every test in
this folder is marked ``slow`` here, so that a new one cannot be left out of ``-m slow`` or into
the quick ``-m "not slow"`` loop."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)
