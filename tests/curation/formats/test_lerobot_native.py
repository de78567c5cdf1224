"""A dataset written by LeRobot itself reads with no mapping, equal to LeRobot's own reading.

Needs the lerobot venv that ``make check-formats`` builds (scripts/check_lerobot_native.sh,
``.venvs/lerobot-native``, or ``$LEROBOT_NATIVE_VENV``); without it the test skips and says
so. The no-mapping path itself is covered without lerobot by tests/curation/formats/test_mapping_defaults.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
VENV = Path(os.environ.get("LEROBOT_NATIVE_VENV", ROOT / ".venvs" / "lerobot-native"))


@pytest.mark.skipif(
    not (VENV / ".complete").exists(),
    reason=f"no lerobot venv at {VENV}: run `make check-formats` (or scripts/check_lerobot_native.sh) once",
)
def test_lerobot_written_dataset_reads_like_lerobot_reads_it(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GWP_PROJECT_VENV": sys.prefix,  # this interpreter's venv is the project side
        "LEROBOT_NATIVE_VENV": str(VENV),
    }
    work = tmp_path / "native"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check_lerobot_native.sh"), str(work)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "lerobot-native: actions, states and frames equal LeRobot's, with no mapping and with a hand-written one"
        in proc.stdout
    )
    assert "robot_type 'gwp_native_check_arm'" in proc.stdout and "2 episode(s), 21 frames" in proc.stdout
    # the unknown robot's spec was generated into the check's own folder, not the user's
    assert (work / "embodiments" / "gwp_native_check_arm.json").exists()
